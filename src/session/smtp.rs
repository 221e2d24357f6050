//! SMTP submission's plug-in for the session driver.
//!
//! The client core answers EHLO itself, before any login, with the upstream's
//! extensions (minus those postern handles). [`SmtpExtensions`] learns them from
//! the upstream's own EHLO reply and keeps them for [`EXTENSIONS_TTL`].

use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tracing::{debug, warn};

use crate::config::{SmtpUpstreamLogin as LoginSetting, UpstreamTls};
use crate::net::tls;
use crate::policy::Protocol;
use crate::protocol::line::Options;
use crate::protocol::smtp::server::SmtpPreAuth;
use crate::protocol::smtp::upstream::{EHLO_NAME, SmtpLoginMode, SmtpUpstreamLogin};
use crate::protocol::upstream::{UpstreamRequest, UpstreamStep};

use super::pop3::one_line;
use super::{Context, ProtocolHandler, UpstreamCore};

/// How long a learned extension list is used before the upstream is asked again.
pub const EXTENSIONS_TTL: Duration = Duration::from_secs(300);
/// How long the default list stands in after a failed probe.
const FAILED_PROBE_TTL: Duration = Duration::from_secs(30);
/// Extensions offered when the upstream cannot be asked (`SIZE` omitted: its
/// limit is the upstream's to announce).
pub const DEFAULT_EXTENSIONS: [&str; 3] = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"];
/// Cap on one line and on the number of lines of the probed EHLO reply.
const MAX_PROBE_LINE: usize = 4096;
const MAX_PROBE_LINES: usize = 100;

pub struct Smtp {
    hostname: String,
    login: LoginSetting,
    extensions: SmtpExtensions,
}

impl Smtp {
    pub fn new(hostname: String, login: LoginSetting) -> Self {
        Self {
            hostname,
            login,
            extensions: SmtpExtensions::default(),
        }
    }
}

impl UpstreamCore for SmtpUpstreamLogin {
    fn feed(&mut self, bytes: &[u8]) {
        SmtpUpstreamLogin::feed(self, bytes)
    }
    fn next_step(&mut self) -> Option<UpstreamStep> {
        SmtpUpstreamLogin::next_step(self)
    }
}

impl ProtocolHandler for Smtp {
    type Client = SmtpPreAuth;
    type Upstream = SmtpUpstreamLogin;

    fn protocol(&self) -> Protocol {
        Protocol::Smtp
    }

    async fn prepare(&self, ctx: &Context) {
        self.extensions.refresh(ctx).await;
    }

    fn client_core(&self, options: Options) -> SmtpPreAuth {
        SmtpPreAuth::new(options, self.hostname.clone(), self.extensions.current())
    }

    fn upstream_core(&self, client: &SmtpPreAuth, request: UpstreamRequest) -> SmtpUpstreamLogin {
        // XCLIENT LOGIN= checks no password: only for postern's own (master)
        // logins. A primary password goes to the upstream's AUTH to be verified.
        let mode = match self.login {
            LoginSetting::Xclient if !request.credentials.authzid.is_empty() => {
                SmtpLoginMode::Xclient
            }
            _ => SmtpLoginMode::Auth,
        };
        let helo = client.client_helo().unwrap_or_default().to_owned();
        SmtpUpstreamLogin::new(request, mode, helo)
    }

    fn goodbye(&self, reason: &str) -> Vec<u8> {
        format!("421 4.7.0 {}\r\n", one_line(reason)).into_bytes()
    }

    fn timeout_goodbye(&self) -> Vec<u8> {
        b"421 4.4.2 Timeout waiting for authentication, closing connection\r\n".to_vec()
    }

    /// RFC 5321 §3.8 (421, closing) with RFC 3463's 4.3.2, "system not
    /// accepting network messages".
    fn shutdown_goodbye(&self, reason: &str) -> Vec<u8> {
        format!("421 4.3.2 {}\r\n", one_line(reason)).into_bytes()
    }
}

struct Learned {
    at: Instant,
    ttl: Duration,
    lines: Vec<String>,
}

/// The upstream's EHLO extensions, probed lazily and remembered for a while.
#[derive(Default)]
pub struct SmtpExtensions {
    learned: Mutex<Option<Learned>>,
    /// One probe at a time; the others wait for its answer.
    probing: tokio::sync::Mutex<()>,
}

