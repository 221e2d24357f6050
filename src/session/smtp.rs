//! SMTP submission's plug-in for the session driver.
//!
//! The client core answers EHLO itself, before any login, with the upstream's
//! extensions (minus those postern handles). [`SmtpExtensions`] learns them from
//! the upstream's own EHLO reply and keeps them for [`EXTENSIONS_TTL`].

use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout};
use tracing::{debug, warn};

use crate::config::SmtpUpstreamLogin as LoginSetting;
use crate::policy::Protocol;
use crate::protocol::line::Options;
use crate::protocol::smtp::reply::{Reply, ReplyReader};
use crate::protocol::smtp::server::SmtpPreAuth;
use crate::protocol::smtp::upstream::{EHLO_NAME, SmtpLoginMode, SmtpUpstreamLogin};
use crate::protocol::upstream::{UpstreamRequest, UpstreamStep};

use super::connect::connect_upstream;
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
    // With `starttls` the list is the one offered before TLS; postern hides
    // AUTH and STARTTLS anyway, and the rest rarely differs.
    ehlo_exchange(connect_upstream(&ctx.settings, &ctx.upstream_tls).await?).await
}

/// Greeting, EHLO, QUIT; the extension lines of the EHLO reply.
async fn ehlo_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
) -> std::io::Result<Vec<String>> {
    let mut replies = ReplyReader::new(MAX_PROBE_LINE, MAX_PROBE_LINES);
    let greeting = read_reply(&mut stream, &mut replies).await?;
    if greeting.code != 220 {
        return Err(invalid(format!("greeting {}", greeting.code)));
    }
    stream
        .write_all(format!("EHLO {EHLO_NAME}\r\n").as_bytes())
        .await?;
    let ehlo = read_reply(&mut stream, &mut replies).await?;
    if ehlo.code != 250 {
        return Err(invalid(format!("EHLO answered {}", ehlo.code)));
    }
    let _ = stream.write_all(b"QUIT\r\n").await;
    let _ = read_reply(&mut stream, &mut replies).await;
    let _ = stream.shutdown().await;
    Ok(ehlo.extensions())
}

/// The next reply, reading from `stream` as needed.
async fn read_reply<S: AsyncRead + Unpin>(
    stream: &mut S,
    replies: &mut ReplyReader,
) -> std::io::Result<Reply> {
    let mut buf = [0u8; 1024];
    loop {
        if let Some(reply) = replies.next_reply() {
            return reply.map_err(invalid);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(invalid("upstream closed the connection".into()));
        }
        replies.feed(&buf[..n]);
    }
}

fn invalid(detail: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, detail)
}
