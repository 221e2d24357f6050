//! Test harness: postern started in-process on ephemeral loopback ports in front
//! of a scripted fake upstream, and small line-oriented clients.
#![allow(dead_code)]

pub mod browser;
pub mod fake_imap;
pub mod process;
pub mod smtp_sink;
pub mod stalling_upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use postern::app::{Bound, Runtime};
use postern::config::Config;
use postern::credentials::{InstanceKey, issue_app_password};
use postern::policy::{DomainStatus, Protocol, Scopes};
use postern::store::{FactorKind, Store};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Every read in a test waits at most this long: a hang fails, it never blocks CI.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Gateway {
    pub runtime: Runtime,
    pub bound: Vec<Bound>,
    pub config: Config,
    pub key: InstanceKey,
    _dir: Arc<tempfile::TempDir>,
}

impl Gateway {
    /// Starts postern with `[imap]` pointed at `upstream`. `extra` is appended to
    /// the `[imap]` section.
    pub async fn start_imap(upstream: SocketAddr, extra: &str) -> Gateway {
        Self::start(upstream, extra, "").await
    }

    /// `imap_extra` goes into `[imap]`, `auth_extra` into `[upstream_auth]`.
    pub async fn start(upstream: SocketAddr, imap_extra: &str, auth_extra: &str) -> Gateway {
        Self::start_on(upstream, imap_extra, auth_extra, None).await
    }

    /// Like [`Gateway::start`] on the given store URL (SQLite in a temporary
    /// folder when `None`).
    pub async fn start_on(
        upstream: SocketAddr,
        imap_extra: &str,
        auth_extra: &str,
        store_url: Option<&str>,
    ) -> Gateway {
        Self::start_with(upstream, imap_extra, auth_extra, store_url, |_| {}).await
    }

    /// Like [`Gateway::start_on`], with a last change to the parsed configuration
    /// (for settings outside `[imap]` and `[upstream_auth]`, e.g. `[tls]`).
    pub async fn start_with(
        upstream: SocketAddr,
        imap_extra: &str,
        auth_extra: &str,
        store_url: Option<&str>,
        change: impl FnOnce(&mut Config),
    ) -> Gateway {
        // The refusal floor is off unless a test names it.
        let auth_extra =
            &if auth_extra.contains("[limits]") && !auth_extra.contains("refusal_floor_ms") {
                auth_extra.replacen("[limits]", "[limits]\nrefusal_floor_ms = 0", 1)
            } else {
                auth_extra.to_owned()
            };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name).display().to_string();
        let text = format!(
            r#"
[store]
url = "{db}"
[secrets]
key_file = "{key}"
[tls]
cert = "{cert}"
key = "{tlskey}"
[imap]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]
upstream = "{upstream}"
upstream_timeout_secs = 5
{imap_extra}
[upstream_auth]
master_user = "proxy"
master_password = "masterpw"
{auth_extra}
{limits}
"#,
            // Login penalties would slow every test that is refused twice from
            // 127.0.0.1; tests of the penalties set their own [limits].
            limits = if auth_extra.contains("[limits]") {
                ""
            } else {
                "[limits]\ntrusted_networks = [\"127.0.0.0/8\"]\nrefusal_floor_ms = 0"
            },
            db = store_url.map_or_else(|| format!("sqlite://{}", path("p.db")), str::to_owned),
            key = path("k"),
            cert = path("c.crt"),
            tlskey = path("c.key"),
        );
        let mut config = Config::parse(&text).expect("test config");
        change(&mut config);
        let runtime = Runtime::build(&config).await.expect("runtime");
        let bound = runtime.bind_all(&config).await.expect("bind");
        runtime.start_rechecks(&config);
        let key = InstanceKey::load_or_create(&config.secrets.key_file).expect("key");
        Gateway {
            runtime,
            bound,
            config,
            key,
            _dir: Arc::new(dir),
        }
    }

    /// A second node of the same cluster: the same configuration, store,
    /// instance key and certificate, on its own ephemeral ports.
    pub async fn another_node(&self) -> Gateway {
        let runtime = Runtime::build(&self.config).await.expect("runtime");
        let bound = runtime.bind_all(&self.config).await.expect("bind");
        runtime.start_rechecks(&self.config);
        Gateway {
            runtime,
            bound,
            config: self.config.clone(),
            key: InstanceKey::load_or_create(&self.config.secrets.key_file).expect("key"),
            _dir: self._dir.clone(),
        }
    }

    pub fn addr(&self, protocol: Protocol, implicit_tls: bool) -> SocketAddr {
        self.bound
            .iter()
            .find(|b| b.protocol == protocol && b.implicit_tls == implicit_tls)
            .expect("listener")
            .addr
    }

    pub fn store(&self) -> &Store {
        &self.runtime.store
    }

    pub fn cert_path(&self) -> PathBuf {
        self.config.tls.cert.clone()
    }

    /// A domain with the feature on and this status.
    pub async fn domain(&self, domain: &str, status: DomainStatus) {
        let store = self.store();
        store.add_domain(domain, "test").await.expect("domain add");
        store
            .set_domain_feature(domain, true, "test")
            .await
            .expect("feature");
        store
            .set_domain_status(domain, status, None, "test")
            .await
            .expect("status");
    }

    /// Enrolls the user with a confirmed TOTP factor.
    pub async fn enroll(&self, user: &str) {
        let record = self.store().ensure_user(user).await.expect("user");
        self.store()
            .add_second_factor(
                record.id,
                FactorKind::Totp,
                "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ",
                true,
                "test",
            )
            .await
            .expect("enroll");
    }

    /// Issues an app password; returns its id and its shown form.
    pub async fn app_password(
        &self,
        user: &str,
        scopes: &str,
        expires_at: Option<i64>,
    ) -> (i64, String) {
        let scopes: Scopes = scopes.parse().expect("scopes");
        let issued = issue_app_password(
            self.store(),
            &self.key,
            user,
            "test device",
            scopes,
            expires_at,
            "test",
        )
        .await
        .expect("issue");
        (issued.id, issued.password.display().expose().clone())
    }
}

