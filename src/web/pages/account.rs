//! Account pages of a logged-in user: overview, 2-Step Authentication, and
//! application passwords.

use axum::Extension;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::login::{confirm_refusal, enroll_card, recovery_card};
use super::{UserSession, error_page, fmt_time, page, post_button, sentence, user_nav};
use crate::policy::{DomainStatus, Proof, Protocol, REAUTH_WINDOW_SECS};
use crate::recovery_mail::mask_address;
use crate::rollout::format_date;
use crate::store::FactorKind;
use crate::web::ops::{self, CodeOutcome, ReauthOutcome, WebError};
use crate::web::recovery::{self, ConfirmOutcome};
use crate::web::trusted::{self, TrustedBrowserView};
use crate::web::{Current, SessionCookie, WebState, with_cookie};

async fn chrome(
    state: &WebState,
    user: &UserSession,
) -> Result<(Markup, bool, DomainStatus, bool), WebError> {
    let (nav, enrolled, status, domain_admin, _) = chrome_with_date(state, user).await?;
    Ok((nav, enrolled, status, domain_admin))
}

/// [`chrome`], and the date a scheduled Forced takes effect while it is ahead.
async fn chrome_with_date(
    state: &WebState,
    user: &UserSession,
) -> Result<(Markup, bool, DomainStatus, bool, Option<i64>), WebError> {
    let (domain, record) = ops::user_context(state, &user.address).await?;
    let status = ops::effective_status(domain.as_ref());
    let scheduled = domain
        .as_ref()
        .and_then(|d| d.policy().scheduled_forced(ops::unix_now()));
    Ok((
        user_nav(user, record.domain_admin),
        record.enrolled,
        status,
        record.domain_admin,
        scheduled,
    ))
}

fn status_text(status: DomainStatus, scheduled: Option<i64>) -> String {
    match (status, scheduled) {
        (DomainStatus::Forced, Some(at)) => {
            format!("required by your domain from {}", format_date(at))
        }
        (DomainStatus::Disabled, _) => "not available for your domain".into(),
        (DomainStatus::Enabled, _) => "available: you may turn it on".into(),
        (DomainStatus::Forced, None) => "required by your domain".into(),
    }
}

/// What a user without 2-Step is told while a switch to Forced is ahead.
fn rollout_notice(enrolled: bool, scheduled: Option<i64>) -> Markup {
    html! {
        @if let (false, Some(at)) = (enrolled, scheduled) {
            div.card #rollout {
                p.warning {
                    "Your domain requires 2-Step Authentication from " strong { (format_date(at)) } ". "
                    "Turn it on before then, and create an "
                    a href="/account/app-passwords" { "application password" }
                    " for each mail app: from that date your password no longer works in mail apps."
                }
            }
        }
    }
}

pub async fn overview(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    user: UserSession,
) -> Response {
    let (nav, enrolled, status, domain_admin, scheduled) =
        match chrome_with_date(&state, &user).await {
            Ok(c) => c,
            Err(err) => return error_page(&err),
        };
    let browsers = match trusted::list(&state, &user.address, &current).await {
        Ok(list) => list,
        Err(err) => return error_page(&err),
    };
    page(
        "Account",
        nav,
        html! {
            (rollout_notice(enrolled, scheduled))
            div.card {
                h2 { (user.address) }
                p { "2-Step Authentication: "
                    @if enrolled { span.ok { "on" } } @else { "off" }
                    " (" (status_text(status, scheduled)) ")." }
                p { a href="/account/two-step" { "Manage 2-Step Authentication" } }
                p { a href="/account/app-passwords" { "Application passwords for mail apps" } }
                @if domain_admin { p { a href="/domain" { "Domain settings" } } }
            }
            div.card {
                h2 { "Signed-in browsers" }
                p { "Signed in on a computer you no longer use, or lost a phone? "
                    "This signs every browser out of this account, this one included. "
                    "Mail apps keep working: revoke their application passwords for that." }
                (post_button("/account/sign-out-everywhere", &user.csrf, "Sign out everywhere", ""))
            }
            (trusted_browsers_card(&user.csrf, &browsers))
        },
    )
    .into_response()
}

