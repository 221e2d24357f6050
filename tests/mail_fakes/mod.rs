//! Helpers for the POP3 and SMTP gateway tests: postern in-process with a fresh
//! store, fake upstream servers that record what they receive, and a line client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use postern::app::{Bound, Runtime};
use postern::config::Config;
use postern::credentials::{InstanceKey, issue_app_password};
use postern::policy::{DomainStatus, Protocol, Scopes};
use postern::store::{FactorKind, Store};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub const ALICE: &str = "alice@example.test";
pub const ALICE_PRIMARY: &str = "alice-primary";
pub const TOTP_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
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

/// What a fake upstream saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Connected,
    /// A SASL PLAIN login: (authzid, authcid, password).
    Login(String, String, String),
    /// A command line (without CRLF) the fake received, any phase.
    Command(String),
    /// The raw bytes between DATA's 354 and the final dot line (exclusive).
    Data(Vec<u8>),
    /// A connection ended (either side closed it).
    Closed,
}

/// What a fake upstream saw, in order; tests await entries instead of sleeping.
#[derive(Clone, Default)]
pub struct Log(Arc<LogInner>);

#[derive(Default)]
pub struct LogInner {
    seen: Mutex<Vec<Seen>>,
    changed: tokio::sync::Notify,
}

impl Log {
    pub fn push(&self, seen: Seen) {
        self.0.seen.lock().unwrap().push(seen);
        self.0.changed.notify_waiters();
    }
    pub fn all(&self) -> Vec<Seen> {
        self.0.seen.lock().unwrap().clone()
    }

    /// Waits (at most 20 s, then panics naming `what`) until the record
    /// satisfies `done`.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Seen]) -> bool) {
        let waited = tokio::time::timeout(WAIT, async {
            loop {
                let changed = self.0.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if done(&self.0.seen.lock().unwrap()) {
                    return;
                }
                changed.await;
            }
        })
        .await;
        assert!(waited.is_ok(), "waited 20 s for {what}: {:?}", self.all());
    }

    /// Waits until every connection postern opened to the fake has ended, so
    /// nothing more can reach it: the record is final. Await it after the
    /// client's own connection was closed.
    pub async fn connections_closed(&self) {
        self.wait_for("the upstream connections to close", |seen| {
            let count = |kind: &Seen| seen.iter().filter(|s| *s == kind).count();
            count(&Seen::Connected) == count(&Seen::Closed)
        })
        .await
    }

    /// Waits until the fake has seen `n` logins.
    pub async fn logins_seen(&self, n: usize) {
        self.wait_for(&format!("{n} logins"), |seen| {
            seen.iter().filter(|s| matches!(s, Seen::Login(..))).count() >= n
        })
        .await
    }

    pub fn logins(&self) -> Vec<(String, String, String)> {
        self.all()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Login(a, b, c) => Some((a, b, c)),
                _ => None,
            })
            .collect()
    }
    pub fn commands(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Command(c) => Some(c),
                _ => None,
            })
            .collect()
    }
    pub fn has_command(&self, prefix: &str) -> bool {
        self.commands()
            .iter()
            .any(|c| c.to_ascii_uppercase().starts_with(prefix))
    }
}

/// Who the fakes let in: the user's own password, or the master account.
fn accepts(authzid: &str, authcid: &str, password: &str) -> bool {
    (authzid.is_empty() && authcid == ALICE && password == ALICE_PRIMARY)
        || (authzid == ALICE && authcid == "proxy" && password == "masterpw")
}

fn decode_plain(b64: &str) -> Option<(String, String, String)> {
    let raw = B64.decode(b64.trim()).ok()?;
    let parts: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    if parts.len() != 3 {
        return None;
    }
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Some((s(parts[0]), s(parts[1]), s(parts[2])))
}

/// A fake upstream: spawns `serve` for every connection.
async fn spawn_fake<F, Fut>(serve: F) -> (SocketAddr, Log)
where
    F: Fn(TcpStream, Log) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Log::default();
    let out = log.clone();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            log.push(Seen::Connected);
            let (serve, log) = (serve.clone(), log.clone());
            tokio::spawn(async move {
                let _ = serve(tcp, log.clone()).await;
                log.push(Seen::Closed);
            });
        }
    });
    (addr, out)
}

async fn read_line(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line).await? == 0 {
        return Ok(None);
    }
    Ok(Some(
        String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
    ))
}

