//! Helpers for the POP3 and SMTP gateway tests: postern in-process with a fresh
//! store, the demo's upstream servers recording what they receive, and a line
//! client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use postern::app::{Bound, Runtime};
use postern::config::Config;
use postern::credentials::{InstanceKey, issue_app_password};
use postern::demo::Mailboxes;
use postern::demo::record::Record;
use postern::demo::server::{MailServer, Options, Service};
use postern::policy::{DomainStatus, Protocol, Scopes};
use postern::store::{FactorKind, Store};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub const ALICE: &str = "alice@example.test";
pub const ALICE_PRIMARY: &str = "alice-primary";
pub const TOTP_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
/// The one message in ALICE's upstream INBOX.
pub const MESSAGE: &[u8] = b"From: a@example.test\r\nSubject: hi\r\n\r\nbody line\r\n";
const WAIT: Duration = Duration::from_secs(20);

/// postern running in this process.
pub struct Postern {
    pub _dir: tempfile::TempDir,
    pub runtime: Runtime,
    pub bound: Vec<Bound>,
    pub key: InstanceKey,
}

impl Postern {
    /// `section` is one protocol section (`[pop3]` or `[smtp]`) without its
    /// `listen`, `listen_tls` and `upstream` keys.
    pub async fn start(protocol: Protocol, upstream: SocketAddr, extra: &str) -> Postern {
        Self::start_with(protocol, upstream, extra, |_| {}).await
    }

    /// Like [`Postern::start`], with a last change to the parsed configuration
    /// (for settings outside the protocol's section, e.g. `[tls]`).
    pub async fn start_with(
        protocol: Protocol,
        upstream: SocketAddr,
        extra: &str,
        change: impl FnOnce(&mut Config),
    ) -> Postern {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let text = format!(
            r#"
[store]
url = "sqlite://{d}/p.db"
[secrets]
key_file = "{d}/secret.key"
[tls]
cert = "{d}/tls.crt"
key = "{d}/tls.key"
[{section}]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]
upstream = "{upstream}"
upstream_timeout_secs = 5
{extra}
[upstream_auth]
mode = "master"
master_user = "proxy"
master_password = "masterpw"
"#,
            section = protocol.as_str()
        );
        let mut config = Config::parse(&text).unwrap();
        change(&mut config);
        let runtime = Runtime::build(&config).await.unwrap();
        let bound = runtime.bind_all(&config).await.unwrap();
        let key = InstanceKey::load_or_create(&config.secrets.key_file).unwrap();
        Postern {
            _dir: dir,
            runtime,
            bound,
            key,
        }
    }

    pub fn plain_addr(&self) -> SocketAddr {
        self.bound.iter().find(|b| !b.implicit_tls).unwrap().addr
    }

    pub fn tls_addr(&self) -> SocketAddr {
        self.bound.iter().find(|b| b.implicit_tls).unwrap().addr
    }

    /// The certificate postern generated for its TLS listeners.
    pub fn cert_path(&self) -> std::path::PathBuf {
        self._dir.path().join("tls.crt")
    }

    pub fn store(&self) -> &Store {
        &self.runtime.store
    }

    /// example.test: feature on, status Enabled; `user` enrolled with TOTP.
    pub async fn enroll(&self, user: &str) {
        let store = self.store();
        let domain = user.split('@').nth(1).unwrap();
        store.add_domain(domain, "test").await.unwrap();
        store
            .set_domain_feature(domain, true, "test")
            .await
            .unwrap();
        store
            .set_domain_status(domain, DomainStatus::Enabled, None, "test")
            .await
            .unwrap();
        let record = store.ensure_user(user).await.unwrap();
        store
            .add_second_factor(record.id, FactorKind::Totp, TOTP_SECRET, true, "test")
            .await
            .unwrap();
    }

    /// A new app password for `user` with these scopes (`imap,pop3,smtp`).
    pub async fn app_password(&self, user: &str, scopes: &str) -> String {
        let scopes: Scopes = scopes.parse().unwrap();
        let issued = issue_app_password(self.store(), &self.key, user, "dev", scopes, None, "test")
            .await
            .unwrap();
        issued.password.display().expose().clone()
    }
}

/// `AUTH PLAIN` initial response.
pub fn plain(authzid: &str, authcid: &str, password: &str) -> String {
    B64.encode(format!("{authzid}\0{authcid}\0{password}"))
}

pub use postern::demo::record::Seen;

/// What a fake upstream saw, in order; tests await entries instead of sleeping.
#[derive(Clone)]
pub struct Log(pub Record);

impl Log {
    pub fn all(&self) -> Vec<Seen> {
        self.0.all()
    }

