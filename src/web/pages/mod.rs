//! Server-rendered HTML (maud): no inline script (one script file, for passkeys),
//! one stylesheet route, forms that POST with the session's CSRF token.

mod account;
mod admin;
pub use admin::parse_since as admin_parse_since;
mod login;
mod passkeys;

use axum::Extension;
use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::ops::{self, WebError};
use super::session::Auth;
use super::{Current, Refusal, WebState};
use crate::policy::{Proof, WebAccess};
use crate::store::RemoteActor;

pub fn routes() -> Router<WebState> {
    Router::new()
        .route("/", get(home))
        .route("/style.css", get(stylesheet))
        .route("/passkey.js", get(passkeys::script))
        .route("/login/passkey/begin", post(passkeys::login_begin))
        .route("/login/passkey/finish", post(passkeys::login_finish))
        .route("/account/passkeys/begin", post(passkeys::register_begin))
        .route("/account/passkeys/finish", post(passkeys::register_finish))
        .route("/account/passkeys/{id}/remove", post(passkeys::remove))
        .route("/login/enroll/passkey/begin", post(passkeys::enroll_begin))
        .route(
            "/login/enroll/passkey/finish",
            post(passkeys::enroll_finish),
        )
        .route(
            "/account/reauthenticate/passkey/begin",
            post(passkeys::reauth_begin),
        )
        .route(
            "/account/reauthenticate/passkey/finish",
            post(passkeys::reauth_finish),
        )
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/login", get(login::form).post(login::password))
        .route("/login/code", get(login::code_form).post(login::code))
        .route("/login/email", post(login::email_code))
        .route("/login/enroll", get(login::enroll_form).post(login::enroll))
        .route("/login/enroll/email", post(login::enroll_email))
        .route(
            "/login/enroll/email/confirm",
            post(login::enroll_email_confirm),
        )
        .route(
            "/login/enroll/email/remove",
            post(login::enroll_email_remove),
        )
        .route("/logout", post(login::logout))
        .route("/account", get(account::overview))
        .route(
            "/account/sign-out-everywhere",
            post(account::sign_out_everywhere),
        )
        .route(
            "/account/trusted-browsers/{id}/forget",
            post(account::forget_trusted_browser),
        )
        .route(
            "/account/trusted-browsers/forget-all",
            post(account::forget_all_trusted_browsers),
        )
        .route("/account/two-step", get(account::two_step))
        .route("/account/two-step/confirm", post(account::confirm))
        .route(
            "/account/two-step/backup-codes",
            post(account::backup_codes),
        )
        .route("/account/two-step/off", post(account::off))
        .route("/account/reauthenticate", post(account::reauthenticate))
        .route("/account/reauthenticate/email", post(account::reauth_email))
        .route("/account/two-step/email", post(account::recovery_add))
        .route(
            "/account/two-step/email/confirm",
            post(account::recovery_confirm),
        )
        .route(
            "/account/two-step/email/remove",
            post(account::recovery_remove),
        )
        .route(
            "/account/app-passwords",
            get(account::app_passwords).post(account::create_app_password),
        )
        .route(
            "/account/app-passwords/{id}/revoke",
            post(account::revoke_app_password),
        )
        .route("/domain", get(admin::domain))
        .route("/domain/two-step", post(admin::domain_status))
        .route(
            "/domain/two-step/cancel",
            post(admin::domain_cancel_schedule),
        )
        .route(
            "/domain/trusted-browsers",
            post(admin::domain_trusted_browsers),
        )
        .route("/domain/notices", post(admin::domain_notices))
        .route("/domain/users/reset", post(admin::domain_reset))
        .route("/admin", get(admin::console))
        .route("/admin/login", get(admin::login_form).post(admin::login))
        .route(
            "/admin/password",
            get(admin::password_form).post(admin::change_password),
        )
        .route("/admin/domains", post(admin::add_domain))
        .route("/admin/domains/{name}", get(admin::domain_detail))
        .route("/admin/domains/{name}/feature", post(admin::feature))
        .route("/admin/domains/{name}/admins", post(admin::add_admin))
        .route("/admin/impersonate", post(admin::impersonate))
        .route("/admin/impersonate/stop", post(admin::stop_impersonating))
        .route("/admin/audit", get(admin::audit))
}

const CSS: &str = include_str!("style.css");

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

async fn home(State(state): State<WebState>, Extension(current): Extension<Current>) -> Response {
    match current.session.map(|(_, s)| s.auth) {
        Some(Auth::User {
            address,
            impersonator,
        }) => match ops::web_access(&state, &address, impersonator.is_some()).await {
            Ok(WebAccess::EnrollOnly) => Redirect::to("/login/enroll").into_response(),
            Ok(_) => Redirect::to("/account").into_response(),
            Err(err) => error_page(&err),
        },
        Some(Auth::Sysadmin { .. }) => Redirect::to("/admin").into_response(),
        Some(Auth::SecondStep { .. }) => Redirect::to("/login/code").into_response(),
        Some(Auth::Anonymous) | None => Redirect::to("/login").into_response(),
    }
}