impl SmtpExtensions {
    fn fresh(&self) -> bool {
        let learned = self.learned.lock().unwrap_or_else(|e| e.into_inner());
        learned.as_ref().is_some_and(|l| l.at.elapsed() < l.ttl)
    }

    /// The list to offer now: the learned one, or the safe default.
    pub fn current(&self) -> Vec<String> {
        let learned = self.learned.lock().unwrap_or_else(|e| e.into_inner());
        match learned.as_ref() {
            Some(l) => l.lines.clone(),
            None => default_extensions(),
        }
    }

    /// Asks the upstream unless a recent answer is known.
    pub async fn refresh(&self, ctx: &Context) {
        if self.fresh() {
            return;
        }
        let _probing = self.probing.lock().await;
        if self.fresh() {
            return;
        }
        let limit = Duration::from_secs(ctx.settings.upstream_timeout_secs);
        let (lines, ttl) = match timeout(limit, probe(ctx)).await {
            Ok(Ok(lines)) => {
                debug!(upstream = %ctx.settings.upstream, extensions = ?lines, "learned the upstream's SMTP extensions");
                (lines, EXTENSIONS_TTL)
            }
            Ok(Err(err)) => {
                warn!(upstream = %ctx.settings.upstream, error = %err, "SMTP extension probe failed; offering defaults");
                (default_extensions(), FAILED_PROBE_TTL)
            }
            Err(_) => {
                warn!(upstream = %ctx.settings.upstream, "SMTP extension probe timed out; offering defaults");
                (default_extensions(), FAILED_PROBE_TTL)
            }
        };
        *self.learned.lock().unwrap_or_else(|e| e.into_inner()) = Some(Learned {
            at: Instant::now(),
            ttl,
            lines,
        });
    }
}

fn default_extensions() -> Vec<String> {
    DEFAULT_EXTENSIONS.iter().map(|s| (*s).to_owned()).collect()
}

async fn probe(ctx: &Context) -> std::io::Result<Vec<String>> {
    let settings = &ctx.settings;
    let tcp = TcpStream::connect(settings.upstream.as_str()).await?;
    if settings.upstream_tls == UpstreamTls::Implicit {
        let name = tls::server_name(&settings.upstream_tls_name).map_err(|err| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, err.to_string())
        })?;
        ehlo_exchange(ctx.upstream_tls.connect(name, tcp).await?).await
    } else {
        // With `starttls` the list is the one offered before TLS; postern hides
        // AUTH and STARTTLS anyway, and the rest rarely differs.
        ehlo_exchange(tcp).await
    }
}

/// Greeting, EHLO, QUIT; the extension lines of the EHLO reply.
async fn ehlo_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
) -> std::io::Result<Vec<String>> {
    let mut stream = BufReader::new(stream);
    let greeting = read_reply(&mut stream).await?;
    if greeting.0 != 220 {
        return Err(invalid(format!("greeting {}", greeting.0)));
    }
    stream
        .get_mut()
        .write_all(format!("EHLO {EHLO_NAME}\r\n").as_bytes())
        .await?;
    let (code, lines) = read_reply(&mut stream).await?;
    if code != 250 {
        return Err(invalid(format!("EHLO answered {code}")));
    }
    let _ = stream.get_mut().write_all(b"QUIT\r\n").await;
    let _ = read_reply(&mut stream).await;
    let _ = stream.get_mut().shutdown().await;
    Ok(lines.into_iter().skip(1).collect())
}

/// One reply: its code and the text of its lines.
async fn read_reply<S: AsyncRead + Unpin>(
    stream: &mut BufReader<S>,
) -> std::io::Result<(u16, Vec<String>)> {
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = (&mut *stream)
            .take(MAX_PROBE_LINE as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Err(invalid("upstream closed the connection".into()));
        }
        if line.last() != Some(&b'\n') {
            return Err(invalid("reply line too long".into()));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        let code = text
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| invalid(format!("malformed reply {text:?}")))?;
        let more = text.as_bytes().get(3) == Some(&b'-');
        lines.push(text.get(4..).unwrap_or_default().to_owned());
        if lines.len() > MAX_PROBE_LINES {
            return Err(invalid("reply too long".into()));
        }
        if !more {
            return Ok((code, lines));
        }
    }
}

fn invalid(detail: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, detail)
}