/// The browsers that skip the second step ("Don't ask again on this browser").
fn trusted_browsers_card(csrf: &str, browsers: &[TrustedBrowserView]) -> Markup {
    html! {
        div.card.table #trusted-browsers {
            h2 { "Trusted browsers" }
            p { "These browsers sign in with your password alone, without the second step, until the date shown. "
                "Forget one you no longer use; changing your password forgets them all." }
            @if browsers.is_empty() { p.muted { "None." } } @else {
                table.stack {
                    thead { tr { th { "Browser" } th { "Trusted since" } th { "Last used" } th { "Until" } th {} } }
                    tbody {
                        @for b in browsers {
                            tr {
                                td data-label="Browser" {
                                    (b.browser)
                                    @if b.this_browser { " " span.ok { "(this browser)" } }
                                }
                                td data-label="Trusted since" { (fmt_time(Some(b.created_at))) }
                                td data-label="Last used" { (fmt_time(b.last_used_at)) }
                                td data-label="Until" { (fmt_time(Some(b.expires_at))) }
                                td { (post_button(&format!("/account/trusted-browsers/{}/forget", b.id), csrf, "Forget", "danger small")) }
                            }
                        }
                    }
                }
                (post_button("/account/trusted-browsers/forget-all", csrf, "Forget all browsers", "danger"))
            }
        }
    }
}

/// "Forget" one trusted browser: its next sign-in asks for the second step.
pub async fn forget_trusted_browser(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    user: UserSession,
    Path(id): Path<i64>,
) -> Response {
    match trusted::forget(&state, &user.who(), id, &current).await {
        Ok(cookie) => trusted::attach(
            cookie,
            Redirect::to("/account#trusted-browsers").into_response(),
        ),
        Err(err) => error_page(&err),
    }
}

/// "Forget all browsers".
pub async fn forget_all_trusted_browsers(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    user: UserSession,
) -> Response {
    match trusted::forget_all(&state, &user.who(), &current).await {
        Ok((_, cookie)) => trusted::attach(
            cookie,
            Redirect::to("/account#trusted-browsers").into_response(),
        ),
        Err(err) => error_page(&err),
    }
}

/// "Sign out everywhere": ends every web session of the user, this one
/// included, on every node at once (the rows are gone from the store).
pub async fn sign_out_everywhere(State(state): State<WebState>, user: UserSession) -> Response {
    match state.sessions.end_all(&user.address, &user.actor()).await {
        Ok(_) => with_cookie(SessionCookie::Clear, Redirect::to("/login")),
        Err(err) => error_page(&WebError::Store(err)),
    }
}

fn backup_codes_card(csrf: &str) -> Markup {
    html! {
        div.card {
            h2 { "Backup codes" }
            p { "Ten single-use codes for when your phone is not at hand. Creating new ones voids the old ones." }
            (post_button("/account/two-step/backup-codes", csrf, "Create backup codes", ""))
        }
    }
}

/// Messages for the 2-Step page: `error` for the authenticator card, the
/// others for the recovery e-mail card.
#[derive(Default)]
struct TwoStepNotes<'a> {
    error: Option<&'a str>,
    recovery_notice: Option<&'a str>,
    recovery_error: Option<&'a str>,
}

async fn two_step_page(state: &WebState, user: &UserSession, error: Option<&str>) -> Response {
    let notes = TwoStepNotes {
        error,
        ..TwoStepNotes::default()
    };
    two_step_page_with(state, user, notes, StatusCode::BAD_REQUEST).await
}