/// A line-oriented client over any stream.
pub struct LineClient<S> {
    stream: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> LineClient<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream: BufReader::new(stream),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.expect("write");
    }

    /// One line including CRLF, or "" at end of stream (a reset counts as the
    /// end: a server closing with unread input resets the connection).
    pub async fn line(&mut self) -> String {
        let mut line = Vec::new();
        match tokio::time::timeout(IO_TIMEOUT, self.stream.read_until(b'\n', &mut line))
            .await
            .expect("read timed out")
        {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => line.clear(),
            Err(err) => panic!("read: {err}"),
        }
        String::from_utf8_lossy(&line).into_owned()
    }

    /// Lines up to and including the first starting with `prefix`.
    pub async fn until(&mut self, prefix: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await;
            assert!(!line.is_empty(), "closed before {prefix:?}; got {lines:?}");
            let done = line.starts_with(prefix);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// True when the server closed the connection (after any remaining lines).
    pub async fn closed(&mut self) -> bool {
        loop {
            if self.line().await.is_empty() {
                return true;
            }
        }
    }

    pub fn into_inner(self) -> S {
        self.stream.into_inner()
    }
}

pub async fn connect(addr: SocketAddr) -> LineClient<TcpStream> {
    LineClient::new(TcpStream::connect(addr).await.expect("connect"))
}

/// A TLS client trusting exactly the gateway's (generated) certificate.
pub fn tls_connector(cert: &std::path::Path) -> tokio_rustls::TlsConnector {
    tls_connector_alpn(cert, &[])
}

/// Like [`tls_connector`], offering these ALPN ids (none: no ALPN extension).
pub fn tls_connector_alpn(cert: &std::path::Path, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    postern::net::tls::install_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cert).expect("pem") {
        roots.add(cert.expect("cert")).expect("root");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|id| id.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS handshake offering `alpn`: the negotiated ALPN id, or the error.
pub async fn tls_handshake_alpn(
    addr: SocketAddr,
    cert: &std::path::Path,
    alpn: &[&[u8]],
) -> Result<Option<Vec<u8>>, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let stream = tokio::time::timeout(
        IO_TIMEOUT,
        tls_connector_alpn(cert, alpn)
            .connect(ServerName::try_from("localhost").expect("name"), tcp),
    )
    .await
    .expect("handshake timed out")?;
    Ok(stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
}

/// Asserts the ALPN rules of a mail port: no ALPN or the protocol's own id is
/// accepted, another id is refused with `no_application_protocol`.
pub async fn assert_alpn_rules(addr: SocketAddr, cert: &std::path::Path, id: &[u8]) {
    assert_eq!(
        tls_handshake_alpn(addr, cert, &[]).await.expect("no ALPN"),
        None
    );
    assert_eq!(
        tls_handshake_alpn(addr, cert, &[b"h2", id])
            .await
            .expect("own id"),
        Some(id.to_vec())
    );
    let err = tls_handshake_alpn(addr, cert, &[b"h2", b"http/1.1"])
        .await
        .expect_err("another protocol's ALPN is refused");
    assert!(
        format!("{err:?}").contains("NoApplicationProtocol"),
        "refused with no_application_protocol: {err:?}"
    );
}

/// The first bytes of a TLS ClientHello: a record header announcing 200 bytes,
/// then the start of the handshake message, and no more.
pub const HALF_CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03, 0x5a, 0x5a, 0x5a, 0x5a,
];

/// Waits until the server closes `stream`, asserting it sends nothing first.
/// Panics if it is still open after [`IO_TIMEOUT`].
pub async fn assert_closed_silently<S: AsyncRead + Unpin>(stream: &mut S, what: &str) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    match tokio::time::timeout(IO_TIMEOUT, stream.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: still open after {IO_TIMEOUT:?}"))
    {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("{what}: unexpected bytes {:?}", &buf[..n]),
    }
}

/// On an implicit-TLS port: a client that sends nothing, or half a ClientHello,
/// is closed (after `[tls] handshake_timeout_secs`, which the test sets short).
pub async fn assert_stalled_handshakes_are_closed(addr: SocketAddr) {
    for (sent, what) in [
        (&b""[..], "silent client"),
        (HALF_CLIENT_HELLO, "half a ClientHello"),
    ] {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(sent).await.expect("send");
        assert_closed_silently(&mut tcp, what).await;
    }
}

pub async fn tls_upgrade(
    stream: TcpStream,
    cert: &std::path::Path,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_connector(cert)
        .connect(ServerName::try_from("localhost").expect("name"), stream)
        .await
        .expect("TLS handshake")
}