/// A POP3 server: CAPA (SASL PLAIN), AUTH PLAIN, then `+OK <command>` for
/// every command and `+OK` + close for QUIT.
pub async fn fake_pop3() -> (SocketAddr, Log) {
    spawn_fake(|tcp, log| async move {
        let mut r = BufReader::new(tcp);
        r.get_mut().write_all(b"+OK fake pop3 ready\r\n").await?;
        let mut logged_in = false;
        while let Some(line) = read_line(&mut r).await? {
            log.push(Seen::Command(line.clone()));
            let upper = line.to_ascii_uppercase();
            let reply: String = if upper == "CAPA" {
                "+OK\r\nUSER\r\nSASL PLAIN\r\nUIDL\r\n.\r\n".into()
            } else if !logged_in && upper.starts_with("AUTH PLAIN") {
                let b64 = match line.get(11..) {
                    Some(b64) if !b64.trim().is_empty() => b64.to_owned(),
                    _ => {
                        r.get_mut().write_all(b"+ \r\n").await?;
                        read_line(&mut r).await?.unwrap_or_default()
                    }
                };
                match decode_plain(&b64) {
                    Some((z, c, p)) => {
                        log.push(Seen::Login(z.clone(), c.clone(), p.clone()));
                        if accepts(&z, &c, &p) {
                            logged_in = true;
                            "+OK fake logged in\r\n".into()
                        } else {
                            "-ERR [AUTH] fake says no\r\n".into()
                        }
                    }
                    None => "-ERR bad base64\r\n".into(),
                }
            } else if upper == "QUIT" {
                r.get_mut().write_all(b"+OK bye\r\n").await?;
                return Ok(());
            } else if logged_in {
                format!("+OK {line}\r\n")
            } else {
                "-ERR not logged in\r\n".into()
            };
            r.get_mut().write_all(reply.as_bytes()).await?;
        }
        Ok(())
    })
    .await
}

/// An SMTP submission server with AUTH PLAIN and XCLIENT; records the raw
/// bytes of DATA.
pub async fn fake_smtp() -> (SocketAddr, Log) {
    spawn_fake(|tcp, log| async move {
        let mut r = BufReader::new(tcp);
        r.get_mut().write_all(b"220 fake.test ESMTP\r\n").await?;
        let mut logged_in = false;
        while let Some(line) = read_line(&mut r).await? {
            log.push(Seen::Command(line.clone()));
            let upper = line.to_ascii_uppercase();
            let reply: String = if upper.starts_with("EHLO") {
                "250-fake.test\r\n250-PIPELINING\r\n250-SIZE 31337\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n250-XCLIENT LOGIN ADDR PORT NAME HELO\r\n250 ENHANCEDSTATUSCODES\r\n".into()
            } else if upper.starts_with("XCLIENT") {
                if line.split(' ').any(|a| a == format!("LOGIN={ALICE}")) {
                    logged_in = true;
                }
                "220 fake.test ESMTP again\r\n".into()
            } else if !logged_in && upper.starts_with("AUTH PLAIN") {
                let b64 = match line.get(11..) {
                    Some(b64) if !b64.trim().is_empty() => b64.to_owned(),
                    _ => {
                        r.get_mut().write_all(b"334 \r\n").await?;
                        read_line(&mut r).await?.unwrap_or_default()
                    }
                };
                match decode_plain(&b64) {
                    Some((z, c, p)) => {
                        log.push(Seen::Login(z.clone(), c.clone(), p.clone()));
                        if accepts(&z, &c, &p) {
                            logged_in = true;
                            "235 2.7.0 fake accepted\r\n".into()
                        } else {
                            "535 5.7.8 fake says no\r\n".into()
                        }
                    }
                    None => "501 5.5.2 bad base64\r\n".into(),
                }
            } else if upper == "QUIT" {
                r.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            } else if !logged_in {
                "530 5.7.0 fake wants AUTH\r\n".into()
            } else if upper == "DATA" {
                r.get_mut().write_all(b"354 go ahead\r\n").await?;
                let mut data = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if r.read_until(b'\n', &mut l).await? == 0 {
                        return Ok(());
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    data.extend_from_slice(&l);
                }
                log.push(Seen::Data(data));
                "250 2.0.0 queued\r\n".into()
            } else {
                format!("250 2.0.0 {line}\r\n")
            };
            r.get_mut().write_all(reply.as_bytes()).await?;
        }
        Ok(())
    })
    .await
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
