//! The web UI and JSON API: user login with the second step, account pages
//! (2-Step Authentication, application passwords), the domain administrator's
//! card, the system administrator's console, `/healthz`.
//!
//! It talks to the store (and, for the primary password only, to the upstream
//! IMAP server through `crate::session`); it never decides mail logins itself:
//! `crate::policy` does, and `crate::recheck` drops sessions after the changes
//! made here, through the store's event log.

pub mod api;
pub mod attempts;
pub mod csrf;
mod login_counts;
pub mod ops;
pub mod pages;
pub mod passkeys;
pub mod recovery;
pub mod session;
pub mod sysadmin;
pub mod trusted;

use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_rustls::TlsConnector;
use tracing::{error, info, warn};

use crate::app::Runtime;
use crate::config::{Config, ProtocolSettings};
use crate::credentials::InstanceKey;
use crate::gate::Gate;
use crate::net::tls;
use crate::penalty::Penalties;
use crate::policy::Protocol;
use crate::recovery_mail::RecoveryMailer;
use crate::registry::SessionRegistry;
use crate::store::Store;
use attempts::{Attempts, ClientRate};
use session::{SessionStore, WebSession};

/// Largest form or JSON body accepted.
const MAX_BODY: usize = 64 * 1024;

/// Shared by every handler.
#[derive(Clone)]
pub struct WebState(Arc<Inner>);

pub struct Inner {
    pub store: Store,
    /// The mail login gate: failed web logins are counted through it, so its
    /// login cache forgets the account too.
    pub gate: Gate,
    pub key: InstanceKey,
    /// Where primary passwords are checked; `None`: no `[imap]` section, so no
    /// user can log in to the web UI (system administrators still can).
    pub imap: Option<ProtocolSettings>,
    pub connector: TlsConnector,
    /// Sends recovery e-mail codes through `[relay]`.
    pub mailer: RecoveryMailer,
    pub sessions: SessionStore,
    pub attempts: Attempts,
    /// System-administrator sign-in attempts per client network.
    pub admin_rate: ClientRate,
    /// Where a first start wrote the one-time password (removed once it is
    /// changed).
    pub first_password_file: Option<std::path::PathBuf>,
    /// The mail ports' login penalties: a wrong primary password on the web
    /// delays the same client and counts toward the account's block.
    pub penalties: Arc<Penalties>,
    /// System administrators' Argon2 checks, bounded.
    pub admin_passwords: crate::credentials::AdminPasswords,
    /// This node's live sessions; the shared table lags them by one batch.
    pub registry: SessionRegistry,
    /// `public_url` is https: cookies get `Secure`, responses
    /// `Strict-Transport-Security`.
    pub secure_cookies: bool,
    /// What mail clients should connect to, for the set-up instructions (the
    /// host of `public_url`; else the host the browser used).
    pub mail_host: Option<String>,
    /// `(protocol, port, "SSL/TLS" | "STARTTLS")` as configured.
    pub mail_ports: Vec<(Protocol, u16, &'static str)>,
    /// `[web] metrics_token`: required as a bearer token on `/metrics` when set.
    pub metrics_token: Option<crate::secret::Secret<String>>,
    /// Wakes this node's roll-out mailer: a roll-out was scheduled here, or a
    /// user it may have to mail signed in.
    pub rollout_wake: Arc<tokio::sync::Notify>,
    /// The passkeys' relying party (from `public_url`), or why there is none.
    pub webauthn: Result<Arc<webauthn_rs::Webauthn>, String>,
}

impl Deref for WebState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl WebState {
    pub fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }

