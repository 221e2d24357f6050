//! The domain administrator's Domain Settings card and the system
//! administrator's console (domains, the feature switch, domain administrators,
//! impersonation, the audit log).

use axum::Extension;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::{AdminSession, UserSession, admin_nav, error_page, fmt_time, page, sentence, user_nav};
use crate::clock::unix_now;
use crate::notices::{NoticeKind, NoticeKinds};
use crate::policy::DomainStatus;
use crate::rollout::format_date;
use crate::store::{AuditFilter, RemoteActor};
use crate::web::ops::{self, WebError};
use crate::web::session::Auth;
use crate::web::sysadmin::{self, PasswordChange, SysadminLogin};
use crate::web::{Current, SessionCookie, WebState, with_cookie};

async fn domain_admin(
    state: &WebState,
    user: UserSession,
) -> Result<(UserSession, String), Box<Response>> {
    let domain = ops::administered_domain(state, &user.address)
        .await
        .map_err(|err| Box::new(error_page(&err)))?;
    Ok((user, domain))
}

pub async fn domain(State(state): State<WebState>, user: UserSession) -> Response {
    let (user, domain) = match domain_admin(&state, user).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let overview = match ops::domain_overview(&state, &domain).await {
        Ok(overview) => overview,
        Err(err) => return error_page(&err),
    };
    let d = &overview.domain;
    let status_label = |s: DomainStatus| match s {
        DomainStatus::Disabled => "Disabled",
        DomainStatus::Enabled => "Enabled",
        DomainStatus::Forced => "Forced",
    };
    page(
        &format!("Domain settings: {}", d.name),
        user_nav(&user, true),
        html! {
            div.card {
                h2 { "2-Step Authentication" }
                @if !d.feature {
                    p.muted { "The system administrator has not turned on 2-Step Authentication for this domain, so it is Disabled. Your choice below is kept and applies once it is turned on." }
                } @else if let Some(at) = overview.scheduled_forced {
                    p #effective { "Effective status: " strong { "Forced from " (format_date(at)) } }
                    p.muted { "Until then users without 2-Step Authentication keep their password in mail apps. postern e-mails each of them the date and the steps, and a reminder 3 days before; at that time it switches by itself." }
                    form.inline method="post" action="/domain/two-step/cancel" {
                        input type="hidden" name="csrf" value=(user.csrf);
                        button.small type="submit" { "Cancel the switch (back to Enabled)" }
                    }
                } @else {
                    p #effective { "Effective status: " strong { (status_label(d.policy().effective_status())) } }
                }
                p #enrollment { strong { (overview.counts.enrolled) } " user(s) have set up 2-Step Authentication; " strong { (overview.counts.not_enrolled) } " have not." }
                form method="post" action="/domain/two-step" {
                    input type="hidden" name="csrf" value=(user.csrf);
                    label for="status" { "Status" }
                    select #status name="status" disabled[!d.feature] {
                        @for s in [DomainStatus::Disabled, DomainStatus::Enabled, DomainStatus::Forced] {
                            option value=(s.as_str()) selected[d.status == s] { (status_label(s)) }
                        }
                    }
                    label for="forced_from" { "Forced from (a date, 00:00 UTC; empty: at once)" }
                    input #forced_from type="date" name="forced_from" min=(day_input(unix_now() + 86_400)) value=[overview.scheduled_forced.map(day_input)] disabled[!d.feature];
                    p.warning {
                        strong { "Forcing 2-Step Authentication disconnects third-party clients and devices" }
                        " that sign in with a password; users must set up 2-Step Authentication and create application passwords. Tell your users before you force it. "
                        "Right now " strong { (overview.primary_sessions) } " mail session(s) of this domain use a password and would be dropped for users who are not enrolled."
                    }
                    @if d.feature { button type="submit" { "Save" } }
                }
            }
            div.card #trusted-browsers {
                h2 { "Remember trusted browsers" }
                p { "At the second step users may tick “Don't ask again on this browser for 30 days”. "
                    "Not allowed: every sign-in asks for the second step, and every browser trusted so far is forgotten." }
                form method="post" action="/domain/trusted-browsers" {
                    input type="hidden" name="csrf" value=(user.csrf);
                    label for="trusted_browsers" { "Remember trusted browsers" }
                    select #trusted_browsers name="allowed" {
                        option value="on" selected[d.trusted_browsers] { "Allowed" }
                        option value="off" selected[!d.trusted_browsers] { "Not allowed" }
                    }
                    button type="submit" { "Save" }
                }
            }
            div.card {
                h2 { "Security notices" }
                p.muted { "postern e-mails a user (their mailbox and confirmed recovery address) when one of these happens to their account: what, when and from which address, never a password or code; at most 10 an hour per user. Untick a kind to stop sending it to this domain's users." }
                form method="post" action="/domain/notices" {
                    input type="hidden" name="csrf" value=(user.csrf);
                    @for kind in NoticeKind::ALL {
                        div {
                            label.check {
                                input type="checkbox" name=(kind.as_str()) value="on" checked[!d.notices_off.contains(kind)];
                                " " (kind.label())
                            }
                        }
                    }
                    button type="submit" { "Save notices" }
                }
            }
            div.card.table {
                h2 { "Users" }
                table.stack {
                    thead { tr { th { "Address" } th { "2-Step" } th { "App passwords" } th { "Last activity" } th {} } }
                    tbody {
                        @for u in &overview.users {
                            tr {
                                td data-label="Address" { (u.address) @if u.domain_admin { " " span.muted { "(admin)" } } @if u.disabled { " " span.error { "disabled" } } }
                                td data-label="2-Step" { @if u.enrolled { span.ok { "enrolled" } } @else { "not enrolled" } }
                                td data-label="App passwords" { (u.app_passwords) }
                                td data-label="Last activity" { (fmt_time(u.last_used_at)) }
                                td {
                                    form.inline method="post" action="/domain/users/reset" {
                                        input type="hidden" name="csrf" value=(user.csrf);
                                        input type="hidden" name="address" value=(u.address);
                                        button.danger.small type="submit" title="Removes the user's second factors, backup codes, application passwords and trusted browsers" { "Reset 2-Step" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
    .into_response()
}

/// `YYYY-MM-DD` of a time, for a date input.
fn day_input(at: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

#[derive(Deserialize)]
pub struct StatusForm {
    status: String,
    grace_days: Option<String>,
    /// With Forced: the date it takes effect (empty: at once).
    forced_from: Option<String>,
    /// `yes` from the confirmation page; forcing 2-Step without it changes nothing.
    confirm: Option<String>,
}

fn parse_days(text: Option<&str>) -> Result<Option<u32>, WebError> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => t
            .parse()
            .map(Some)
            .map_err(|_| WebError::BadRequest("days: a whole number".into())),
    }
}

pub async fn domain_status(
    State(state): State<WebState>,
    user: UserSession,
    Form(form): Form<StatusForm>,
) -> Response {
    let (user, domain) = match domain_admin(&state, user).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let status = match form.status.parse::<DomainStatus>() {
        Ok(status) => status,
        Err(msg) => return error_page(&WebError::BadRequest(msg)),
    };
    let days = match parse_days(form.grace_days.as_deref()) {
        Ok(days) => days,
        Err(err) => return error_page(&err),
    };
    let forced_from = form
        .forced_from
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty() && status == DomainStatus::Forced);
    // Checked before the confirmation, so a past date is said at once.
    let scheduled = match forced_from
        .map(|text| crate::rollout::parse_forced_from(text, unix_now()))
        .transpose()
    {
        Ok(at) => at,
        Err(msg) => return error_page(&WebError::BadRequest(msg)),
    };
    if status == DomainStatus::Forced && form.confirm.as_deref() != Some("yes") {
        let overview = match ops::domain_overview(&state, &domain).await {
            Ok(overview) => overview,
            Err(err) => return error_page(&err),
        };
        let not_enrolled = overview.counts.not_enrolled;
        let grace = days.map(|d| d.to_string()).unwrap_or_default();
        return page(
            &format!("Force 2-Step Authentication for {domain}?"),
            user_nav(&user, true),
            html! {
                div.card {
                    p.warning {
                        @if let Some(at) = scheduled {
                            strong { "From " (format_date(at)) }
                        } @else if grace.is_empty() {
                            strong { "At once" }
                        } @else {
                            strong { "After a grace period of " (grace) " days" }
                        }
                        ", users who have not set up 2-Step Authentication (" strong { (not_enrolled) } " known) can sign in to the web only to set it up, and their password stops working in mail apps: "
                        strong { (overview.primary_sessions) } " mail session(s) that use a password now would be dropped for them."
                    }
                    @if scheduled.is_some() {
                        p { "postern e-mails each of them the date and the steps now, and a reminder 3 days before." }
                    }
                    form method="post" action="/domain/two-step" {
                        input type="hidden" name="csrf" value=(user.csrf);
                        input type="hidden" name="status" value="forced";
                        input type="hidden" name="grace_days" value=(grace);
                        input type="hidden" name="forced_from" value=(forced_from.unwrap_or(""));
                        input type="hidden" name="confirm" value="yes";
                        button.danger type="submit" {
                            @if scheduled.is_some() { "Schedule Forced 2-Step Authentication" } @else { "Force 2-Step Authentication" }
                        }
                    }
                    p { a href="/domain" { "Cancel" } }
                }
            },
        )
        .into_response();
    }
    if let Some(text) = forced_from {
        return match ops::schedule_forced(&state, &domain, text, &user.actor()).await {
            Ok(_) => Redirect::to("/domain").into_response(),
            Err(err) => error_page(&err),
        };
    }
    match ops::set_domain_status(&state, &domain, status, days, &user.actor()).await {
        Ok(()) => Redirect::to("/domain").into_response(),
        Err(err) => error_page(&err),
    }
}

/// Cancels a scheduled switch to Forced still ahead.
pub async fn domain_cancel_schedule(State(state): State<WebState>, user: UserSession) -> Response {
    let (user, domain) = match domain_admin(&state, user).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    match ops::cancel_scheduled_forced(&state, &domain, &user.actor()).await {
        Ok(()) => Redirect::to("/domain").into_response(),
        Err(err) => error_page(&err),
    }
}

#[derive(Deserialize)]
pub struct TrustedBrowsersForm {
    /// `on` (allowed) or `off`.
    allowed: String,
}

/// "Remember trusted browsers: allowed / not allowed"; not allowed forgets
/// every trusted browser of the domain.
pub async fn domain_trusted_browsers(
    State(state): State<WebState>,
    user: UserSession,
    Form(form): Form<TrustedBrowsersForm>,
) -> Response {
    let (user, domain) = match domain_admin(&state, user).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let allowed = match form.allowed.as_str() {
        "on" => true,
        "off" => false,
        _ => return error_page(&WebError::BadRequest("allowed: on or off".into())),
    };
    match state
        .store
        .set_domain_trusted_browsers(&domain, allowed, &user.actor())
        .await
    {
        Ok(_) => Redirect::to("/domain#trusted-browsers").into_response(),
        Err(err) => error_page(&WebError::from(err)),
    }
}

/// The notices card: a ticked kind is sent, an unticked one is not (a form
/// sends only the ticked boxes).
pub async fn domain_notices(
    State(state): State<WebState>,
    user: UserSession,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let (user, domain) = match domain_admin(&state, user).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let off = NoticeKind::ALL
        .into_iter()
        .filter(|kind| !fields.iter().any(|(name, _)| name == kind.as_str()))
        .fold(NoticeKinds::NONE, NoticeKinds::with);
    match ops::set_domain_notices(&state, &domain, off, &user.actor()).await {
        Ok(()) => Redirect::to("/domain").into_response(),
        Err(err) => error_page(&err),
    }
}

#[derive(Deserialize)]
pub struct AddressForm {
    address: String,
}

#[derive(Deserialize)]
pub struct ResetForm {
    address: String,
    /// `yes` from the confirmation page; without it nothing is reset.
    confirm: Option<String>,
}

pub async fn domain_reset(
    State(state): State<WebState>,
    user: UserSession,
    Form(form): Form<ResetForm>,
) -> Response {
    let (user, domain) = match domain_admin(&state, user).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    if form.confirm.as_deref() != Some("yes") {
        return page(
            &format!("Reset 2-Step Authentication for {}?", form.address),
            user_nav(&user, true),
            html! {
                div.card {
                    p.warning { "This removes the second factors, backup codes, application passwords and trusted browsers of " strong { (form.address) } ". Their mail apps are disconnected and need new application passwords; if the domain forces 2-Step, they must set it up again at their next sign-in." }
                    form method="post" action="/domain/users/reset" {
                        input type="hidden" name="csrf" value=(user.csrf);
                        input type="hidden" name="address" value=(form.address);
                        input type="hidden" name="confirm" value="yes";
                        button.danger type="submit" { "Reset 2-Step Authentication" }
                    }
                    p { a href="/domain" { "Cancel" } }
                }
            },
        )
        .into_response();
    }
    match ops::reset_user(&state, &domain, &form.address, &user.actor()).await {
        Ok(()) => Redirect::to("/domain").into_response(),
        Err(err) => error_page(&err),
    }
}

fn login_page(csrf: &str, error: Option<&str>) -> Markup {
    page(
        "System administrator",
        html! {},
        html! {
            div.card {
                @if let Some(error) = error { p.error role="alert" { (error) } }
                form method="post" action="/admin/login" {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="name" { "Name" }
                    input #name type="text" name="name" autocomplete="username" maxlength=(sysadmin::MAX_NAME_BYTES) required autofocus;
                    label for="password" { "Password" }
                    input #password type="password" name="password" autocomplete="current-password" maxlength=(sysadmin::MAX_PASSWORD_BYTES) required;
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

pub async fn login_form(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> Response {
    match &current.session {
        Some((_, s)) if matches!(s.auth, Auth::Sysadmin { .. }) => {
            Redirect::to("/admin").into_response()
        }
        Some((_, s)) => login_page(&s.csrf, None).into_response(),
        None => {
            let (id, session) = state.sessions.create(Auth::Anonymous).await;
            with_cookie(SessionCookie::Set(id), login_page(&session.csrf, None))
        }
    }
}

#[derive(Deserialize)]
pub struct AdminLoginForm {
    name: String,
    password: String,
}

pub async fn login(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    Form(form): Form<AdminLoginForm>,
) -> Response {
    let Some((id, session)) = &current.session else {
        return Redirect::to("/admin/login").into_response();
    };
    match sysadmin::sign_in(&state, &form.name, &form.password, current.ip()).await {
        Ok(SysadminLogin::SignedIn) => {
            let (new_id, _) = state
                .sessions
                .rotate(
                    id,
                    Auth::Sysadmin {
                        name: form.name.trim().to_owned(),
                    },
                )
                .await;
            with_cookie(SessionCookie::Set(new_id), Redirect::to("/admin"))
        }
        // Not signed in: the one-time password buys nothing but a new one.
        Ok(SysadminLogin::MustChangePassword) => password_page(
            &session.csrf,
            Some(form.name.trim()),
            None,
            Some(
                "This is a one-time password. Choose your own password to continue: \
                 type the one-time password again, then your new password twice.",
            ),
        )
        .into_response(),
        Ok(SysadminLogin::Wrong) => (
            StatusCode::UNAUTHORIZED,
            login_page(&session.csrf, Some("Wrong name or password.")),
        )
            .into_response(),
        Err(err) => (
            err.status(),
            login_page(&session.csrf, Some(&sentence(&err.to_string()))),
        )
            .into_response(),
    }
}

/// The password form: for a signed-in administrator (`name` None: theirs) or
/// for one signing in with a one-time password (`name` given, typed in again).
fn password_page(
    csrf: &str,
    first_sign_in: Option<&str>,
    error: Option<&str>,
    notice: Option<&str>,
) -> Markup {
    let nav = match first_sign_in {
        None => html! {
            nav {
                a href="/admin" { "Domains" }
                a href="/admin/audit" { "Audit log" }
                (super::post_button("/logout", csrf, "Sign out", "link"))
            }
        },
        Some(_) => html! {},
    };
    page(
        "Change password",
        nav,
        html! {
            div.card {
                @if let Some(notice) = notice { p.warning role="status" { (notice) } }
                @if let Some(error) = error { p.error role="alert" { (error) } }
                form method="post" action="/admin/password" {
                    input type="hidden" name="csrf" value=(csrf);
                    @if let Some(name) = first_sign_in {
                        label for="name" { "Name" }
                        input #name type="text" name="name" value=(name) autocomplete="username" required;
                    }
                    label for="current" { "Current password" }
                    input #current type="password" name="current" autocomplete="current-password" required autofocus;
                    label for="new" { "New password" }
                    input #new type="password" name="new" autocomplete="new-password" minlength=(sysadmin::MIN_PASSWORD_CHARS) maxlength=(sysadmin::MAX_PASSWORD_BYTES) required;
                    label for="confirm" { "New password again" }
                    input #confirm type="password" name="confirm" autocomplete="new-password" required;
                    p.muted { "At least " (sysadmin::MIN_PASSWORD_CHARS) " characters; a few unrelated words make a good one. Common passwords are refused." }
                    button type="submit" { "Change password" }
                }
            }
        },
    )
}

pub async fn password_form(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
) -> Response {
    match &current.session {
        Some((_, s)) => match &s.auth {
            Auth::Sysadmin { .. } => password_page(&s.csrf, None, None, None).into_response(),
            _ => password_page(&s.csrf, Some(""), None, None).into_response(),
        },
        None => {
            let (id, session) = state.sessions.create(Auth::Anonymous).await;
            with_cookie(
                SessionCookie::Set(id),
                password_page(&session.csrf, Some(""), None, None),
            )
        }
    }
}

#[derive(Deserialize)]
pub struct PasswordForm {
    /// Only when not signed in (a first sign-in with a one-time password).
    name: Option<String>,
    current: String,
    new: String,
    confirm: String,
}

pub async fn change_password(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    Form(form): Form<PasswordForm>,
) -> Response {
    let Some((id, session)) = &current.session else {
        return Redirect::to("/admin/password").into_response();
    };
    // A signed-in administrator changes their own password only.
    let (name, first_sign_in) = match &session.auth {
        Auth::Sysadmin { name } => (name.clone(), None),
        _ => {
            let name = form.name.as_deref().unwrap_or("").trim().to_owned();
            (name.clone(), Some(name))
        }
    };
    let again = |status: StatusCode, error: &str| {
        (
            status,
            password_page(&session.csrf, first_sign_in.as_deref(), Some(error), None),
        )
            .into_response()
    };
    match sysadmin::change_password(
        &state,
        &name,
        &form.current,
        &form.new,
        &form.confirm,
        current.ip(),
    )
    .await
    {
        Ok(PasswordChange::Changed) => {
            let (new_id, _) = state.sessions.rotate(id, Auth::Sysadmin { name }).await;
            with_cookie(SessionCookie::Set(new_id), Redirect::to("/admin"))
        }
        Ok(PasswordChange::WrongCurrent) => {
            again(StatusCode::UNAUTHORIZED, "Wrong name or current password.")
        }
        Ok(PasswordChange::Rejected(why)) => again(StatusCode::BAD_REQUEST, &sentence(&why)),
        Err(err) => again(err.status(), &sentence(&err.to_string())),
    }
}

fn on_off(on: bool) -> &'static str {
    if on { "On" } else { "Off" }
}

pub async fn console(State(state): State<WebState>, admin: AdminSession) -> Response {
    let domains = match state.store.list_domains().await {
        Ok(domains) => domains,
        Err(err) => return error_page(&err.into()),
    };
    page(
        "Domains",
        admin_nav(&admin),
        html! {
            div.card.table {
                table {
                    thead { tr { th { "Domain" } th { "2-Step feature" } th { "Domain status" } th {} } }
                    tbody {
                        @for d in &domains {
                            tr {
                                td { a href=(format!("/admin/domains/{}", d.name)) { (d.name) } }
                                td { (on_off(d.feature)) }
                                td { (d.status.as_str()) }
                                td { a href=(format!("/admin/domains/{}", d.name)) { "Manage" } }
                            }
                        }
                    }
                }
                @if domains.is_empty() { p.muted { "No domains yet." } }
            }
            div.card {
                h2 { "Add a domain" }
                form method="post" action="/admin/domains" {
                    input type="hidden" name="csrf" value=(admin.csrf);
                    label for="domain" { "Domain" }
                    input #domain type="text" name="domain" placeholder="example.com" required;
                    button type="submit" { "Add" }
                }
            }
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub struct DomainForm {
    domain: String,
}

pub async fn add_domain(
    State(state): State<WebState>,
    admin: AdminSession,
    Form(form): Form<DomainForm>,
) -> Response {
    match state
        .store
        .add_domain(&form.domain, &admin_actor(&admin))
        .await
    {
        Ok(_) => Redirect::to("/admin").into_response(),
        Err(err) => error_page(&err.into()),
    }
}

fn admin_actor(admin: &AdminSession) -> RemoteActor {
    admin.actor()
}

pub async fn domain_detail(
    State(state): State<WebState>,
    admin: AdminSession,
    Path(name): Path<String>,
) -> Response {
    let domain = match state.store.domain(&name).await {
        Ok(Some(domain)) => domain,
        Ok(None) => return error_page(&WebError::NotFound),
        Err(err) => return error_page(&err.into()),
    };
    let admins = match ops::domain_admins(&state, &domain.name).await {
        Ok(admins) => admins,
        Err(err) => return error_page(&err),
    };
    let base = format!("/admin/domains/{}", domain.name);
    page(
        &domain.name,
        admin_nav(&admin),
        html! {
            div.card {
                h2 { "Features" }
                p { "2-Step Authentication: " strong { (on_off(domain.feature)) } }
                p.muted { "While it is on, the domain administrator chooses Disabled, Enabled or Forced (now: " (domain.status.as_str()) ")." }
                form method="post" action=(format!("{base}/feature")) {
                    input type="hidden" name="csrf" value=(admin.csrf);
                    input type="hidden" name="on" value=(if domain.feature { "off" } else { "on" });
                    button type="submit" class=(if domain.feature { "danger" } else { "" }) {
                        @if domain.feature { "Turn 2-Step Authentication off" } @else { "Turn 2-Step Authentication on" }
                    }
                }
            }
            div.card {
                h2 { "Domain administrators" }
                @if admins.is_empty() { p.muted { "None." } }
                ul {
                    @for a in &admins {
                        li {
                            (a) " "
                            form.inline method="post" action="/admin/impersonate" {
                                input type="hidden" name="csrf" value=(admin.csrf);
                                input type="hidden" name="address" value=(a);
                                button.small type="submit" { "Impersonate" }
                            }
                        }
                    }
                }
                form method="post" action=(format!("{base}/admins")) {
                    input type="hidden" name="csrf" value=(admin.csrf);
                    label for="address" { "Make a user of this domain an administrator" }
                    input #address type="email" name="address" placeholder=(format!("someone@{}", domain.name)) required;
                    button type="submit" { "Add administrator" }
                }
            }
        },
    )
    .into_response()
}

#[derive(Deserialize)]
pub struct FeatureForm {
    on: String,
}

pub async fn feature(
    State(state): State<WebState>,
    admin: AdminSession,
    Path(name): Path<String>,
    Form(form): Form<FeatureForm>,
) -> Response {
    let on = match form.on.as_str() {
        "on" => true,
        "off" => false,
        _ => return error_page(&WebError::BadRequest("on or off".into())),
    };
    match state
        .store
        .set_domain_feature(&name, on, &admin_actor(&admin))
        .await
    {
        Ok(()) => Redirect::to(&format!("/admin/domains/{name}")).into_response(),
        Err(err) => error_page(&err.into()),
    }
}

pub async fn add_admin(
    State(state): State<WebState>,
    admin: AdminSession,
    Path(name): Path<String>,
    Form(form): Form<AddressForm>,
) -> Response {
    match state
        .store
        .set_domain_admin(&name, &form.address, &admin_actor(&admin))
        .await
    {
        Ok(()) => Redirect::to(&format!("/admin/domains/{name}")).into_response(),
        Err(err) => error_page(&err.into()),
    }
}

pub async fn impersonate(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    admin: AdminSession,
    Form(form): Form<AddressForm>,
) -> Response {
    let ip = current.ip_string();
    match ops::impersonate(&state, &admin.name, &form.address, ip.as_deref()).await {
        Ok(address) => {
            let (new_id, _) = state
                .sessions
                .rotate(
                    &admin.id,
                    Auth::User {
                        address,
                        impersonator: Some(admin.name),
                    },
                )
                .await;
            with_cookie(SessionCookie::Set(new_id), Redirect::to("/domain"))
        }
        Err(err) => error_page(&err),
    }
}

pub async fn stop_impersonating(
    State(state): State<WebState>,
    Extension(current): Extension<Current>,
    user: UserSession,
) -> Response {
    let Some(name) = user.impersonator else {
        return Redirect::to("/account").into_response();
    };
    let ip = current.ip_string();
    if let Err(err) = state
        .store
        .audit(
            &format!("sysadmin:{name}"),
            "impersonate.stop",
            &user.address,
            "web",
            ip.as_deref(),
        )
        .await
    {
        return error_page(&err.into());
    }
    let (new_id, _) = state
        .sessions
        .rotate(&user.id, Auth::Sysadmin { name })
        .await;
    with_cookie(SessionCookie::Set(new_id), Redirect::to("/admin"))
}

#[derive(Deserialize)]
pub struct AuditQuery {
    user: Option<String>,
    since: Option<String>,
}

/// `YYYY-MM-DD` (UTC midnight) as Unix seconds.
pub fn parse_since(text: Option<&str>) -> Result<Option<i64>, WebError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &format)
        .map(|d| Some(d.midnight().assume_utc().unix_timestamp()))
        .map_err(|_| WebError::BadRequest("since: a date like 2026-01-31".into()))
}

pub async fn audit(
    State(state): State<WebState>,
    admin: AdminSession,
    Query(query): Query<AuditQuery>,
) -> Response {
    let since = match parse_since(query.since.as_deref()) {
        Ok(since) => since,
        Err(err) => return error_page(&err),
    };
    let user = query.user.clone().filter(|u| !u.trim().is_empty());
    let filter = AuditFilter {
        user: user.clone(),
        since,
        limit: 500,
    };
    let rows = match state.store.list_audit(filter).await {
        Ok(rows) => rows,
        Err(err) => return error_page(&err.into()),
    };
    page(
        "Audit log",
        admin_nav(&admin),
        html! {
            div.card {
                form method="get" action="/admin/audit" {
                    label for="user" { "User (address)" }
                    input #user type="text" name="user" value=(user.unwrap_or_default());
                    label for="since" { "Since (date)" }
                    input #since type="date" name="since" value=(query.since.unwrap_or_default());
                    button type="submit" { "Filter" }
                }
            }
            div.card.table {
                table.audit.stack {
                    thead { tr { th { "Time" } th { "Actor" } th { "Action" } th { "Target" } th { "Detail" } th { "IP" } } }
                    tbody {
                        @for r in &rows {
                            tr {
                                td data-label="Time" { (fmt_time(Some(r.at))) }
                                td data-label="Actor" { (r.actor) }
                                td data-label="Action" { (r.action) }
                                td data-label="Target" { (r.target) }
                                td data-label="Detail" { (r.detail) }
                                td data-label="IP" { (r.ip.clone().unwrap_or_default()) }
                            }
                        }
                    }
                }
                @if rows.is_empty() { p.muted { "Nothing matches." } }
            }
        },
    )
    .into_response()
}