async fn two_step_page_with(
    state: &WebState,
    user: &UserSession,
    notes: TwoStepNotes<'_>,
    error_status: StatusCode,
) -> Response {
    let error = notes.error;
    let (nav, enrolled, status, _, scheduled) = match chrome_with_date(state, user).await {
        Ok(c) => c,
        Err(err) => return error_page(&err),
    };
    let (recovery, other_factor) = match ops::user_context(state, &user.address).await {
        Ok((_, record)) => {
            let recovery = match recovery::recovery_address(state, record.id).await {
                Ok(r) => r,
                Err(err) => return error_page(&err),
            };
            let other = state
                .store
                .second_factors(record.id)
                .await
                .unwrap_or_default()
                .iter()
                .any(|f| f.kind != FactorKind::Email && f.confirmed)
                || super::passkeys::has_passkey(state, &user.address).await;
            (recovery, other)
        }
        Err(err) => return error_page(&err),
    };
    let removable = other_factor || status != DomainStatus::Forced;
    let recovery_html = recovery_card(
        &user.csrf,
        "/account/two-step/email",
        recovery.as_ref(),
        removable,
        notes.recovery_notice,
        notes.recovery_error,
    );
    let passkeys_html = super::passkeys::card(state, user).await;
    let body = if enrolled {
        let factors = match ops::user_context(state, &user.address).await {
            Ok((_, record)) => state
                .store
                .second_factors(record.id)
                .await
                .unwrap_or_default(),
            Err(err) => return error_page(&err),
        };
        // Enrolled through the recovery e-mail alone: offer the app as well.
        let add_app = if factors
            .iter()
            .any(|f| f.kind == FactorKind::Totp && f.confirmed)
        {
            None
        } else {
            // Refused while the domain is Disabled: then there is nothing to add.
            ops::pending_totp(state, &user.who()).await.ok()
        };
        html! {
            div.card {
                p.ok { "2-Step Authentication is on." }
                ul {
                    @for f in factors.iter().filter(|f| f.confirmed) {
                        li { @if f.kind == FactorKind::Totp { "Authenticator app" } @else { "Recovery e-mail " (mask_address(f.secret.expose())) }
                             span.muted { ", added " (fmt_time(Some(f.created_at))) } }
                    }
                }
                p.muted { "Mail apps now need an " a href="/account/app-passwords" { "application password" } "." }
            }
            @if let Some(pending) = &add_app {
                (enroll_card(&user.csrf, "/account/two-step/confirm", pending, error))
            }
            (passkeys_html)
            (recovery_html)
            (backup_codes_card(&user.csrf))
            @if status != DomainStatus::Forced {
                div.card {
                    h2 { "Turn off" }
                    p { "Removes your authenticator app, passkeys, recovery e-mail and backup codes, and forgets your trusted browsers." }
                    (post_button("/account/two-step/off", &user.csrf, "Turn off 2-Step Authentication", "danger"))
                }
            }
        }
    } else if status == DomainStatus::Disabled {
        html! { div.card { p { "Your administrator has not turned on 2-Step Authentication for your domain." } } }
    } else {
        match ops::pending_totp(state, &user.who()).await {
            Ok(pending) => html! {
                p { "2-Step Authentication is off. Once it is on, signing in here needs a code from your phone, and mail apps use application passwords." }
                (enroll_card(&user.csrf, "/account/two-step/confirm", &pending, error))
                (passkeys_html)
                (recovery_html)
            },
            Err(err @ WebError::NotForImpersonator) => html! {
                p { "2-Step Authentication is off for " (user.address) "." }
                p.muted { (sentence(&err.to_string())) }
            },
            Err(err) => return error_page(&err),
        }
    };
    let status_code = if error.is_some() || notes.recovery_error.is_some() {
        error_status
    } else {
        StatusCode::OK
    };
    let body = html! { (rollout_notice(enrolled, scheduled)) (body) };
    (status_code, page("2-Step Authentication", nav, body)).into_response()
}

pub async fn two_step(State(state): State<WebState>, user: UserSession) -> Response {
    two_step_page(&state, &user, None).await
}

#[derive(Deserialize)]
pub struct CodeForm {
    code: String,
}