/// A signed-in mail user (possibly impersonated) whose session may do everything
/// a user may: the policy said [`WebAccess::Full`] for this very request.
pub struct UserSession {
    pub id: String,
    pub csrf: String,
    pub address: String,
    pub impersonator: Option<String>,
    /// The session's last proof of who the user is (see `WebSession::proved`).
    pub proved: Option<(Proof, i64)>,
    /// The client's address, for the audit rows.
    pub ip: Option<String>,
}

impl UserSession {
    /// The audit actor, with the client's address.
    pub fn actor(&self) -> RemoteActor {
        self.who().actor()
    }

    /// Who asks, for the actions the policy guards.
    pub fn who(&self) -> ops::Requester<'_> {
        ops::Requester {
            address: &self.address,
            impersonator: self.impersonator.as_deref(),
            proved: self.proved,
            ip: self.ip.as_deref(),
        }
    }
}

/// A signed-in mail user whose domain forces 2-Step and who has none yet
/// ([`WebAccess::EnrollOnly`]): the enrollment pages are all it may reach.
pub struct EnrollingSession {
    pub id: String,
    pub csrf: String,
    pub address: String,
    pub ip: Option<String>,
}

impl EnrollingSession {
    /// Who asks: the user themselves (an impersonator is never bound to enroll).
    pub fn who(&self) -> ops::Requester<'_> {
        ops::Requester {
            address: &self.address,
            impersonator: None,
            proved: None,
            ip: self.ip.as_deref(),
        }
    }
}

/// A signed-in user's session and what the policy lets it do now, read from the
/// store for this request; `Err`: where a browser that is no signed-in user goes
/// (a half-logged-in session back to its pending step and nowhere else).
async fn signed_in(
    state: &WebState,
    current: Option<&Current>,
) -> Result<(UserSession, WebAccess), Response> {
    let Some((id, session)) = current.and_then(|c| c.session.as_ref()) else {
        return Err(Redirect::to("/login").into_response());
    };
    match &session.auth {
        Auth::User {
            address,
            impersonator,
        } => {
            let access = ops::web_access(state, address, impersonator.is_some())
                .await
                .map_err(|err| error_page(&err))?;
            let user = UserSession {
                id: id.clone(),
                csrf: session.csrf.clone(),
                address: address.clone(),
                impersonator: impersonator.clone(),
                proved: session.proved,
                ip: current.and_then(Current::ip_string),
            };
            Ok((user, access))
        }
        Auth::SecondStep { .. } => Err(Redirect::to("/login/code").into_response()),
        Auth::Anonymous | Auth::Sysadmin { .. } => Err(Redirect::to("/login").into_response()),
    }
}

/// A handler that takes a [`UserSession`] runs only for a signed-in mail user
/// the policy gives full access now; one who must enroll is sent to enroll, a
/// disabled account gets a refusal, anyone else is redirected to sign in.
impl FromRequestParts<WebState> for UserSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, Response> {
        match signed_in(state, parts.extensions.get::<Current>()).await? {
            (user, WebAccess::Full) => Ok(user),
            (_, WebAccess::EnrollOnly) => Err(Redirect::to("/login/enroll").into_response()),
            (_, WebAccess::Disabled) => Err(error_page(&WebError::Forbidden(
                ops::ACCOUNT_DISABLED.into(),
            ))),
        }
    }
}

/// A handler that takes an [`EnrollingSession`] runs only while the policy says
/// the user must enroll; anyone else goes home.
impl FromRequestParts<WebState> for EnrollingSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, Response> {
        match signed_in(state, parts.extensions.get::<Current>()).await {
            Ok((user, WebAccess::EnrollOnly)) => Ok(EnrollingSession {
                id: user.id,
                csrf: user.csrf,
                address: user.address,
                ip: user.ip,
            }),
            _ => Err(Redirect::to("/").into_response()),
        }
    }
}

/// A handler that takes an [`AdminSession`] runs only for a logged-in system
/// administrator; anyone else is sent to the administrators' login.
impl<S: Send + Sync> FromRequestParts<S> for AdminSession {
    type Rejection = Redirect;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Redirect> {
        match parts.extensions.get::<Current>() {
            Some(current) => require_sysadmin(current),
            None => Err(Redirect::to("/admin/login")),
        }
    }
}

/// A logged-in system administrator.
pub struct AdminSession {
    pub id: String,
    pub csrf: String,
    pub name: String,
    /// The client's address, for the audit rows.
    pub ip: Option<String>,
}

impl AdminSession {
    /// The audit actor, with the client's address.
    pub fn actor(&self) -> RemoteActor {
        RemoteActor {
            name: format!("sysadmin:{}", self.name),
            ip: self.ip.clone(),
        }
    }
}

