//! The user login: address and primary password, then the second step or the
//! forced enrollment, each on its own page with the session id rotated between.

use axum::Extension;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::{error_page, grouped, page, post_button, qr_svg, sentence};
use crate::web::ops::{self, CodeOutcome, PasswordOutcome};
use crate::web::recovery;
use crate::web::session::Auth;
use crate::web::{Current, SessionCookie, WebState, with_cookie};

/// The session of this request, or a fresh anonymous one (with its cookie).
fn csrf_or_new(state: &WebState, current: &Current) -> (String, Option<SessionCookie>) {
    match &current.session {
        Some((_, session)) => (session.csrf.clone(), None),
        None => {
            let (id, session) = state.sessions.create(Auth::Anonymous);
            (session.csrf, Some(SessionCookie::Set(id)))
        }
    }
}

fn login_page(csrf: &str, error: Option<&str>, address: &str) -> Markup {
    page(
        "Sign in",
        html! {},
        html! {
            div.card {
                @if let Some(error) = error { p.error role="alert" { (error) } }
                form method="post" action="/login" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="address" { "E-mail address" }
                    input #address type="email" name="address" value=(address) autocomplete="username" required autofocus;
                    label for="password" { "Password" }
                    input #password type="password" name="password" autocomplete="current-password" required;
                    button type="submit" { "Sign in" }
                }
            }
            p.muted { "System administrators: " a href="/admin/login" { "sign in here" } "." }
        },
    )
}

pub async fn form(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> Response {
    if let Some((_, s)) = &current.session
        && !matches!(s.auth, Auth::Anonymous)
    {
        return Redirect::to("/").into_response();
    }
    let (csrf, cookie) = csrf_or_new(&state, &current);
    let body = login_page(&csrf, None, "");
    match cookie {
        Some(cookie) => with_cookie(cookie, body),
        None => body.into_response(),
    }
}

#[derive(Deserialize)]
pub struct PasswordForm {
    address: String,
    password: String,
}

pub async fn password(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    Form(form): Form<PasswordForm>,
) -> Response {
    let Some((id, session)) = &current.session else {
        return Redirect::to("/login").into_response();
    };
    match ops::password_step(&state, &form.address, &form.password, current.client).await {
        Ok(PasswordOutcome::Wrong) => (
            StatusCode::UNAUTHORIZED,
            login_page(
                &session.csrf,
                Some("Wrong address or password."),
                &form.address,
            ),
        )
            .into_response(),
        Ok(PasswordOutcome::Next(auth)) => {
            let next = match &auth {
                Auth::SecondStep { .. } => "/login/code",
                Auth::MustEnroll { .. } => "/login/enroll",
                _ => "/account",
            };
            let (new_id, _) = state.sessions.rotate(id, auth);
            with_cookie(SessionCookie::Set(new_id), Redirect::to(next))
        }
        Err(err) => error_page(&err),
    }
}

fn pending_address(current: &Current, want_second_step: bool) -> Option<(String, String, String)> {
    let (id, session) = current.session.as_ref()?;
    match (&session.auth, want_second_step) {
        (Auth::SecondStep { address }, true) | (Auth::MustEnroll { address }, false) => {
            Some((id.clone(), session.csrf.clone(), address.clone()))
        }
        _ => None,
    }
}

/// What the second-step page says besides the form.
#[derive(Default)]
struct CodeNotes<'a> {
    error: Option<&'a str>,
    /// The masked recovery address, when the user has one.
    recovery: Option<&'a str>,
    /// A code was just sent to the recovery address.
    sent: bool,
}

fn code_page(csrf: &str, address: &str, notes: CodeNotes<'_>) -> Markup {
    page(
        "2-Step Authentication",
        html! { nav { (post_button("/logout", csrf, "Cancel", "link")) } },
        html! {
            div.card {
                p { "Signing in as " strong { (address) } "." }
                @if let Some(error) = notes.error { p.error role="alert" { (error) } }
                @if let (true, Some(to)) = (notes.sent, notes.recovery) {
                    p.ok role="status" { "We sent a code to " strong { (to) } ". It is valid for 10 minutes." }
                }
                form method="post" action="/login/code" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="code" {
                        @if notes.recovery.is_some() {
                            "Code from your authenticator app or your recovery e-mail, or a backup code"
                        } @else {
                            "Code from your authenticator app, or a backup code"
                        }
                    }
                    input #code type="text" name="code" inputmode="numeric" autocomplete="one-time-code" required autofocus;
                    button type="submit" { "Verify" }
                }
                @if let Some(to) = notes.recovery {
                    (post_button("/login/email", csrf, &format!("Send a code to my recovery e-mail ({to})"), "link"))
                }
            }
        },
    )
}

/// The masked confirmed recovery address of a user; `None` also when it cannot be
/// looked up (the page then just does not offer it).
async fn recovery_of(state: &WebState, address: &str) -> Option<String> {
    recovery::confirmed_recovery(state, address)
        .await
        .ok()
        .flatten()
}