pub async fn confirm(
    State(state): State<WebState>,
    user: UserSession,
    Form(form): Form<CodeForm>,
) -> Response {
    match ops::confirm_totp(&state, &user.who(), &form.code).await {
        Ok(true) => {
            // A code from the new factor is as good as one at sign-in.
            state
                .sessions
                .record_proof(&user.id, Proof::SecondFactor)
                .await;
            Redirect::to("/account/two-step").into_response()
        }
        Ok(false) => {
            two_step_page(
                &state,
                &user,
                Some("That code is not right; try the next one."),
            )
            .await
        }
        Err(err) => error_page(&err),
    }
}

/// Shows a failed recovery e-mail action on the 2-Step page, with its status.
async fn recovery_failed(state: &WebState, user: &UserSession, err: &WebError) -> Response {
    let message = sentence(&err.to_string());
    let notes = TwoStepNotes {
        recovery_error: Some(&message),
        ..TwoStepNotes::default()
    };
    two_step_page_with(state, user, notes, err.status()).await
}

pub async fn recovery_add(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    user: UserSession,
    Form(form): Form<super::login::RecoveryForm>,
) -> Response {
    let ip = current.ip_string();
    match recovery::add_recovery_address(&state, &user.who(), &form.address, ip.as_deref()).await {
        Ok(masked) => {
            let notice = format!("We sent a code to {masked}.");
            let notes = TwoStepNotes {
                recovery_notice: Some(&notice),
                ..TwoStepNotes::default()
            };
            two_step_page_with(&state, &user, notes, StatusCode::OK).await
        }
        Err(err) => recovery_failed(&state, &user, &err).await,
    }
}

pub async fn recovery_confirm(
    State(state): State<WebState>,
    user: UserSession,
    Form(form): Form<CodeForm>,
) -> Response {
    let message = match recovery::confirm_recovery_address(&state, &user.who(), &form.code).await {
        Ok(ConfirmOutcome::Accepted) => {
            state
                .sessions
                .record_proof(&user.id, Proof::SecondFactor)
                .await;
            return Redirect::to("/account/two-step").into_response();
        }
        Ok(outcome) => confirm_refusal(outcome),
        Err(err) => return recovery_failed(&state, &user, &err).await,
    };
    let notes = TwoStepNotes {
        recovery_error: Some(&message),
        ..TwoStepNotes::default()
    };
    two_step_page_with(&state, &user, notes, StatusCode::UNAUTHORIZED).await
}

pub async fn recovery_remove(State(state): State<WebState>, user: UserSession) -> Response {
    match recovery::remove_recovery_address(&state, &user.who()).await {
        Ok(()) => Redirect::to("/account/two-step").into_response(),
        Err(WebError::Reauthenticate(need)) => {
            reauth_page(
                &state,
                &user,
                need,
                "/account/two-step",
                ReauthNotes::default(),
            )
            .await
        }
        Err(err) => recovery_failed(&state, &user, &err).await,
    }
}

pub async fn backup_codes(State(state): State<WebState>, user: UserSession) -> Response {
    let codes = match ops::new_backup_codes(&state, &user.who()).await {
        Ok(codes) => codes,
        Err(err) => return refused(&state, &user, &err, "/account/two-step").await,
    };
    let (nav, ..) = match chrome(&state, &user).await {
        Ok(c) => c,
        Err(err) => return error_page(&err),
    };
    page(
        "Backup codes",
        nav,
        html! {
            div.card {
                p { "Write these down or print them now: they are shown only once. Each works once." }
                ul.codes { @for code in &codes { li { (code) } } }
                p { a href="/account/two-step" { "Done" } }
            }
        },
    )
    .into_response()
}

pub async fn off(State(state): State<WebState>, user: UserSession) -> Response {
    match ops::turn_off(&state, &user.who()).await {
        Ok(()) => Redirect::to("/account/two-step").into_response(),
        Err(err) => refused(&state, &user, &err, "/account/two-step").await,
    }
}

