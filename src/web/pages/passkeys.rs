//! Passkeys on the pages: the card on the 2-Step page (list, add, remove), the
//! "Use a passkey" button at the second step, and the JSON calls the script
//! (`/passkey.js`, served as a file: the CSP allows no inline script) makes
//! around `navigator.credentials.create` and `.get`.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{UserSession, error_page, fmt_time, post_button, sentence};
use crate::policy::Proof;
use crate::web::ops::{CodeOutcome, WebError};
use crate::web::passkeys::{self, Begun, MAX_NAME_CHARS};
use crate::web::session::Auth;
use crate::web::trusted;
use crate::web::{Current, SessionCookie, WebState, with_cookie};

const SCRIPT: &str = include_str!("passkey.js");

pub async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        SCRIPT,
    )
        .into_response()
}

fn json_error(err: &WebError) -> Response {
    (
        err.status(),
        Json(json!({ "error": sentence(&err.to_string()) })),
    )
        .into_response()
}

fn begun(begun: Begun) -> Response {
    Json(json!({ "ceremony": begun.ceremony, "options": begun.options })).into_response()
}

/// The passkeys card of the 2-Step page.
pub async fn card(state: &WebState, user: &UserSession) -> Markup {
    let list = passkeys::list(state, &user.address)
        .await
        .unwrap_or_default();
    let removable = passkeys::removable(state, &user.address)
        .await
        .unwrap_or(false);
    let unavailable = state.webauthn.as_ref().err();
    html! {
        div.card #passkeys {
            h2 { "Passkeys" }
            p { "A passkey (your phone, your computer's fingerprint or face unlock, or a security key) can be your second step instead of a code." }
            @if !list.is_empty() {
                ul {
                    @for p in &list {
                        li {
                            strong.passkey-name { (p.name) }
                            span.muted { ", added " (fmt_time(Some(p.created_at))) ", last used " (fmt_time(p.last_used_at)) " " }
                            @if removable {
                                (post_button(&format!("/account/passkeys/{}/remove", p.id), &user.csrf, "Remove", "link"))
                            }
                        }
                    }
                }
                @if !removable {
                    p.muted { "Your domain requires 2-Step Authentication: add another passkey or an authenticator app before removing your last one." }
                }
            }
            p.error role="alert" hidden data-passkey-error {}
            @if let Some(why) = unavailable {
                p.muted { (sentence(why)) }
            } @else {
                form #passkey-add data-passkey="register" data-begin="/account/passkeys/begin" data-finish="/account/passkeys/finish" {
                    input type="hidden" name="csrf" value=(user.csrf);
                    label for="passkey_name" { "Name of the new passkey" }
                    input #passkey_name type="text" name="name" maxlength=(MAX_NAME_CHARS) placeholder="laptop, phone, security key" required;
                    button type="submit" { "Add a passkey" }
                }
                noscript { p.muted { "Adding a passkey needs JavaScript." } }
                script src="/passkey.js" defer {}
            }
        }
    }
}

/// The second step's "Use a passkey" button, for a user who has one.
pub fn login_button(csrf: &str) -> Markup {
    html! {
        form #passkey-login data-passkey="login" data-begin="/login/passkey/begin" data-finish="/login/passkey/finish" {
            input type="hidden" name="csrf" value=(csrf);
            p.error role="alert" hidden data-passkey-error {}
            button type="submit" { "Use a passkey" }
        }
        script src="/passkey.js" defer {}
    }
}

/// The user at the second step has a passkey (a lookup error: no button).
pub async fn has_passkey(state: &WebState, address: &str) -> bool {
    passkeys::list(state, address)
        .await
        .is_ok_and(|l| !l.is_empty())
}

pub async fn register_begin(State(state): State<WebState>, user: UserSession) -> Response {
    match passkeys::begin_registration(&state, &user.who()).await {
        Ok(b) => begun(b),
        Err(err) => json_error(&err),
    }
}

#[derive(Deserialize)]
pub struct Finish {
    ceremony: String,
    #[serde(default)]
    name: String,
    credential: Value,
    /// At sign-in: "Don't ask again on this browser for 30 days" was ticked.
    #[serde(default)]
    remember: bool,
}

pub async fn register_finish(
    State(state): State<WebState>,
    user: UserSession,
    Json(body): Json<Finish>,
) -> Response {
    match passkeys::finish_registration(
        &state,
        &user.who(),
        &body.ceremony,
        &body.name,
        &body.credential,
    )
    .await
    {
        Ok(_) => Json(json!({ "redirect": "/account/two-step" })).into_response(),
        Err(err) => json_error(&err),
    }
}

pub async fn remove(
    State(state): State<WebState>,
    user: UserSession,
    Path(id): Path<i64>,
) -> Response {
    match passkeys::remove(&state, &user.who(), id).await {
        Ok(()) => Redirect::to("/account/two-step#passkeys").into_response(),
        Err(err) => error_page(&err),
    }
}

/// `(session id, address)` of a session whose second step is due.
fn second_step(current: &Current) -> Option<(String, String)> {
    let (id, session) = current.session.as_ref()?;
    match &session.auth {
        Auth::SecondStep { address, .. } => Some((id.clone(), address.clone())),
        _ => None,
    }
}

fn not_at_second_step() -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({ "error": "Sign in with your address and password first." })),
    )
        .into_response()
}

pub async fn login_begin(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> Response {
    let Some((_, address)) = second_step(&current) else {
        return not_at_second_step();
    };
    match passkeys::begin_login(&state, &address).await {
        Ok(b) => begun(b),
        Err(err) => json_error(&err),
    }
}

pub async fn login_finish(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    Json(body): Json<Finish>,
) -> Response {
    let Some((id, address)) = second_step(&current) else {
        return not_at_second_step();
    };
    let ip = current.ip_string();
    let outcome = passkeys::finish_login(
        &state,
        &address,
        &id,
        &body.ceremony,
        &body.credential,
        ip.as_deref(),
    )
    .await;
    match outcome {
        Ok(CodeOutcome::Accepted) => {
            let trust = match body.remember {
                true => trusted::trust_this_browser(&state, &current, &address).await,
                false => None,
            };
            let (new_id, _) = state.sessions.rotate_proved(
                &id,
                Auth::User {
                    address,
                    impersonator: None,
                },
                Proof::SecondFactor,
            ).await;
            trusted::attach(
                trust,
                with_cookie(
                    SessionCookie::Set(new_id),
                    Json(json!({ "redirect": "/account" })),
                ),
            )
        }
        Ok(CodeOutcome::Locked) => (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({ "error": "Too many failed attempts. Wait 15 minutes, then try again." })),
        )
            .into_response(),
        Ok(_) => (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "That passkey was not accepted, or the request expired. Try again." })),
        )
            .into_response(),
        Err(err) => json_error(&err),
    }
}