pub async fn code_form(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> Response {
    match pending_address(&current, true) {
        Some((_, csrf, address)) => {
            let recovery = recovery_of(&state, &address).await;
            let notes = CodeNotes {
                recovery: recovery.as_deref(),
                ..CodeNotes::default()
            };
            code_page(&csrf, &address, notes).into_response()
        }
        None => Redirect::to("/").into_response(),
    }
}

/// Sends a code to the recovery address; the session id rotates.
pub async fn email_code(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> Response {
    let Some((id, csrf, address)) = pending_address(&current, true) else {
        return Redirect::to("/").into_response();
    };
    let ip = current.ip_string();
    match recovery::send_login_code(&state, &address, ip.as_deref()).await {
        Ok(masked) => {
            let (new_id, session) = state.sessions.rotate(
                &id,
                Auth::SecondStep {
                    address: address.clone(),
                },
            );
            let notes = CodeNotes {
                recovery: Some(&masked),
                sent: true,
                ..CodeNotes::default()
            };
            with_cookie(
                SessionCookie::Set(new_id),
                code_page(&session.csrf, &address, notes),
            )
        }
        Err(err) => {
            let recovery = recovery_of(&state, &address).await;
            let message = sentence(&err.to_string());
            let notes = CodeNotes {
                error: Some(&message),
                recovery: recovery.as_deref(),
                ..CodeNotes::default()
            };
            (err.status(), code_page(&csrf, &address, notes)).into_response()
        }
    }
}

#[derive(Deserialize)]
pub struct CodeForm {
    code: String,
}

pub async fn code(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    Form(form): Form<CodeForm>,
) -> Response {
    let Some((id, csrf, address)) = pending_address(&current, true) else {
        return Redirect::to("/").into_response();
    };
    let ip = current.ip_string();
    match ops::second_step(&state, &address, &id, &form.code, ip.as_deref()).await {
        Ok(CodeOutcome::Accepted) => {
            let (new_id, _) = state.sessions.rotate(
                &id,
                Auth::User {
                    address,
                    impersonator: None,
                },
            );
            with_cookie(SessionCookie::Set(new_id), Redirect::to("/account"))
        }
        Ok(outcome) => {
            let message = match outcome {
                CodeOutcome::Replayed => "That code was already used. Wait for the next one.",
                CodeOutcome::Expired => {
                    "That e-mail code has expired or was already used. Send a new one."
                }
                CodeOutcome::Locked => "Too many wrong codes. Wait 15 minutes, then try again.",
                _ => "That code is not right. Check the time on your phone.",
            };
            let recovery = recovery_of(&state, &address).await;
            let notes = CodeNotes {
                error: Some(message),
                recovery: recovery.as_deref(),
                ..CodeNotes::default()
            };
            (StatusCode::UNAUTHORIZED, code_page(&csrf, &address, notes)).into_response()
        }
        Err(err) => error_page(&err),
    }
}

/// The TOTP enrollment card, shared by the forced enrollment and the account page.
pub fn enroll_card(
    csrf: &str,
    action: &str,
    pending: &ops::PendingTotp,
    error: Option<&str>,
) -> Markup {
    html! {
        div.card {
            h2 { "Set up an authenticator app" }
            ol {
                li { "Open an authenticator app (Google Authenticator, Microsoft Authenticator, FreeOTP, …)." }
                li { "Scan this QR code, or enter the key by hand." }
                li { "Type the 6-digit code the app shows." }
            }
            (qr_svg(&pending.otpauth))
            p { "Key: " span.secret { (grouped(&pending.secret)) } }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form method="post" action=(action) {
                input type="hidden" name="csrf" value=(csrf);
                label for="code" { "Code from the app" }
                input #code type="text" name="code" inputmode="numeric" autocomplete="one-time-code" required;
                button type="submit" { "Turn on 2-Step Authentication" }
            }
        }
    }
}

async fn enroll_page(state: &WebState, csrf: &str, address: &str, error: Option<&str>) -> Response {
    let actor = ops::user_actor(address, None);
    match ops::pending_totp(state, address, &actor).await {
        Ok(pending) => page(
            "Set up 2-Step Authentication",
            html! { nav { (post_button("/logout", csrf, "Cancel", "link")) } },
            html! {
                p { "Your domain requires 2-Step Authentication. Set it up to continue." }
                (enroll_card(csrf, "/login/enroll", &pending, error))
            },
        )
        .into_response(),
        Err(err) => error_page(&err),
    }
}

pub async fn enroll_form(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> Response {
    match pending_address(&current, false) {
        Some((_, csrf, address)) => enroll_page(&state, &csrf, &address, None).await,
        None => Redirect::to("/").into_response(),
    }
}

pub async fn enroll(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    Form(form): Form<CodeForm>,
) -> Response {
    let Some((id, csrf, address)) = pending_address(&current, false) else {
        return Redirect::to("/").into_response();
    };
    let actor = ops::user_actor(&address, None);
    match ops::confirm_totp(&state, &address, &form.code, &actor).await {
        Ok(true) => {
            let (new_id, _) = state.sessions.rotate(
                &id,
                Auth::User {
                    address,
                    impersonator: None,
                },
            );
            with_cookie(
                SessionCookie::Set(new_id),
                Redirect::to("/account/two-step"),
            )
        }
        Ok(false) => {
            enroll_page(
                &state,
                &csrf,
                &address,
                Some("That code is not right; try the next one."),
            )
            .await
        }
        Err(err) => error_page(&err),
    }
}

pub async fn logout(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> Response {
    let target = match &current.session {
        Some((id, session)) => {
            state.sessions.remove(id);
            if matches!(session.auth, Auth::Sysadmin { .. }) {
                "/admin/login"
            } else {
                "/login"
            }
        }
        None => "/login",
    };
    with_cookie(SessionCookie::Clear, Redirect::to(target))
}
