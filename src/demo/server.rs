//! One demo upstream listener: accepts connections on an ephemeral loopback
//! port, bounds them, optionally wraps them in TLS, and hands each to the
//! protocol's server ([`super::imap`], [`super::pop3`], [`super::smtp`]).
//! The same servers stand in for the mail server in `postern demo` and in the
//! test suite; the options that only tests use (a record, a [`Fault`],
//! XCLIENT) are off in the demo.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::warn;

use super::record::{Connection, Login, Record, Seen};
use super::store::Mailboxes;

/// Connections one listener serves at once.
const MAX_CONNECTIONS: usize = 256;
/// Longest a connection lives.
const MAX_SESSION: Duration = Duration::from_secs(4 * 3600);

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Imap,
    Pop3,
    /// SMTP submission: AUTH before mail.
    Submission,
    /// SMTP without AUTH: the gateway's `[relay]` for recovery codes.
    Relay,
}

/// How a listener offers TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tls {
    #[default]
    None,
    /// A plain greeting offering STARTTLS and no login before it (IMAP only).
    Starttls,
    /// TLS from the first byte.
    Implicit,
}

/// A failure the server plays (tests of how postern copes with upstreams).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// Never answer a login command: a server that hangs under load. The
    /// connection is read on until the client closes it.
    StallAtLogin,
    /// Read the login command, then close the connection without answering.
    CloseAtLogin,
    /// Close the connection at the first command after a successful login.
    CloseAfterLogin,
}

/// One listener's behaviour.
#[derive(Clone, Debug)]
pub struct Options {
    pub service: Service,
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
    pub tls: Tls,
    /// Offer XCLIENT (SMTP submission): `XCLIENT LOGIN=<account>` logs in as
    /// that account with no password, as Postfix does for trusted clients.
    pub xclient: bool,
    /// Off in the demo.
    pub fault: Fault,
}

impl Options {
    pub fn new(service: Service) -> Self {
        Self {
            service,
            hostname: "demo.test".into(),
            tls: Tls::None,
            xclient: false,
            fault: Fault::None,
        }
    }
}

/// A running listener.
#[derive(Clone)]
pub struct MailServer {
    pub addr: SocketAddr,
    /// What it saw (empty when started with [`Record::off`]).
    pub record: Record,
    /// Its self-signed certificate (PEM) for localhost/127.0.0.1, when it speaks TLS.
    pub certificate: Option<String>,
}

/// What one connection's server needs.
pub(super) struct Session {
    pub boxes: Mailboxes,
    pub options: Arc<Options>,
    pub seen: Connection,
}

impl Session {
    /// A login as `authcid` (for `authzid`, if not empty): the account it
    /// opens. Recorded either way.
    pub fn login(&self, authzid: &str, authcid: &str, password: &str) -> Option<String> {
        let opened = self.boxes.login(authzid, authcid, password);
        self.seen.push(Seen::Login(Login {
            authzid: authzid.to_owned(),
            authcid: authcid.to_owned(),
            password: password.to_owned(),
            accepted: opened.is_some(),
        }));
        opened
    }

    /// SASL PLAIN (RFC 4616), base64 as sent. Undecodable input is no attempt.
    pub fn login_plain(&self, base64: &str) -> Option<String> {
        let raw = B64.decode(base64.trim()).ok()?;
        let text = std::str::from_utf8(&raw).ok()?;
        let mut parts = text.split('\0');
        let (authzid, authcid, password) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        self.login(authzid, authcid, password)
    }

    /// Whether a login command is met with [`Fault::StallAtLogin`] or
    /// [`Fault::CloseAtLogin`] ([`Session::fail_login`] then ends the session).
    pub fn fails_login(&self) -> bool {
        matches!(
            self.options.fault,
            Fault::StallAtLogin | Fault::CloseAtLogin
        )
    }

    /// Whether every command after the login closes the connection.
    pub fn closes_after_login(&self) -> bool {
        self.options.fault == Fault::CloseAfterLogin
    }

    /// The login command goes unanswered: the connection is closed, or read
    /// on (recording the lines) until the client closes it.
    pub async fn fail_login<R: tokio::io::AsyncBufRead + Unpin>(
        &self,
        reader: &mut R,
    ) -> std::io::Result<()> {
        if self.options.fault != Fault::StallAtLogin {
            return Ok(());
        }
        self.seen.push(Seen::Stalled);
        while let Some(line) = super::store::read_line(reader).await? {
            self.seen.command(&line);
        }
        Ok(())
    }
}

/// A self-signed certificate for localhost/127.0.0.1: the acceptor and the PEM.
fn self_signed() -> anyhow::Result<(TlsAcceptor, String)> {
    crate::net::tls::install_provider();
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let key = PrivateKeyDer::from_pem_slice(generated.signing_key.serialize_pem().as_bytes())?;
    let chain = vec![CertificateDer::from(generated.cert.der().to_vec())];
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok((TlsAcceptor::from(Arc::new(config)), generated.cert.pem()))
}

impl MailServer {
    /// Starts a listener on an ephemeral loopback port serving `boxes`.
    pub async fn spawn(
        boxes: Mailboxes,
        options: Options,
        record: Record,
    ) -> anyhow::Result<MailServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (acceptor, certificate) = match options.tls {
            Tls::None => (None, None),
            Tls::Starttls | Tls::Implicit => {
                let (acceptor, pem) = self_signed()?;
                (Some(acceptor), Some(pem))
            }
        };
        let options = Arc::new(options);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let server = MailServer {
            addr,
            record: record.clone(),
            certificate,
        };
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    warn!("demo upstream: too many connections; closing one");
                    continue;
                };
                let session = Session {
                    boxes: boxes.clone(),
                    options: options.clone(),
                    seen: record.connection(),
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(MAX_SESSION, serve(tcp, acceptor, session)).await;
                    drop(permit);
                });
            }
        });
        Ok(server)
    }
}

async fn serve(
    tcp: TcpStream,
    acceptor: Option<TlsAcceptor>,
    session: Session,
) -> std::io::Result<()> {
    let acceptor = || acceptor.clone().ok_or(std::io::ErrorKind::InvalidInput);
    match (session.options.tls, session.options.service) {
        (Tls::Implicit, _) => dispatch(acceptor()?.accept(tcp).await?, &session).await,
        (Tls::Starttls, Service::Imap) => {
            let Some(tcp) = super::imap::until_starttls(tcp, &session).await? else {
                return Ok(());
            };
            super::imap::serve(acceptor()?.accept(tcp).await?, &session, false).await
        }
        _ => dispatch(tcp, &session).await,
    }
}

async fn dispatch<S>(stream: S, session: &Session) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match session.options.service {
        Service::Imap => super::imap::serve(stream, session, true).await,
        Service::Pop3 => super::pop3::serve(stream, session).await,
        Service::Submission | Service::Relay => super::smtp::serve(stream, session).await,
    }
}
