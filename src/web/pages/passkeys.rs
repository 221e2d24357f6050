//! Passkeys on the pages: the card on the 2-Step page (list, add, remove), the
//! card on the forced-enrollment page (a passkey as the first factor), the "Use
//! a passkey" buttons at the second step and on "Confirm it is you", and the
//! JSON calls the script
//! (`/passkey.js`, served as a file: the CSP allows no inline script) makes
//! around `navigator.credentials.create` and `.get`.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{EnrollingSession, UserSession, error_page, fmt_time, post_button, sentence};
use crate::policy::Proof;
use crate::web::ops::{CodeOutcome, ReauthOutcome, WebError};
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

/// The forced-enrollment page's passkey card: a passkey may be the first
/// factor. Nothing when passkeys cannot work here (no `public_url`): the page
/// offers the app and the recovery address.
pub fn enroll_card(state: &WebState, csrf: &str) -> Markup {
    if state.webauthn.is_err() {
        return html! {};
    }
    html! {
        div.card #passkeys {
            h2 { "Use a passkey" }
            p { "Your phone, your computer's fingerprint or face unlock, or a security key: nothing to type at the next sign-in." }
            p.error role="alert" hidden data-passkey-error {}
            form #passkey-add data-passkey="register" data-begin="/login/enroll/passkey/begin" data-finish="/login/enroll/passkey/finish" {
                input type="hidden" name="csrf" value=(csrf);
                label for="passkey_name" { "Name of the passkey" }
                input #passkey_name type="text" name="name" maxlength=(MAX_NAME_CHARS) placeholder="laptop, phone, security key" required;
                button type="submit" { "Add a passkey" }
            }
            noscript { p.muted { "Adding a passkey needs JavaScript." } }
            script src="/passkey.js" defer {}
        }
    }
}

/// "Confirm it is you" with a passkey; the script sends the browser back to
/// `next` (an account page) once it is accepted.
pub fn reauth_button(csrf: &str, next: &str) -> Markup {
    html! {
        form #passkey-reauth data-passkey="login" data-begin="/account/reauthenticate/passkey/begin" data-finish="/account/reauthenticate/passkey/finish" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="next" value=(next);
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
    /// Where "Confirm it is you" sends the browser back to.
    #[serde(default)]
    next: String,
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

/// Forced enrollment: begins adding a passkey as the first factor.
pub async fn enroll_begin(State(state): State<WebState>, user: EnrollingSession) -> Response {
    match passkeys::begin_registration(&state, &user.who()).await {
        Ok(b) => begun(b),
        Err(err) => json_error(&err),
    }
}

/// Forced enrollment: the new passkey completes it. As with a confirmed app,
/// the session now has full access and a fresh second-factor proof, under a
/// new id.
pub async fn enroll_finish(
    State(state): State<WebState>,
    user: EnrollingSession,
    Json(body): Json<Finish>,
) -> Response {
    let added = passkeys::finish_registration(
        &state,
        &user.who(),
        &body.ceremony,
        &body.name,
        &body.credential,
    )
    .await;
    match added {
        Ok(_) => {
            let auth = Auth::User {
                address: user.address,
                impersonator: None,
            };
            let (new_id, _) = state
                .sessions
                .rotate_proved(&user.id, auth, Proof::SecondFactor)
                .await;
            with_cookie(
                SessionCookie::Set(new_id),
                Json(json!({ "redirect": "/account/two-step" })),
            )
        }
        Err(err) => json_error(&err),
    }
}

/// "Confirm it is you": begins a passkey assertion.
pub async fn reauth_begin(State(state): State<WebState>, user: UserSession) -> Response {
    match passkeys::begin_reauth(&state, &user.who()).await {
        Ok(b) => begun(b),
        Err(err) => json_error(&err),
    }
}

/// "Confirm it is you": the passkey's answer, under the same attempt lock as
/// the codes; on success, back to the page the user came from.
pub async fn reauth_finish(
    State(state): State<WebState>,
    user: UserSession,
    Json(body): Json<Finish>,
) -> Response {
    let outcome = passkeys::reauthenticate(
        &state,
        &user.id,
        &user.who(),
        &body.ceremony,
        &body.credential,
    )
    .await;
    match outcome {
        Ok(ReauthOutcome::Accepted(_)) => {
            Json(json!({ "redirect": super::account::reauth_next(&body.next) })).into_response()
        }
        Ok(ReauthOutcome::Refused(CodeOutcome::Locked)) => locked(),
        Ok(ReauthOutcome::Refused(_)) => not_accepted(),
        Err(err) => json_error(&err),
    }
}

fn locked() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        Json(json!({ "error": "Too many failed attempts. Wait 15 minutes, then try again." })),
    )
        .into_response()
}

fn not_accepted() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(
            json!({ "error": "That passkey was not accepted, or the request expired. Try again." }),
        ),
    )
        .into_response()
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
            let (new_id, _, trust) =
                trusted::second_step_passed(&state, &current, &id, address, body.remember).await;
            trusted::attach(
                trust,
                with_cookie(
                    SessionCookie::Set(new_id),
                    Json(json!({ "redirect": "/account" })),
                ),
            )
        }
        Ok(CodeOutcome::Locked) => locked(),
        Ok(_) => not_accepted(),
        Err(err) => json_error(&err),
    }
}