    /// The state for a running gateway.
    pub fn from_runtime(runtime: &Runtime, config: &Config) -> anyhow::Result<Self> {
        // A malformed one is `check-config`'s to report; it then counts as unset.
        let public_url = config.web.public_url().ok().flatten();
        let mail_host = public_url
            .as_ref()
            .and_then(|url| url.host_str())
            .map(|host| {
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned()
            });
        let mut mail_ports = Vec::new();
        for protocol in Protocol::ALL {
            if let Some(settings) = config.protocol(protocol).transpose()? {
                // Port 0 (tests) says nothing a user could type.
                if let Some(addr) = settings.listen_tls.first().filter(|a| a.port() != 0) {
                    mail_ports.push((protocol, addr.port(), "SSL/TLS"));
                }
                if let Some(addr) = settings.listen.first().filter(|a| a.port() != 0) {
                    mail_ports.push((protocol, addr.port(), "STARTTLS"));
                }
            }
        }
        Ok(Self::new(Inner {
            store: runtime.store.clone(),
            gate: runtime.gate.clone(),
            key: runtime.gate.key().clone(),
            imap: config.protocol(Protocol::Imap).transpose()?,
            connector: tls::upstream_connector(&config.upstream_auth.ca_file)?,
            mailer: RecoveryMailer::from_config(&config.relay)?,
            sessions: SessionStore::new(runtime.store.clone(), runtime.gate.key().clone()),
            attempts: Attempts::new(runtime.store.clone()),
            admin_rate: ClientRate::new(runtime.store.clone()),
            first_password_file: Some(sysadmin::first_password_file(&config.secrets.key_file)),
            penalties: runtime.penalties.clone(),
            admin_passwords: runtime.admin_passwords.clone(),
            registry: runtime.registry.clone(),
            secure_cookies: public_url
                .as_ref()
                .is_some_and(|url| url.scheme() == "https"),
            mail_host,
            mail_ports,
            metrics_token: config
                .web
                .metrics_token
                .as_deref()
                .filter(|t| !t.is_empty())
                .map(crate::secret::Secret::from),
            rollout_wake: runtime.rollout_wake.clone(),
            webauthn: crate::credentials::passkey::relying_party(config.web.public_url.as_deref())
                .map(Arc::new),
        }))
    }
}

/// What the guard middleware learned about a request, for the handlers.
#[derive(Clone, Debug)]
pub struct Current {
    /// The session named by the cookie, if it is live.
    pub session: Option<(String, WebSession)>,
    pub client: Option<SocketAddr>,
    /// The trusted-browser cookie's id, if the browser sent one (see
    /// [`trusted`]); nothing about it is checked yet.
    pub trusted: Option<String>,
    /// The `User-Agent` header, for [`Current::browser`].
    pub user_agent: Option<HeaderValue>,
}

impl Current {
    pub fn ip(&self) -> Option<IpAddr> {
        self.client.map(|c| c.ip())
    }

    pub fn ip_string(&self) -> Option<String> {
        self.ip().map(|ip| ip.to_string())
    }

    /// A short description of the browser from `User-Agent`, such as
    /// "Firefox on Linux" (see [`trusted::describe_browser`]).
    pub fn browser(&self) -> String {
        trusted::describe_browser(
            self.user_agent
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        )
    }

    /// The primary password's tag kept by a session whose second step is due.
    pub fn password_tag(&self) -> Option<u16> {
        match self.session.as_ref().map(|(_, s)| &s.auth) {
            Some(session::Auth::SecondStep { password_tag, .. }) => *password_tag,
            _ => None,
        }
    }
}

/// Put on a response by a handler that started, replaced or ended the session.
#[derive(Clone, Debug)]
pub enum SessionCookie {
    Set(String),
    Clear,
}

/// Attaches a session change to a response.
pub fn with_cookie(cookie: SessionCookie, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response.extensions_mut().insert(cookie);
    response
}

/// Put on a response by a handler that trusted this browser (a new id) or
/// forgot it.
#[derive(Clone, Debug)]
pub enum TrustedCookie {
    Set(String),
    Clear,
}

/// Attaches a trusted-browser cookie change to a response (besides any
/// session change [`with_cookie`] attached).
pub fn with_trusted_cookie(cookie: TrustedCookie, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response.extensions_mut().insert(cookie);
    response
}

/// Every route.
pub fn router(state: WebState) -> Router {
    crate::metrics::install();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .merge(pages::routes())
        .nest("/api/v1", api::routes())
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// The Prometheus text format (see `crate::metrics`), behind the bearer token
/// when `[web] metrics_token` is set.
async fn metrics_text(State(state): State<WebState>, headers: HeaderMap) -> Response {
    if let Some(token) = &state.metrics_token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|v| crate::secret::Secret::from(v.trim()));
        if presented.as_ref() != Some(token) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
                "a bearer token is required\n",
            )
                .into_response();
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        crate::metrics::render(),
    )
        .into_response()
}