    /// Waits (at most 20 s, then panics naming `what`) until the record
    /// satisfies `done`.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Seen]) -> bool) {
        let done = |entries: &[(u64, Seen)]| {
            let seen: Vec<Seen> = entries.iter().map(|(_, s)| s.clone()).collect();
            done(&seen)
        };
        let waited = tokio::time::timeout(WAIT, self.0.wait_for(done)).await;
        assert!(waited.is_ok(), "waited 20 s for {what}: {:?}", self.all());
    }

    /// Waits until every connection postern opened to the fake has ended, so
    /// nothing more can reach it: the record is final. Await it after the
    /// client's own connection was closed.
    pub async fn connections_closed(&self) {
        let waited = tokio::time::timeout(WAIT, self.0.connections_closed()).await;
        assert!(
            waited.is_ok(),
            "waited 20 s for the upstream connections to close: {:?}",
            self.all()
        );
    }

    /// Waits until the fake has seen `n` login attempts.
    pub async fn logins_seen(&self, n: usize) {
        self.wait_for(&format!("{n} logins"), |seen| {
            seen.iter().filter(|s| matches!(s, Seen::Login(..))).count() >= n
        })
        .await
    }

    /// Every login attempt: (authzid, authcid, password).
    pub fn logins(&self) -> Vec<(String, String, String)> {
        let logins = self.0.logins().into_iter();
        logins.map(|l| (l.authzid, l.authcid, l.password)).collect()
    }

    pub fn commands(&self) -> Vec<String> {
        self.0.commands()
    }

    pub fn has_command(&self, prefix: &str) -> bool {
        self.commands()
            .iter()
            .any(|c| c.to_ascii_uppercase().starts_with(prefix))
    }
}

/// The demo's `service` server for ALICE (whose INBOX holds one message) and
/// the master account `proxy`/`masterpw`.
async fn spawn_fake(options: Options) -> (SocketAddr, Log) {
    let boxes = Mailboxes::new(&[(ALICE, ALICE_PRIMARY)], ("proxy", "masterpw"));
    boxes.deliver(ALICE, MESSAGE.to_vec());
    let server = MailServer::spawn(boxes, options, Record::new())
        .await
        .expect("fake upstream");
    (server.addr, Log(server.record))
}

/// A POP3 server: CAPA (SASL PLAIN), USER/PASS, AUTH PLAIN, then ALICE's INBOX.
pub async fn fake_pop3() -> (SocketAddr, Log) {
    spawn_fake(Options::new(Service::Pop3)).await
}

/// An SMTP submission server with AUTH PLAIN and XCLIENT; records the raw
/// bytes of DATA.
pub async fn fake_smtp() -> (SocketAddr, Log) {
    let options = Options {
        xclient: true,
        ..Options::new(Service::Submission)
    };
    spawn_fake(options).await
}

/// A port with nothing listening.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A line-oriented test client.
pub struct Client(BufReader<TcpStream>);

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client(BufReader::new(TcpStream::connect(addr).await.unwrap()))
    }

    pub async fn send(&mut self, bytes: &str) {
        self.send_raw(bytes.as_bytes()).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.0.get_mut().write_all(bytes).await.unwrap();
    }

    /// One line, without CRLF; panics on EOF or after 20 s.
    pub async fn line(&mut self) -> String {
        let mut line = Vec::new();
        let n = tokio::time::timeout(WAIT, self.0.read_until(b'\n', &mut line))
            .await
            .expect("timed out waiting for a line")
            .unwrap();
        assert!(n > 0, "connection closed");
        String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_owned()
    }

    /// An SMTP reply: all its lines; the last one has a space after the code.
    pub async fn reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await;
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines;
            }
        }
    }

    /// Sends QUIT (answered by postern before login, by the upstream after)
    /// and waits for the server to close the connection.
    pub async fn quit(&mut self) {
        self.send("QUIT\r\n").await;
        self.line().await;
        assert!(self.closed().await, "the server closes after QUIT");
    }

    /// The connection, e.g. for a TLS upgrade.
    pub fn into_inner(self) -> TcpStream {
        self.0.into_inner()
    }

    /// True when the server closed the connection (reads to EOF).
    pub async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(WAIT, self.0.read_to_end(&mut rest)).await,
            Ok(Ok(_))
        )
    }
}

/// Connects, reads the greeting, then streams a 10 MiB line of `A` (and CRLF)
/// from a task; the task yields the client once all of it was sent.
pub fn flood_10_mb(addr: SocketAddr) -> tokio::task::JoinHandle<std::io::Result<Client>> {
    tokio::spawn(async move {
        let mut c = Client::connect(addr).await;
        c.line().await;
        let chunk = vec![b'A'; 64 * 1024];
        for _ in 0..160 {
            c.0.get_mut().write_all(&chunk).await?;
        }
        c.0.get_mut().write_all(b"\r\n").await?;
        Ok(c)
    })
}