/// A sensitive action that did not happen: the re-authentication form when
/// that is why (it sends the user back to `next`), else the error.
async fn refused(state: &WebState, user: &UserSession, err: &WebError, next: &str) -> Response {
    match err {
        WebError::Reauthenticate(need) => {
            reauth_page(state, user, *need, next, ReauthNotes::default()).await
        }
        other => error_page(other),
    }
}

/// Where a re-authentication may send the browser back to: an account page.
pub(super) fn reauth_next(next: &str) -> &str {
    const PAGES: [&str; 2] = ["/account/two-step", "/account/app-passwords"];
    PAGES
        .into_iter()
        .find(|page| *page == next)
        .unwrap_or("/account")
}

/// "Confirm it is you": a code (an enrolled user) or the password (a user with
/// no second factor), then back to `next`. Shown with 403 in place of an action
/// the policy held back, nothing having been done.
async fn reauth_page(
    state: &WebState,
    user: &UserSession,
    need: Proof,
    next: &str,
    notes: ReauthNotes<'_>,
) -> Response {
    let error = notes.error;
    let (nav, ..) = match chrome(state, user).await {
        Ok(c) => c,
        Err(err) => return error_page(&err),
    };
    let recovery = match need {
        Proof::SecondFactor => recovery::confirmed_recovery(state, &user.address)
            .await
            .ok()
            .flatten(),
        Proof::PrimaryPassword => None,
    };
    let passkey = need == Proof::SecondFactor
        && state.webauthn.is_ok()
        && super::passkeys::has_passkey(state, &user.address).await;
    // A user whose only factor is a passkey has no code to type: the passkey
    // alone is offered (the code form stays when in doubt).
    let codes = !passkey || has_code(state, &user.address).await;
    let minutes = REAUTH_WINDOW_SECS / 60;
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::FORBIDDEN
    };
    let body = html! {
        div.card {
            p { "This changes how you, or your mail apps, sign in. Confirm it is you first; you will not be asked again for " (minutes) " minutes." }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            @if let Some(sent) = notes.sent { p.ok role="status" { "We sent a code to " strong { (sent) } ". It is valid for 10 minutes." } }
            @if passkey { (super::passkeys::reauth_button(&user.csrf, reauth_next(next))) }
            @if codes {
                form method="post" action="/account/reauthenticate" {
                    input type="hidden" name="csrf" value=(user.csrf);
                    input type="hidden" name="next" value=(reauth_next(next));
                    @match need {
                        Proof::SecondFactor => {
                            label for="secret" { "Code from your authenticator app, a backup code, or a code from your recovery e-mail" }
                            input #secret type="text" name="secret" autocomplete="one-time-code" required autofocus;
                        }
                        Proof::PrimaryPassword => {
                            label for="secret" { "Your password" }
                            input #secret type="password" name="secret" autocomplete="current-password" required autofocus;
                        }
                    }
                    button type="submit" { "Confirm" }
                }
            }
            @if let Some(to) = &recovery {
                form.inline method="post" action="/account/reauthenticate/email" {
                    input type="hidden" name="csrf" value=(user.csrf);
                    input type="hidden" name="next" value=(reauth_next(next));
                    button.link type="submit" { "Send a code to my recovery e-mail (" (to) ")" }
                }
            }
            p { a href=(reauth_next(next)) { "Cancel" } }
        }
    };
    (status, page("Confirm it is you", nav, body)).into_response()
}

/// Whether the user has something that gives a code: a confirmed app or
/// recovery address, or an unused backup code (true when it cannot be told).
async fn has_code(state: &WebState, address: &str) -> bool {
    let Ok((_, user)) = ops::user_context(state, address).await else {
        return true;
    };
    let factor = state
        .store
        .second_factors(user.id)
        .await
        .map_or(true, |f| f.iter().any(|f| f.confirmed));
    factor
        || state
            .store
            .backup_code_hashes(user.id)
            .await
            .map_or(true, |codes| !codes.is_empty())
}