async fn healthz(State(state): State<WebState>) -> Response {
    match state.store.sysadmin_count().await {
        Ok(_) => (StatusCode::OK, "ok").into_response(),
        Err(err) => {
            warn!(error = %err, "healthz: the store does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response()
        }
    }
}

/// Why the guard refused a request before any handler saw it.
#[derive(Clone, Copy, Debug)]
pub enum Refusal {
    /// A POST with no live session: it ended (idle, signed out here or everywhere, user disabled or reset)
    /// while the page was open, or there never was one.
    NoSession,
    /// A live session, but the request does not carry its CSRF token (a page
    /// from an earlier session, or another site's form).
    WrongToken,
    /// A form body over [`MAX_BODY`].
    TooLarge,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoSession | Self::WrongToken => StatusCode::FORBIDDEN,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

/// The guard's refusal in the caller's language: `{"error": ...}` under
/// `/api/`, a page with a way on everywhere else.
fn refuse(path: &str, why: Refusal) -> Response {
    if path == "/api" || path.starts_with("/api/") {
        let message = match why {
            Refusal::NoSession => "no session: GET /api/v1/session first",
            Refusal::WrongToken => "missing or wrong X-CSRF-Token: GET /api/v1/session for it",
            Refusal::TooLarge => "request body too large",
        };
        api::ApiError::new(why.status(), message).into_response()
    } else {
        pages::refusal_page(path, why)
    }
}

/// Sessions, CSRF and the security headers, around every route.
async fn guard(State(state): State<WebState>, request: Request, next: Next) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let cookies: Vec<&str> = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let trusted = trusted::cookie_id(cookies.iter().copied(), state.secure_cookies);
    let session_id = session::session_id(cookies, state.secure_cookies);
    let user_agent = request.headers().get(header::USER_AGENT).cloned();
    let session = match session_id {
        Some(id) => state.sessions.get(&id).await.map(|s| (id, s)),
        None => None,
    };
    let mut request = request;
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let Some((_, live)) = &session else {
            return secure(
                refuse(request.uri().path(), Refusal::NoSession),
                true,
                state.secure_cookies,
            );
        };
        let header_token = request
            .headers()
            .get(csrf::HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let presented = match header_token {
            Some(token) => Some(token),
            None => {
                let is_form = request
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
                if !is_form {
                    None
                } else {
                    let (parts, body) = request.into_parts();
                    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
                        return secure(
                            refuse(parts.uri.path(), Refusal::TooLarge),
                            true,
                            state.secure_cookies,
                        );
                    };
                    let token = csrf::form_token(&bytes);
                    request = Request::from_parts(parts, Body::from(bytes));
                    token
                }
            }
        };
        if !csrf::matches(presented.as_deref(), &live.csrf) {
            return secure(
                refuse(request.uri().path(), Refusal::WrongToken),
                true,
                state.secure_cookies,
            );
        }
    }
    let cacheable = matches!(request.uri().path(), "/style.css" | "/passkey.js");
    request.extensions_mut().insert(Current {
        session,
        client,
        trusted,
        user_agent,
    });
    let mut response = next.run(request).await;
    if let Some(change) = response.extensions().get::<SessionCookie>().cloned() {
        let value = match change {
            SessionCookie::Set(id) => session::set_cookie(Some(&id), state.secure_cookies),
            SessionCookie::Clear => session::set_cookie(None, state.secure_cookies),
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    if let Some(change) = response.extensions().get::<TrustedCookie>().cloned() {
        let value = match change {
            TrustedCookie::Set(id) => trusted::set_cookie(Some(&id), state.secure_cookies),
            TrustedCookie::Clear => trusted::set_cookie(None, state.secure_cookies),
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    secure(response, !cacheable, state.secure_cookies)
}

/// How long a browser that saw the web UI over HTTPS refuses plain HTTP to it.
const HSTS: &str = "max-age=31536000";

/// The headers every response carries; `https`: `public_url` is https, so
/// browsers are told to use nothing else (`Strict-Transport-Security`).
fn secure(mut response: Response, no_store: bool, https: bool) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if no_store {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if https {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    response
}

/// Called once by `serve`: the first-start administrator, then the listener.
pub async fn spawn(runtime: &Runtime, config: &Config) -> anyhow::Result<SocketAddr> {
    sysadmin::ensure_first_sysadmin(
        &runtime.store,
        &sysadmin::first_password_file(&config.secrets.key_file),
    )
    .await;
    let state = WebState::from_runtime(runtime, config)?;
    tokio::spawn(state.sessions.clone().sweep_forever());
    let listener = TcpListener::bind(config.web.listen)
        .await
        .with_context(|| format!("binding the web listener {}", config.web.listen))?;
    let local = listener.local_addr()?;
    info!(listen = %local, "web UI and API listening");
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    // The server is one of the registry's connections: shutdown stops its
    // listener at once, and the drain waits for the requests in flight.
    let connection = runtime.registry.admit();
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(connection.shutdown_signal())
            .await;
        if let Err(err) = served {
            error!(error = %err, "the web listener stopped");
        }
        drop(connection);
    });
    Ok(local)
}
