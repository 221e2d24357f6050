//! The user login: address and primary password, then the second step or the
//! forced enrollment, each on its own page with the session id rotated between.

use axum::Extension;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::EnrollingSession;
use super::{error_page, grouped, page, post_button, qr_svg, sentence};
use crate::policy::{Proof, WebLoginStep};
use crate::web::ops::{self, CodeOutcome, PasswordOutcome, WebError};
use crate::web::recovery::{self, ConfirmOutcome, RecoveryAddress};
use crate::web::session::Auth;
use crate::web::trusted;
use crate::web::{Current, SessionCookie, WebState, with_cookie};

/// The session of this request, or a fresh anonymous one (with its cookie).
async fn csrf_or_new(state: &WebState, current: &Current) -> (String, Option<SessionCookie>) {
    match &current.session {
        Some((_, session)) => (session.csrf.clone(), None),
        None => {
            let (id, session) = state.sessions.create(Auth::Anonymous).await;
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
    let (csrf, cookie) = csrf_or_new(&state, &current).await;
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
    let trusted = current.trusted.as_deref();
    match ops::password_step(
        &state,
        &form.address,
        &form.password,
        current.client,
        trusted,
    )
    .await
    {
        Ok(PasswordOutcome::Wrong) => (
            StatusCode::UNAUTHORIZED,
            login_page(
                &session.csrf,
                Some("Wrong address or password."),
                &form.address,
            ),
        )
            .into_response(),
        Ok(PasswordOutcome::Next { auth, step }) => {
            let next = match step {
                WebLoginStep::SecondStep => "/login/code",
                WebLoginStep::MustEnroll => "/login/enroll",
                WebLoginStep::Done | WebLoginStep::DoneMayEnroll => "/account",
            };
            let (new_id, _) = state
                .sessions
                .rotate_proved(id, auth, Proof::PrimaryPassword)
                .await;
            with_cookie(SessionCookie::Set(new_id), Redirect::to(next))
        }
        Err(err) => error_page(&err),
    }
}

/// `(session id, csrf, address)` of a session whose second step is due.
fn pending_address(current: &Current) -> Option<(String, String, String)> {
    let (id, session) = current.session.as_ref()?;
    match &session.auth {
        Auth::SecondStep { address, .. } => {
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
    /// The user has a passkey: offer it.
    passkey: bool,
    /// The domain lets browsers be trusted: offer "Don't ask again".
    remember: bool,
}

/// The second step's checkbox (see [`crate::web::trusted`]).
pub const REMEMBER: &str = "Don't ask again on this browser for 30 days";

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
                    // A backup code has letters: a full keyboard, nothing capitalised or
                    // corrected. Only digits are valid where the app's code alone is.
                    input #code type="text" name="code" inputmode="text" autocapitalize="off" autocorrect="off" spellcheck="false" autocomplete="one-time-code" required autofocus;
                    // Also read by /passkey.js for a sign-in with a passkey.
                    @if notes.remember {
                        label.check { input #remember type="checkbox" name="remember" value="on"; (REMEMBER) }
                    }
                    button type="submit" { "Verify" }
                }
                @if let Some(to) = notes.recovery {
                    (post_button("/login/email", csrf, &format!("Send a code to my recovery e-mail ({to})"), "link"))
                }
                @if notes.passkey { (super::passkeys::login_button(csrf)) }
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
    match pending_address(&current) {
        Some((_, csrf, address)) => {
            let recovery = recovery_of(&state, &address).await;
            let notes = CodeNotes {
                recovery: recovery.as_deref(),
                passkey: super::passkeys::has_passkey(&state, &address).await,
                remember: trusted::offered(&state, &address).await,
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
    let Some((id, csrf, address)) = pending_address(&current) else {
        return Redirect::to("/").into_response();
    };
    let ip = current.ip_string();
    match recovery::send_login_code(&state, &address, ip.as_deref()).await {
        Ok(masked) => {
            let (new_id, session) = state
                .sessions
                .rotate(
                    &id,
                    Auth::SecondStep {
                        address: address.clone(),
                        password_tag: current.password_tag(),
                    },
                )
                .await;
            let notes = CodeNotes {
                recovery: Some(&masked),
                sent: true,
                passkey: super::passkeys::has_passkey(&state, &address).await,
                remember: trusted::offered(&state, &address).await,
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
                passkey: super::passkeys::has_passkey(&state, &address).await,
                remember: trusted::offered(&state, &address).await,
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

/// The second step's form: the code, and "Don't ask again on this browser".
#[derive(Deserialize)]
pub struct SecondStepForm {
    code: String,
    remember: Option<String>,
}

pub async fn code(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    Form(form): Form<SecondStepForm>,
) -> Response {
    let Some((id, csrf, address)) = pending_address(&current) else {
        return Redirect::to("/").into_response();
    };
    let ip = current.ip_string();
    match ops::second_step(&state, &address, &id, &form.code, ip.as_deref()).await {
        Ok(CodeOutcome::Accepted) => {
            let (new_id, _, trust) = trusted::second_step_passed(
                &state,
                &current,
                &id,
                address,
                form.remember.is_some(),
            )
            .await;
            trusted::attach(
                trust,
                with_cookie(SessionCookie::Set(new_id), Redirect::to("/account")),
            )
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
                passkey: super::passkeys::has_passkey(&state, &address).await,
                remember: trusted::offered(&state, &address).await,
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

/// The recovery e-mail card: add an address, confirm it with the code sent to
/// it, or remove it. Its forms post to `base` (add), `base/confirm` and
/// `base/remove`. `notice` and `error` concern this card only.
pub fn recovery_card(
    csrf: &str,
    base: &str,
    recovery: Option<&RecoveryAddress>,
    removable: bool,
    notice: Option<&str>,
    error: Option<&str>,
) -> Markup {
    html! {
        div.card #recovery {
            h2 { "Recovery e-mail" }
            // A code just sent to the address being added: the card's own
            // "We sent a code" line says so (in the notice's colour), once.
            @let pending = recovery.is_some_and(|r| !r.confirmed);
            @if let (Some(notice), false) = (notice, pending) { p.ok role="status" { (notice) } }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            @match recovery {
                Some(r) if r.confirmed => {
                    p { "Codes for signing in can be sent to " strong { (r.masked) } "." }
                    @if removable {
                        (post_button(&format!("{base}/remove"), csrf, "Remove the recovery address", "danger"))
                    } @else {
                        p.muted { "Your domain requires 2-Step Authentication: set up an authenticator app before removing it." }
                    }
                }
                Some(r) => {
                    p.ok[notice.is_some()] role=[notice.map(|_| "status")] { "We sent a code to " strong { (r.masked) } ". Type it here to confirm the address; it is valid for 10 minutes." }
                    form method="post" action=(format!("{base}/confirm")) {
                        input type="hidden" name="csrf" value=(csrf);
                        label for="email_code" { "Code from the e-mail" }
                        input #email_code type="text" name="code" inputmode="numeric" autocomplete="one-time-code" required;
                        button type="submit" { "Confirm the recovery address" }
                    }
                    (post_button(&format!("{base}/remove"), csrf, "Cancel", "link"))
                    (recovery_form(csrf, base, "Use another address or send a new code"))
                }
                None => {
                    p { "A code sent to another e-mail address (not this mailbox) can be your second step when your phone is not at hand." }
                    (recovery_form(csrf, base, "Send a confirmation code"))
                }
            }
        }
    }
}

fn recovery_form(csrf: &str, base: &str, button: &str) -> Markup {
    html! {
        form method="post" action=(base) {
            input type="hidden" name="csrf" value=(csrf);
            label for="recovery_address" { "Recovery e-mail address" }
            input #recovery_address type="email" name="address" autocomplete="email" required;
            button type="submit" { (button) }
        }
    }
}

/// What a refused recovery address confirmation tells the user.
pub fn confirm_refusal(outcome: ConfirmOutcome) -> String {
    match outcome {
        ConfirmOutcome::Wrong { left } if left > 0 => {
            format!("That code is not right; {left} more tries before it is void.")
        }
        ConfirmOutcome::Wrong { .. } => {
            "That code is not right, and it is now void. Send a new one.".to_owned()
        }
        ConfirmOutcome::Void | ConfirmOutcome::Accepted => {
            "That code has expired, was used, or had too many wrong tries. Send a new one."
                .to_owned()
        }
    }
}

/// Messages for the forced-enrollment page: `error` for the authenticator card,
/// the others for the recovery e-mail card.
#[derive(Default)]
struct EnrollNotes<'a> {
    error: Option<&'a str>,
    recovery_notice: Option<&'a str>,
    recovery_error: Option<&'a str>,
}

async fn enroll_page(
    state: &WebState,
    user: &EnrollingSession,
    notes: EnrollNotes<'_>,
    status: StatusCode,
) -> Response {
    let who = user.who();
    let (csrf, address) = (user.csrf.as_str(), user.address.as_str());
    let recovery = match ops::user_context(state, address).await {
        Ok((_, user)) => match recovery::recovery_address(state, user.id).await {
            Ok(r) => r,
            Err(err) => return error_page(&err),
        },
        Err(err) => return error_page(&err),
    };
    match ops::pending_totp(state, &who).await {
        Ok(pending) => (
            status,
            page(
                "Set up 2-Step Authentication",
                html! { nav { (post_button("/logout", csrf, "Cancel", "link")) } },
                html! {
                    p { "Your domain requires 2-Step Authentication. Set it up to continue: an authenticator app, a passkey, or a recovery e-mail address." }
                    (enroll_card(csrf, "/login/enroll", &pending, notes.error))
                    (super::passkeys::enroll_card(state, csrf))
                    (recovery_card(csrf, "/login/enroll/email", recovery.as_ref(), true, notes.recovery_notice, notes.recovery_error))
                },
            ),
        )
            .into_response(),
        Err(err) => error_page(&err),
    }
}

pub async fn enroll_form(State(state): State<WebState>, user: EnrollingSession) -> Response {
    enroll_page(&state, &user, EnrollNotes::default(), StatusCode::OK).await
}

/// The forced enrollment is done: the policy now gives the session full access,
/// and its id changes with the privilege.
async fn enrolled(state: &WebState, id: &str, address: String) -> Response {
    // Confirming the factor proved the second step, as a sign-in code does.
    let (new_id, _) = state
        .sessions
        .rotate_proved(
            id,
            Auth::User {
                address,
                impersonator: None,
            },
            Proof::SecondFactor,
        )
        .await;
    with_cookie(
        SessionCookie::Set(new_id),
        Redirect::to("/account/two-step"),
    )
}

pub async fn enroll(
    State(state): State<WebState>,
    user: EnrollingSession,
    Form(form): Form<CodeForm>,
) -> Response {
    match ops::confirm_totp(&state, &user.who(), &form.code).await {
        Ok(true) => enrolled(&state, &user.id, user.address).await,
        Ok(false) => {
            let notes = EnrollNotes {
                error: Some("That code is not right; try the next one."),
                ..EnrollNotes::default()
            };
            enroll_page(&state, &user, notes, StatusCode::OK).await
        }
        Err(err) => error_page(&err),
    }
}

#[derive(Deserialize)]
pub struct RecoveryForm {
    pub address: String,
}

/// Forced enrollment: adds a recovery address, which is mailed a code.
pub async fn enroll_email(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    user: EnrollingSession,
    Form(form): Form<RecoveryForm>,
) -> Response {
    let ip = current.ip_string();
    let added =
        recovery::add_recovery_address(&state, &user.who(), &form.address, ip.as_deref()).await;
    match added {
        Ok(masked) => {
            let notice = format!("We sent a code to {masked}.");
            let notes = EnrollNotes {
                recovery_notice: Some(&notice),
                ..EnrollNotes::default()
            };
            enroll_page(&state, &user, notes, StatusCode::OK).await
        }
        Err(err) => {
            let message = sentence(&err.to_string());
            let notes = EnrollNotes {
                recovery_error: Some(&message),
                ..EnrollNotes::default()
            };
            enroll_page(&state, &user, notes, err.status()).await
        }
    }
}

/// Forced enrollment: the code from the recovery e-mail completes it.
pub async fn enroll_email_confirm(
    State(state): State<WebState>,
    user: EnrollingSession,
    Form(form): Form<CodeForm>,
) -> Response {
    let confirmed = recovery::confirm_recovery_address(&state, &user.who(), &form.code).await;
    match confirmed {
        Ok(ConfirmOutcome::Accepted) => enrolled(&state, &user.id, user.address).await,
        Ok(outcome) => {
            let message = confirm_refusal(outcome);
            let notes = EnrollNotes {
                recovery_error: Some(&message),
                ..EnrollNotes::default()
            };
            enroll_page(&state, &user, notes, StatusCode::UNAUTHORIZED).await
        }
        Err(err) => error_page(&err),
    }
}

/// Forced enrollment: drops the recovery address being confirmed.
pub async fn enroll_email_remove(
    State(state): State<WebState>,
    user: EnrollingSession,
) -> Response {
    match recovery::remove_recovery_address(&state, &user.who()).await {
        Ok(()) | Err(WebError::NotFound) => Redirect::to("/login/enroll").into_response(),
        Err(err) => error_page(&err),
    }
}

pub async fn logout(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> Response {
    let target = match &current.session {
        Some((id, session)) => {
            state.sessions.remove(id).await;
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