/// What the re-authentication page says besides the form.
#[derive(Default)]
struct ReauthNotes<'a> {
    error: Option<&'a str>,
    /// A code was just mailed to this (masked) recovery address.
    sent: Option<&'a str>,
}

#[derive(Deserialize)]
pub struct NextForm {
    next: String,
}

/// Mails a code to the recovery address for the re-authentication page.
pub async fn reauth_email(
    State(state): State<WebState>,
    user: UserSession,
    Form(form): Form<NextForm>,
) -> Response {
    if user.impersonator.is_some() {
        return error_page(&WebError::NotForImpersonator);
    }
    let next = reauth_next(&form.next);
    let ip = user.ip.clone();
    match recovery::send_login_code(&state, &user.address, ip.as_deref()).await {
        Ok(masked) => {
            let notes = ReauthNotes {
                sent: Some(&masked),
                ..ReauthNotes::default()
            };
            reauth_page(&state, &user, Proof::SecondFactor, next, notes).await
        }
        Err(err) => {
            let message = sentence(&err.to_string());
            let notes = ReauthNotes {
                error: Some(&message),
                ..ReauthNotes::default()
            };
            reauth_page(&state, &user, Proof::SecondFactor, next, notes).await
        }
    }
}

#[derive(Deserialize)]
pub struct ReauthForm {
    secret: String,
    next: String,
}

pub async fn reauthenticate(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    user: UserSession,
    Form(form): Form<ReauthForm>,
) -> Response {
    let next = reauth_next(&form.next);
    match ops::reauthenticate(&state, &user.id, &user.who(), &form.secret, current.client).await {
        Ok(ReauthOutcome::Accepted(_)) => Redirect::to(next).into_response(),
        Ok(ReauthOutcome::Refused(outcome)) => {
            let (need, message) = match outcome {
                CodeOutcome::Locked => (
                    Proof::SecondFactor,
                    "Too many wrong codes. Wait 15 minutes, then try again.",
                ),
                CodeOutcome::Replayed => (
                    Proof::SecondFactor,
                    "That code was already used. Wait for the next one.",
                ),
                _ => match ops::user_context(&state, &user.address).await {
                    Ok((_, record)) if !record.enrolled => {
                        (Proof::PrimaryPassword, "That password is not right.")
                    }
                    Ok(_) => (Proof::SecondFactor, "That code is not right."),
                    Err(err) => return error_page(&err),
                },
            };
            let notes = ReauthNotes {
                error: Some(message),
                ..ReauthNotes::default()
            };
            reauth_page(&state, &user, need, next, notes).await
        }
        Err(err) => error_page(&err),
    }
}

fn create_form(user: &UserSession, error: Option<&str>) -> Markup {
    let csrf = user.csrf.as_str();
    if user.impersonator.is_some() {
        return html! {
            div.card {
                h2 { "New application password" }
                p.muted { (sentence(&WebError::NotForImpersonator.to_string())) }
            }
        };
    }
    html! {
        div.card {
            h2 { "New application password" }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form method="post" action="/account/app-passwords" {
                input type="hidden" name="csrf" value=(csrf);
                label for="name" { "Device or app name" }
                input #name type="text" name="name" maxlength="64" placeholder="Thunderbird at home" required;
                fieldset {
                    legend { "May be used for" }
                    label.check { input type="checkbox" name="imap" value="on" checked; "IMAP (read mail)" }
                    label.check { input type="checkbox" name="pop3" value="on" checked; "POP3 (download mail)" }
                    label.check { input type="checkbox" name="smtp" value="on" checked; "SMTP (send mail)" }
                }
                label for="expires_days" { "Expires after (days, empty: never)" }
                input #expires_days type="number" name="expires_days" min="1" max="3650";
                label for="networks" { "Only from these networks (optional)" }
                input #networks type="text" name="networks" maxlength="1000" placeholder="192.0.2.0/24, 2001:db8::/32" aria-describedby="networks-help";
                p.muted #networks-help { "IPv4 or IPv6 addresses or CIDR ranges, separated by commas. Empty: from anywhere. Useful for a desktop that never leaves the office." }
                button type="submit" { "Create" }
            }
        }
    }
}