pub fn require_sysadmin(current: &Current) -> Result<AdminSession, Redirect> {
    match &current.session {
        Some((id, session)) => match &session.auth {
            Auth::Sysadmin { name } => Ok(AdminSession {
                id: id.clone(),
                csrf: session.csrf.clone(),
                name: name.clone(),
                ip: current.ip_string(),
            }),
            _ => Err(Redirect::to("/admin/login")),
        },
        None => Err(Redirect::to("/admin/login")),
    }
}

/// The whole page around `body`.
pub fn page(title: &str, nav: Markup, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · postern" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header.top {
                    a.brand href="/" { "postern" }
                    (nav)
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A POST button carrying the CSRF token.
pub fn post_button(action: &str, csrf: &str, label: &str, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name="csrf" value=(csrf);
            button class=(class) type="submit" { (label) }
        }
    }
}

/// Navigation for a mail user, with the impersonation banner.
pub fn user_nav(user: &UserSession, domain_admin: bool) -> Markup {
    html! {
        nav {
            a href="/account" { "Account" }
            a href="/account/two-step" { "2-Step Authentication" }
            a href="/account/app-passwords" { "Application passwords" }
            @if domain_admin { a href="/domain" { "Domain settings" } }
            (post_button("/logout", &user.csrf, "Sign out", "link"))
        }
        @if let Some(name) = &user.impersonator {
            div.banner role="alert" {
                "You are " strong { (name) } ", acting as " strong { (user.address) } ". "
                (post_button("/admin/impersonate/stop", &user.csrf, "Stop impersonating", "link"))
            }
        }
    }
}

pub fn admin_nav(admin: &AdminSession) -> Markup {
    html! {
        nav {
            a href="/admin" { "Domains" }
            a href="/admin/audit" { "Audit log" }
            a href="/admin/password" { "Password" }
            span.who { (admin.name) }
            (post_button("/logout", &admin.csrf, "Sign out", "link"))
        }
    }
}

pub fn error_page(err: &WebError) -> Response {
    let body = html! {
        p.error { (err.to_string()) }
        p { a href="/" { "Back" } }
    };
    (err.status(), page("Something went wrong", html! {}, body)).into_response()
}

/// The page for a form the guard refused (see [`Refusal`]): what happened and a
/// link to go on, the sign-in page of the console the form belonged to.
pub fn refusal_page(path: &str, why: Refusal) -> Response {
    let admin = path == "/admin" || path.starts_with("/admin/");
    let sign_in = if admin { "/admin/login" } else { "/login" };
    let (title, body) = match why {
        Refusal::NoSession => (
            "Your session has ended",
            html! {
                div.card {
                    p { "You were signed out (after a while without activity, or from another browser with \"Sign out everywhere\") before this form was sent, so nothing was changed." }
                    p { a.button href=(sign_in) { "Sign in again" } }
                }
            },
        ),
        Refusal::WrongToken => (
            "This page is out of date",
            html! {
                div.card {
                    p { "This form belongs to an earlier session, so nothing was changed. Open the page again and repeat what you did." }
                    p { a.button href="/" { "Continue" } " " a href=(sign_in) { "Sign in" } }
                }
            },
        ),
        Refusal::TooLarge => (
            "Too much text",
            html! {
                div.card {
                    p { "What you sent is larger than postern accepts, so nothing was changed." }
                    p { a.button href="/" { "Continue" } }
                }
            },
        ),
    };
    (why.status(), page(title, html! {}, body)).into_response()
}

/// An error text as a sentence: capital first letter, full stop.
pub fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    let mut out: String = chars
        .next()
        .map(|c| c.to_uppercase().collect())
        .unwrap_or_default();
    out.push_str(chars.as_str());
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

/// Unix seconds as `2026-01-31 14:05 UTC`.
pub fn fmt_time(at: Option<i64>) -> String {
    let Some(at) = at else {
        return "never".into();
    };
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| at.to_string())
}

/// An inline SVG QR code (no script, no external image).
pub fn qr_svg(data: &str) -> Markup {
    use qrcode::QrCode;
    use qrcode::render::svg;
    match QrCode::new(data.as_bytes()) {
        Ok(code) => {
            let image = code
                .render::<svg::Color>()
                .min_dimensions(200, 200)
                .dark_color(svg::Color("#000000"))
                .light_color(svg::Color("#ffffff"))
                .build();
            let start = image.find("<svg").unwrap_or(0);
            html! { div.qr { (PreEscaped(&image[start..])) } }
        }
        Err(_) => html! { p { "(The QR code could not be drawn; type the key below.)" } },
    }
}

/// `ABCD EFGH ...`: easier to type into an app.
pub fn grouped(secret: &str) -> String {
    secret
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// 400/403 from a form, shown as a page.
pub fn status_page(status: StatusCode, title: &str, message: &str) -> Response {
    (
        status,
        page(
            title,
            html! {},
            html! { p.error { (message) } p { a href="/" { "Back" } } },
        ),
    )
        .into_response()
}