async fn list_page(state: &WebState, user: &UserSession, error: Option<&str>) -> Response {
    let (nav, ..) = match chrome(state, user).await {
        Ok(c) => c,
        Err(err) => return error_page(&err),
    };
    let list = match ops::app_passwords(state, &user.address).await {
        Ok(list) => list,
        Err(err) => return error_page(&err),
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    (
        status,
        page(
            "Application passwords",
            nav,
            html! {
                p { "Mail apps (Thunderbird, Apple Mail, Outlook, phones) sign in with an application password instead of your password. Create one per device; revoke it when the device is lost." }
                (create_form(user, error))
                div.card.table {
                    h2 { "Your application passwords" }
                    @if list.is_empty() { p.muted { "None yet." } } @else {
                        table.stack {
                            thead { tr { th { "Name" } th { "Scopes" } th { "Networks" } th { "Created" } th { "Expires" } th { "Last used" } th {} } }
                            tbody {
                                @for p in &list {
                                    tr {
                                        td data-label="Name" { (p.name) }
                                        td data-label="Scopes" { (p.scopes) }
                                        td data-label="Networks" {
                                            @if p.networks.is_anywhere() { span.muted { "anywhere" } } @else { (p.networks.to_string().replace(',', ", ")) }
                                        }
                                        td data-label="Created" { (fmt_time(Some(p.created_at))) }
                                        td data-label="Expires" { (fmt_time(p.expires_at).replace("never", "—")) }
                                        td data-label="Last used" {
                                            (fmt_time(p.last_used_at))
                                            @if let Some(ip) = &p.last_used_ip { br; span.muted { (ip) } }
                                            @if let Some(proto) = &p.last_used_protocol { " " span.muted { (proto.to_uppercase()) } }
                                        }
                                        td { (post_button(&format!("/account/app-passwords/{}/revoke", p.id), &user.csrf, "Revoke", "danger small")) }
                                    }
                                }
                            }
                        }
                    }
                }
            },
        ),
    )
        .into_response()
}

pub async fn app_passwords(State(state): State<WebState>, user: UserSession) -> Response {
    list_page(&state, &user, None).await
}

#[derive(Deserialize)]
pub struct CreateForm {
    name: String,
    imap: Option<String>,
    pop3: Option<String>,
    smtp: Option<String>,
    expires_days: Option<String>,
    networks: Option<String>,
}

pub async fn create_app_password(
    State(state): State<WebState>,
    user: UserSession,
    headers: HeaderMap,
    Form(form): Form<CreateForm>,
) -> Response {
    let host = state
        .mail_host
        .clone()
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.rsplit_once(':').map_or(Some(h), |(name, _)| Some(name)))
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "this server's name".to_owned());
    let scopes = match ops::scopes_from(
        form.imap.is_some(),
        form.pop3.is_some(),
        form.smtp.is_some(),
    ) {
        Ok(scopes) => scopes,
        Err(err) => return list_page(&state, &user, Some(&err.to_string())).await,
    };
    let expires_days = match form
        .expires_days
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        None => None,
        Some(text) => match text.parse::<u32>() {
            Ok(days) => Some(days),
            Err(_) => return list_page(&state, &user, Some("expiry: a number of days")).await,
        },
    };
    let networks = match ops::networks_from(form.networks.as_deref().unwrap_or_default()) {
        Ok(networks) => networks,
        Err(err) => return list_page(&state, &user, Some(&err.to_string())).await,
    };
    let restricted = (!networks.is_anywhere()).then(|| networks.to_string().replace(',', ", "));
    let issued = match ops::create_app_password(
        &state,
        &user.who(),
        &form.name,
        scopes,
        expires_days,
        networks,
    )
    .await
    {
        Ok(issued) => issued,
        Err(WebError::BadRequest(msg)) => return list_page(&state, &user, Some(&msg)).await,
        Err(err) => return refused(&state, &user, &err, "/account/app-passwords").await,
    };
    let (nav, ..) = match chrome(&state, &user).await {
        Ok(c) => c,
        Err(err) => return error_page(&err),
    };
    let password = issued.password.display();
    let ports: Vec<String> = state
        .mail_ports
        .iter()
        .filter(|(p, ..)| scopes.contains(*p))
        .map(|(p, port, security)| {
            let name = match p {
                Protocol::Imap => "IMAP",
                Protocol::Pop3 => "POP3",
                Protocol::Smtp => "SMTP",
            };
            format!("{name}: port {port}, {security}")
        })
        .collect();
    page(
        "Your new application password",
        nav,
        html! {
            div.card {
                p { "For " strong { (form.name.trim()) } " (" (scopes) "). It is shown only this once: type it into the app now." }
                @if let Some(networks) = &restricted { p { "It works only from " strong { (networks) } "." } }
                p { span.secret { (password.expose()) } }
                p.muted { "Spaces, dashes and capital letters do not matter." }
            }
            div.card {
                h2 { "Setting up the app" }
                p { "Everywhere: server " strong { (host) } ", user name " strong { (user.address) } ", password: the application password above." }
                @if !ports.is_empty() { ul { @for line in &ports { li { (line) } } } }
                h3 { "Thunderbird" }
                p { "Account Settings → Server Settings: set the server, the user name and the security as above; when asked for a password, paste the application password and tick “Use Password Manager”." }
                h3 { "Apple Mail (macOS, iPhone, iPad)" }
                p { "Settings → Mail → Accounts → Add Account → Other → Add Mail Account: your address, and the application password as the password. Then set the incoming and outgoing server to the host above." }
                h3 { "Outlook" }
                p { "File → Add Account → Advanced options → Let me set up my account manually → IMAP (or POP): the servers and ports above, then the application password." }
                h3 { "Android and other phones" }
                p { "Add an “Other” / IMAP account, choose manual setup, and enter the server, your address as user name, and the application password." }
                p { a href="/account/app-passwords" { "Done" } }
            }
        },
    )
    .into_response()
}

/// The field a confirmation page adds: a single POST without it changes nothing.
#[derive(Deserialize)]
pub struct Confirmation {
    confirm: Option<String>,
}

impl Confirmation {
    pub fn given(&self) -> bool {
        self.confirm.as_deref() == Some("yes")
    }
}

pub async fn revoke_app_password(
    State(state): State<WebState>,
    user: UserSession,
    Path(id): Path<i64>,
    Form(confirmation): Form<Confirmation>,
) -> Response {
    if !confirmation.given() {
        let list = match ops::app_passwords(&state, &user.address).await {
            Ok(list) => list,
            Err(err) => return error_page(&err),
        };
        let Some(record) = list.iter().find(|p| p.id == id) else {
            return error_page(&WebError::NotFound);
        };
        let (nav, ..) = match chrome(&state, &user).await {
            Ok(c) => c,
            Err(err) => return error_page(&err),
        };
        let action = format!("/account/app-passwords/{id}/revoke");
        return page(
            "Revoke application password",
            nav,
            html! {
                div.card {
                    p { "Revoke " strong { (record.name) } "? Mail apps using it are disconnected at once and can no longer sign in with it. This cannot be undone." }
                    form method="post" action=(action) {
                        input type="hidden" name="csrf" value=(user.csrf);
                        input type="hidden" name="confirm" value="yes";
                        button.danger type="submit" { "Revoke " (record.name) }
                    }
                    p { a href="/account/app-passwords" { "Cancel" } }
                }
            },
        )
        .into_response();
    }
    match ops::revoke_app_password(&state, &user.address, id, &user.actor()).await {
        Ok(()) => Redirect::to("/account/app-passwords").into_response(),
        Err(err) => error_page(&err),
    }
}
