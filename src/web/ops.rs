//! The actions behind both the HTML pages and the JSON API, so the two cannot
//! drift: each checks who may do what and then calls the store.

pub use crate::clock::unix_now;
use std::net::{IpAddr, SocketAddr};

use axum::http::StatusCode;
use subtle::ConstantTimeEq;
use tracing::warn;

use super::session::Auth;
use super::{WebState, recovery};
use crate::credentials::{
    AppPassword, AppPasswordLimits, IssuedAppPassword, expiry_after_days,
    issue_limited_app_password, totp,
};
use crate::gate::AfterSuccess;
use crate::login_log::LoginAttempt;
use crate::policy::{
    ActionCheck, DomainStatus, Proof, Scopes, SensitiveAction, SourceNetworks, WebAccess,
    WebLoginStep, decide_sensitive_action, decide_web_access, decide_web_login,
};
use crate::secret::Secret;
use crate::store::{
    AppPasswordRecord, AuditActor, DomainRecord, EnrollmentCounts, FactorKind, RemoteActor,
    StoreError, UserRecord, UserSummary, normalize_address,
};

/// Why an action did not happen. `Display` is what the person sees.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("the mail server cannot be reached; try again in a minute")]
    Upstream,
    #[error("postern's database is not answering; try again in a minute")]
    Store(#[source] StoreError),
    /// The recovery e-mail relay failed; the detail is logged, not shown.
    #[error("could not send the code; try again later")]
    Mail,
    /// A rate limit; the text says how long to wait.
    #[error("{0}")]
    TooMany(String),
    /// A sensitive action, and the session's last proof of who the user is is
    /// too old (or too weak): ask for this again first.
    #[error("{}", reauth_text(*.0))]
    Reauthenticate(Proof),
    /// A system administrator acting as the user asked to create or change the
    /// user's credentials.
    #[error(
        "a system administrator acting as a user cannot create or change that user's \
         credentials (application passwords, second factors, backup codes); the user \
         must do it, or a domain administrator resets them with Reset 2-Step"
    )]
    NotForImpersonator,
}

fn reauth_text(need: Proof) -> &'static str {
    match need {
        Proof::SecondFactor => {
            "confirm it is you first: enter a code from your authenticator app, a backup \
             code, or a code from your recovery e-mail"
        }
        Proof::PrimaryPassword => "confirm it is you first: enter your password again",
    }
}

impl WebError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) | Self::Reauthenticate(_) | Self::NotForImpersonator => {
                StatusCode::FORBIDDEN
            }
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Upstream | Self::Store(_) | Self::Mail => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl From<StoreError> for WebError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Self::NotFound,
            StoreError::InvalidAddress(msg) => Self::BadRequest(msg),
            StoreError::UnknownDomain(d) => Self::BadRequest(format!("unknown domain {d}")),
            other => {
                warn!(error = %other, "web: store error");
                Self::Store(other)
            }
        }
    }
}

/// The audit actor for a logged-in user (or a system administrator acting as one).
pub fn user_actor(address: &str, impersonator: Option<&str>) -> String {
    match impersonator {
        Some(name) => format!("sysadmin:{name} as user:{address}"),
        None => format!("user:{address}"),
    }
}

/// Who asks for a change to a user's account, as their session records it.
#[derive(Clone, Copy, Debug)]
pub struct Requester<'a> {
    pub address: &'a str,
    /// The system administrator acting as the user, if any.
    pub impersonator: Option<&'a str>,
    /// The session's last proof of who the user is (`WebSession::proved`).
    pub proved: Option<(Proof, i64)>,
    /// The client's address, for the audit rows.
    pub ip: Option<&'a str>,
}

impl Requester<'_> {
    /// The audit actor, with the client's address.
    pub fn actor(&self) -> RemoteActor {
        RemoteActor {
            name: user_actor(self.address, self.impersonator),
            ip: self.ip.map(str::to_owned),
        }
    }
}

/// Asks the policy whether `who` may do `action` to `user`'s account now.
pub fn authorize(
    user: &UserRecord,
    who: &Requester<'_>,
    action: SensitiveAction,
) -> Result<(), WebError> {
    match decide_sensitive_action(
        user.state(),
        who.impersonator.is_some(),
        action,
        who.proved,
        unix_now(),
    ) {
        ActionCheck::Allow => Ok(()),
        ActionCheck::Reauthenticate { need } => Err(WebError::Reauthenticate(need)),
        ActionCheck::NotForImpersonator => Err(WebError::NotForImpersonator),
    }
}

/// What a re-authentication led to.
#[derive(Debug, PartialEq, Eq)]
pub enum ReauthOutcome {
    /// The session now holds a fresh proof of this kind.
    Accepted(Proof),
    Refused(CodeOutcome),
}

/// Re-authenticates a signed-in user for sensitive actions: an enrolled user
/// with a TOTP, backup or recovery e-mail code (under the second step's attempt
/// limits), a user without a second factor with the primary password (checked
/// upstream, under the login penalties). The session records the proof.
pub async fn reauthenticate(
    state: &WebState,
    session_id: &str,
    who: &Requester<'_>,
    secret: &str,
    client: Option<SocketAddr>,
) -> Result<ReauthOutcome, WebError> {
    if who.impersonator.is_some() {
        return Err(WebError::NotForImpersonator);
    }
    let (_, user) = user_context(state, who.address).await?;
    let ip = client.map(|c| c.ip().to_string());
    let proof = if user.enrolled {
        let outcome = check_second_factor(
            state,
            who.address,
            session_id,
            secret,
            ip.as_deref(),
            "web.reauth",
        )
        .await?;
        if outcome != CodeOutcome::Accepted {
            return Ok(ReauthOutcome::Refused(outcome));
        }
        Proof::SecondFactor
    } else {
        // The sign-in's own password step, penalties and log line included.
        let right = matches!(
            password_step(state, who.address, secret, client, None).await?,
            PasswordOutcome::Next { .. }
        );
        if !right {
            state
                .store
                .audit(
                    &who.actor().name,
                    "web.reauth.refused",
                    who.address,
                    "password",
                    ip.as_deref(),
                )
                .await?;
            return Ok(ReauthOutcome::Refused(CodeOutcome::Wrong));
        }
        state
            .store
            .audit(
                &who.actor().name,
                "web.reauth",
                who.address,
                "password",
                ip.as_deref(),
            )
            .await?;
        Proof::PrimaryPassword
    };
    state.sessions.record_proof(session_id, proof).await;
    Ok(ReauthOutcome::Accepted(proof))
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// A user's record and their domain's (None if postern does not know it).
pub async fn user_context(
    state: &WebState,
    address: &str,
) -> Result<(Option<DomainRecord>, UserRecord), WebError> {
    Ok(state
        .store
        .login_context(address, domain_of(address))
        .await?)
}

pub fn effective_status(domain: Option<&DomainRecord>) -> DomainStatus {
    domain.map_or(DomainStatus::Disabled, |d| d.policy().effective_status())
}

/// Longest address accepted at the web login (RFC 5321 §4.5.3.1: 64 + 1 + 255).
pub const MAX_ADDRESS_BYTES: usize = 320;

/// What the primary password step led to.
pub enum PasswordOutcome {
    Wrong,
    /// The session's new state, and the step the policy asked for (a signed-in
    /// user who must enroll is `Auth::User` with `step == MustEnroll`).
    Next {
        auth: Auth,
        step: WebLoginStep,
    },
}

/// What a signed-in user's session may do now, from the stored state (read on
/// every request: a domain forced after sign-in binds the session at once).
pub async fn web_access(
    state: &WebState,
    address: &str,
    impersonated: bool,
) -> Result<WebAccess, WebError> {
    let (domain, user) = user_context(state, address).await?;
    let policy = domain.as_ref().map(DomainRecord::policy);
    Ok(decide_web_access(
        policy.as_ref(),
        user.state(),
        impersonated,
        unix_now(),
    ))
}

/// What a session that may only enroll is told when it asks for anything else.
pub const ENROLL_FIRST: &str =
    "your domain requires 2-Step Authentication: set it up before anything else";

/// What a disabled account's session is told.
pub const ACCOUNT_DISABLED: &str = "this account is disabled; ask your administrator";

/// Checks the primary password upstream, then asks the policy what comes next.
/// `trusted`: the browser's trusted-browser cookie, which may stand in for the
/// second step (see [`super::trusted`]).
pub async fn password_step(
    state: &WebState,
    address: &str,
    password: &str,
    client: Option<SocketAddr>,
    trusted: Option<&str>,
) -> Result<PasswordOutcome, WebError> {
    let outcome = check_password(state, address, password, client, trusted).await;
    super::login_counts::count(super::login_counts::password(&outcome));
    outcome
}

async fn check_password(
    state: &WebState,
    address: &str,
    password: &str,
    client: Option<SocketAddr>,
    trusted: Option<&str>,
) -> Result<PasswordOutcome, WebError> {
    // Unauthenticated input: capped before it is normalised, counted or logged.
    if address.len() > MAX_ADDRESS_BYTES {
        return Err(WebError::BadRequest(format!(
            "address: at most {MAX_ADDRESS_BYTES} bytes"
        )));
    }
    if password.len() > super::sysadmin::MAX_PASSWORD_BYTES {
        return Err(WebError::BadRequest(format!(
            "password: at most {} bytes",
            super::sysadmin::MAX_PASSWORD_BYTES
        )));
    }
    let client = client.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let ip = client.ip();
    let Ok(address) = normalize_address(address) else {
        LoginAttempt::new("web", "password", address, ip).refused("invalid-address");
        return Ok(PasswordOutcome::Wrong);
    };
    if password.is_empty() {
        LoginAttempt::new("web", "password", &address, ip).refused("empty-password");
        return Ok(PasswordOutcome::Wrong);
    }
    let Some(settings) = &state.imap else {
        warn!("web login: no [imap] section, so primary passwords cannot be checked");
        return Err(WebError::Upstream);
    };
    // The mail ports' penalties apply here too, so the web form is no faster
    // way to guess a primary password than IMAP is.
    let delay = state.penalties.delay(ip).await;
    if !delay.is_zero() {
        metrics::counter!(crate::metrics::PENALTY_SECONDS).increment(delay.as_secs());
        tokio::time::sleep(delay).await;
    }
    // Read before the upstream is asked: a blocked account is refused without
    // asking it. The account's failure count is read with it, shared by every
    // node; reading creates nothing, so a refused address leaves no user row.
    let account = state.store.account(&address).await.inspect_err(|err| {
        LoginAttempt::new("web", "password", &address, ip).unavailable(&err.to_string());
    })?;
    let now = unix_now();
    if account.failures.block(now) {
        LoginAttempt::new("web", "password", &address, ip).refused("account-blocked");
        return Ok(PasswordOutcome::Wrong);
    }
    let attempt = state
        .key
        .mac(&[b"login-attempt", address.as_bytes(), password.as_bytes()]);
    let secret = Secret::from(password);
    let right = crate::session::verify_primary_password(
        settings,
        &state.connector,
        &address,
        &secret,
        client,
    )
    .await
    .map_err(|err| {
        LoginAttempt::new("web", "password", &address, ip).unavailable(&format!("upstream: {err}"));
        WebError::Upstream
    })?;
    if !right {
        if state.penalties.failed(ip, &address, attempt).await {
            state.gate.count_login_failure(&address, now, ip).await;
        }
        LoginAttempt::new("web", "password", &address, ip).refused("upstream-refused");
        return Ok(PasswordOutcome::Wrong);
    }
    state.penalties.succeeded(ip, &address).await;
    state
        .gate
        .login_succeeded(&address, AfterSuccess::for_account(&account))
        .await;
    if account.state().disabled {
        LoginAttempt::new("web", "password", &address, ip).refused("disabled");
        return Err(WebError::Forbidden(ACCOUNT_DISABLED.into()));
    }
    let step = decide_web_login(account.policy().as_ref(), account.state(), now);
    // A user first seen now may be due the roll-out's notice.
    if !account.state().enrolled
        && account
            .policy()
            .is_some_and(|p| p.scheduled_forced(now).is_some())
    {
        state.rollout_wake.notify_one();
    }
    let ip_text = ip.to_string();
    let skipped =
        super::trusted::skips_second_step(state, &account, password, trusted, step, Some(&ip_text))
            .await;
    LoginAttempt::new("web", "password", &address, ip).password_ok(match step {
        _ if skipped => "trusted-browser",
        WebLoginStep::Done | WebLoginStep::DoneMayEnroll => "done",
        WebLoginStep::SecondStep => "second-step",
        WebLoginStep::MustEnroll => "must-enroll",
    });
    let step = if skipped { WebLoginStep::Done } else { step };
    let auth = match step {
        WebLoginStep::SecondStep => Auth::SecondStep {
            password_tag: Some(super::trusted::password_tag(&state.key, &address, password)),
            address,
        },
        WebLoginStep::Done | WebLoginStep::DoneMayEnroll | WebLoginStep::MustEnroll => Auth::User {
            address,
            impersonator: None,
        },
    };
    Ok(PasswordOutcome::Next { auth, step })
}

/// What a second-step code led to.
#[derive(Debug, PartialEq, Eq)]
pub enum CodeOutcome {
    Accepted,
    Wrong,
    /// Right code, already used once.
    Replayed,
    /// A recovery e-mail code, but none is live: expired, used or void.
    Expired,
    Locked,
}

fn normalize_backup_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn backup_code_hash(state: &WebState, user_id: i64, code: &str) -> String {
    hex::encode(state.key.mac(&[
        b"backup-code",
        &user_id.to_be_bytes(),
        normalize_backup_code(code).as_bytes(),
    ]))
}

/// Checks a TOTP code (once only), a backup code or a recovery e-mail code, under
/// the attempt limits.
pub async fn second_step(
    state: &WebState,
    address: &str,
    session_id: &str,
    code: &str,
    ip: Option<&str>,
) -> Result<CodeOutcome, WebError> {
    let outcome = check_second_factor(state, address, session_id, code, ip, "web.login").await;
    super::login_counts::count(super::login_counts::code(&outcome));
    outcome
}

/// A second-factor code for `action` (the audit row's: `web.login` at sign-in,
/// `web.reauth` before a sensitive action), under the same attempt limits.
async fn check_second_factor(
    state: &WebState,
    address: &str,
    session_id: &str,
    code: &str,
    ip: Option<&str>,
    action: &str,
) -> Result<CodeOutcome, WebError> {
    let session_key = format!("s:{session_id}");
    let user_key = format!("u:{address}");
    let keys = [session_key.as_str(), user_key.as_str()];
    let client = ip
        .and_then(|ip| ip.parse().ok())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let attempt = LoginAttempt::new("web", "second-step", address, client);
    if state.attempts.locked(&keys).await? {
        attempt.refused("locked");
        return Ok(CodeOutcome::Locked);
    }
    let checked = match user_context(state, address).await {
        Ok((_, user)) => check_code(state, &user, code).await,
        Err(err) => Err(err),
    };
    let outcome = match checked {
        Ok(outcome) => outcome,
        Err(err) => {
            attempt.unavailable(&err.to_string());
            return Err(err);
        }
    };
    match outcome {
        CodeOutcome::Accepted => {
            attempt.ok();
            state.attempts.succeed(&keys).await?;
            state
                .store
                .audit(
                    &user_actor(address, None),
                    action,
                    address,
                    "second step",
                    ip,
                )
                .await?;
        }
        _ => {
            attempt.refused(match outcome {
                CodeOutcome::Replayed => "code-replayed",
                CodeOutcome::Expired => "code-expired",
                _ => "wrong-code",
            });
            state.attempts.fail(&keys).await?;
            state
                .store
                .audit(
                    &user_actor(address, None),
                    &format!("{action}.code_refused"),
                    address,
                    match outcome {
                        CodeOutcome::Replayed => "replayed",
                        CodeOutcome::Expired => "expired",
                        _ => "wrong",
                    },
                    ip,
                )
                .await?;
        }
    }
    Ok(outcome)
}

async fn check_code(
    state: &WebState,
    user: &UserRecord,
    code: &str,
) -> Result<CodeOutcome, WebError> {
    let now = u64::try_from(unix_now()).unwrap_or(0);
    let mut replayed = false;
    let mut recovery_email = false;
    for factor in state.store.second_factors(user.id).await? {
        recovery_email |= factor.kind == FactorKind::Email && factor.confirmed;
        if factor.kind != FactorKind::Totp || !factor.confirmed {
            continue;
        }
        if let Ok(Some(step)) = totp::matching_step(factor.secret.expose(), code, now) {
            if state.store.use_totp_step(factor.id, step).await? {
                return Ok(CodeOutcome::Accepted);
            }
            replayed = true;
        }
    }
    if replayed {
        return Ok(CodeOutcome::Replayed);
    }
    let normalized = normalize_backup_code(code);
    if normalized.len() == BACKUP_CODE_LEN {
        let presented = backup_code_hash(state, user.id, code);
        for (id, hash) in state.store.backup_code_hashes(user.id).await? {
            if bool::from(presented.as_bytes().ct_eq(hash.as_bytes()))
                && state.store.use_backup_code(id).await?
            {
                return Ok(CodeOutcome::Accepted);
            }
        }
    }
    if recovery_email && let Some(outcome) = recovery::check_login_code(state, user, code).await? {
        return Ok(outcome);
    }
    Ok(CodeOutcome::Wrong)
}

/// A TOTP enrollment in progress: the unconfirmed factor and its secret.
pub struct PendingTotp {
    pub factor_id: i64,
    pub secret: String,
    pub otpauth: String,
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `otpauth://` URL authenticator apps read from the QR code.
pub fn otpauth_url(address: &str, secret: &str) -> String {
    format!(
        "otpauth://totp/postern:{}?secret={secret}&issuer=postern",
        percent_encode(address)
    )
}

/// The user's unconfirmed TOTP factor, created on first call. Refused while the
/// domain's effective status is Disabled, and to an impersonator (who would
/// otherwise see the secret the user then confirms).
pub async fn pending_totp(state: &WebState, who: &Requester<'_>) -> Result<PendingTotp, WebError> {
    let (domain, user) = user_context(state, who.address).await?;
    authorize(&user, who, SensitiveAction::AddFactor)?;
    let actor = who.actor();
    if effective_status(domain.as_ref()) == DomainStatus::Disabled {
        return Err(WebError::Forbidden(
            "2-Step Authentication is not turned on for your domain".into(),
        ));
    }
    let existing = state
        .store
        .second_factors(user.id)
        .await?
        .into_iter()
        .rev()
        .find(|f| f.kind == FactorKind::Totp && !f.confirmed);
    let (factor_id, secret) = match existing {
        Some(factor) => (factor.id, factor.secret.expose().clone()),
        None => {
            let secret = totp::generate_secret();
            let id = state
                .store
                .add_second_factor(user.id, FactorKind::Totp, &secret, false, &actor)
                .await?;
            (id, secret)
        }
    };
    Ok(PendingTotp {
        factor_id,
        otpauth: otpauth_url(&user.address, &secret),
        secret,
    })
}

/// Confirms the pending TOTP factor with a code from the app. True if it now counts.
pub async fn confirm_totp(
    state: &WebState,
    who: &Requester<'_>,
    code: &str,
) -> Result<bool, WebError> {
    let address = who.address;
    let actor = who.actor();
    let key = format!("u:{address}");
    if state.attempts.locked(&[&key]).await? {
        return Err(WebError::Forbidden(
            "too many wrong codes; wait 15 minutes".into(),
        ));
    }
    let pending = pending_totp(state, who).await?;
    let (_, user) = user_context(state, address).await?;
    let now = u64::try_from(unix_now()).unwrap_or(0);
    let step = totp::matching_step(&pending.secret, code, now)
        .map_err(|_| WebError::BadRequest("the stored secret is invalid".into()))?;
    let Some(step) = step else {
        state.attempts.fail(&[&key]).await?;
        return Ok(false);
    };
    if !state.store.use_totp_step(pending.factor_id, step).await? {
        return Ok(false);
    }
    state
        .store
        .confirm_second_factor(user.id, pending.factor_id, &actor)
        .await?;
    state.attempts.succeed(&[&key]).await?;
    Ok(true)
}

/// Characters of a backup code (50 bits from a 32-letter alphabet).
const BACKUP_CODE_LEN: usize = 10;

/// Ten fresh backup codes replacing any earlier ones; shown once.
pub async fn new_backup_codes(
    state: &WebState,
    who: &Requester<'_>,
) -> Result<Vec<String>, WebError> {
    let (_, user) = user_context(state, who.address).await?;
    if !user.enrolled {
        return Err(WebError::Forbidden(
            "set up an authenticator app first".into(),
        ));
    }
    authorize(&user, who, SensitiveAction::CreateBackupCodes)?;
    let codes: Vec<String> = (0..10)
        .map(|_| {
            let raw: String = AppPassword::generate()
                .display()
                .expose()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(BACKUP_CODE_LEN)
                .collect::<String>()
                .to_ascii_lowercase();
            format!("{}-{}", &raw[..5], &raw[5..])
        })
        .collect();
    let hashes: Vec<String> = codes
        .iter()
        .map(|c| backup_code_hash(state, user.id, c))
        .collect();
    state
        .store
        .replace_backup_codes(user.id, &hashes, &who.actor())
        .await?;
    Ok(codes)
}

/// Turns 2-Step off for the user: removes every factor, passkey and backup code, and
/// forgets every trusted browser. Not while the domain forces it.
pub async fn turn_off(state: &WebState, who: &Requester<'_>) -> Result<(), WebError> {
    let (domain, user) = user_context(state, who.address).await?;
    if effective_status(domain.as_ref()) == DomainStatus::Forced {
        return Err(WebError::Forbidden(
            "your domain requires 2-Step Authentication".into(),
        ));
    }
    authorize(&user, who, SensitiveAction::TurnOff)?;
    let actor = who.actor();
    state.store.turn_off_two_step(user.id, &actor).await?;
    super::trusted::two_step_off(state, user.id, &actor).await?;
    Ok(())
}

/// Scopes from the three checkboxes.
pub fn scopes_from(imap: bool, pop3: bool, smtp: bool) -> Result<Scopes, WebError> {
    let names: Vec<&str> = [(imap, "imap"), (pop3, "pop3"), (smtp, "smtp")]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
    names
        .join(",")
        .parse()
        .map_err(|_| WebError::BadRequest("choose at least one of IMAP, POP3, SMTP".into()))
}

/// Source networks as typed (CIDRs separated by commas, spaces or lines).
pub fn networks_from(text: &str) -> Result<SourceNetworks, WebError> {
    text.parse().map_err(WebError::BadRequest)
}

pub async fn create_app_password(
    state: &WebState,
    who: &Requester<'_>,
    name: &str,
    scopes: Scopes,
    expires_days: Option<u32>,
    networks: SourceNetworks,
) -> Result<IssuedAppPassword, WebError> {
    let (_, user) = user_context(state, who.address).await?;
    authorize(&user, who, SensitiveAction::CreateAppPassword)?;
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(WebError::BadRequest(
            "give the device a name of 1 to 64 characters".into(),
        ));
    }
    let expires_at = expires_days
        .map(|days| expiry_after_days(i64::from(days), unix_now()))
        .transpose()
        .map_err(|err| WebError::BadRequest(err.to_string()))?;
    let limits = AppPasswordLimits {
        scopes,
        expires_at,
        networks,
    };
    issue_limited_app_password(
        &state.store,
        &state.key,
        who.address,
        name,
        limits,
        &who.actor(),
    )
    .await
    .map_err(|err| match err {
        StoreError::TooManyAppPasswords => {
            WebError::BadRequest("at most 40 application passwords; revoke one first".into())
        }
        err => WebError::from(err),
    })
}

pub async fn app_passwords(
    state: &WebState,
    address: &str,
) -> Result<Vec<AppPasswordRecord>, WebError> {
    let (_, user) = user_context(state, address).await?;
    Ok(state.store.list_app_passwords(user.id).await?)
}

pub async fn revoke_app_password(
    state: &WebState,
    address: &str,
    id: i64,
    actor: &(impl AuditActor + ?Sized),
) -> Result<(), WebError> {
    let (_, user) = user_context(state, address).await?;
    Ok(state.store.revoke_app_password(user.id, id, actor).await?)
}

/// What the domain administrator's card shows.
pub struct DomainOverview {
    pub domain: DomainRecord,
    /// Live mail sessions of this domain logged in with a primary password:
    /// forcing 2-Step would drop them (for users not enrolled, unless in grace).
    pub primary_sessions: usize,
    pub users: Vec<UserSummary>,
    /// Users with and without 2-Step (disabled ones left out).
    pub counts: EnrollmentCounts,
    /// The date a scheduled Forced takes effect, while it is ahead.
    pub scheduled_forced: Option<i64>,
}

/// The domain of a domain administrator, checked against the store each time.
pub async fn administered_domain(state: &WebState, address: &str) -> Result<String, WebError> {
    let (domain, user) = user_context(state, address).await?;
    match domain {
        Some(domain) if user.domain_admin && !user.disabled => Ok(domain.name),
        _ => Err(WebError::Forbidden(
            "only a domain administrator may do this".into(),
        )),
    }
}

pub async fn domain_overview(state: &WebState, domain: &str) -> Result<DomainOverview, WebError> {
    let record = state
        .store
        .domain(domain)
        .await?
        .ok_or(WebError::NotFound)?;
    let suffix = format!("@{domain}");
    // This node's newest sessions are written to the shared table in batches:
    // write them now so the count includes a session that just logged in.
    state.registry.flush().await;
    let primary_sessions = state
        .store
        .list_sessions()
        .await?
        .iter()
        .filter(|s| s.credential == "primary" && s.user_address.ends_with(&suffix))
        .count();
    let users = state.store.list_users(domain).await?;
    let counts = state.store.enrollment_counts(domain).await?;
    Ok(DomainOverview {
        scheduled_forced: record.policy().scheduled_forced(unix_now()),
        domain: record,
        primary_sessions,
        users,
        counts,
    })
}

/// A domain administrator's status change needs the system administrator's
/// switch on: the domain must exist and have the 2-Step feature.
async fn feature_on(state: &WebState, domain: &str) -> Result<(), WebError> {
    let record = state
        .store
        .domain(domain)
        .await?
        .ok_or(WebError::NotFound)?;
    if !record.feature {
        return Err(WebError::Forbidden(
            "the system administrator has not turned on 2-Step Authentication for this domain"
                .into(),
        ));
    }
    Ok(())
}

pub async fn set_domain_status(
    state: &WebState,
    domain: &str,
    status: DomainStatus,
    grace_days: Option<u32>,
    actor: &(impl AuditActor + ?Sized),
) -> Result<(), WebError> {
    feature_on(state, domain).await?;
    let grace_until = match grace_days {
        None | Some(0) => None,
        Some(days) if days <= 365 => Some(unix_now() + i64::from(days) * 86_400),
        Some(_) => return Err(WebError::BadRequest("grace: at most 365 days".into())),
    };
    state
        .store
        .set_domain_status(domain, status, grace_until, actor)
        .await?;
    // A grace period is a roll-out with a date: its users are mailed too.
    if grace_until.is_some() {
        state.rollout_wake.notify_one();
    }
    Ok(())
}

/// Schedules Forced for a date (`forced_from` as typed: `YYYY-MM-DD` or RFC
/// 3339), or moves the date. The users without 2-Step are mailed the notice
/// by the roll-out mailer, woken here; a send never holds this request.
pub async fn schedule_forced(
    state: &WebState,
    domain: &str,
    forced_from: &str,
    actor: &(impl AuditActor + ?Sized),
) -> Result<i64, WebError> {
    feature_on(state, domain).await?;
    let at =
        crate::rollout::parse_forced_from(forced_from, unix_now()).map_err(WebError::BadRequest)?;
    state.store.schedule_forced(domain, at, actor).await?;
    state.rollout_wake.notify_one();
    Ok(at)
}

/// Cancels a scheduled Forced still ahead: the domain goes back to Enabled.
pub async fn cancel_scheduled_forced(
    state: &WebState,
    domain: &str,
    actor: &(impl AuditActor + ?Sized),
) -> Result<(), WebError> {
    if state.store.cancel_scheduled_forced(domain, actor).await? {
        Ok(())
    } else {
        Err(WebError::BadRequest(
            "no switch to Forced is scheduled for this domain".into(),
        ))
    }
}

/// Sets which security notices the domain's users are not sent.
pub async fn set_domain_notices(
    state: &WebState,
    domain: &str,
    off: crate::notices::NoticeKinds,
    actor: &(impl AuditActor + ?Sized),
) -> Result<(), WebError> {
    Ok(state.store.set_domain_notices(domain, off, actor).await?)
}

pub async fn reset_user(
    state: &WebState,
    domain: &str,
    target: &str,
    actor: &(impl AuditActor + ?Sized),
) -> Result<(), WebError> {
    let target = normalize_address(target)?;
    if domain_of(&target) != domain {
        return Err(WebError::Forbidden(format!("{target} is not in {domain}")));
    }
    Ok(state.store.reset_user(&target, actor).await?)
}

/// A system administrator's sign-in, for the JSON API: true when signed in.
/// A one-time password (first start) is refused here: it must first be
/// replaced in the web UI (see [`super::sysadmin`]).
pub async fn sysadmin_login(
    state: &WebState,
    name: &str,
    password: &str,
    ip: Option<&str>,
) -> Result<bool, WebError> {
    let client = ip.and_then(|ip| ip.parse().ok());
    match super::sysadmin::sign_in(state, name, password, client).await? {
        super::sysadmin::SysadminLogin::SignedIn => Ok(true),
        super::sysadmin::SysadminLogin::Wrong => Ok(false),
        super::sysadmin::SysadminLogin::MustChangePassword => Err(WebError::Forbidden(
            "this is a one-time password: sign in at /admin/login in a browser to choose your own"
                .into(),
        )),
    }
}

/// Starts impersonating a domain administrator (audited).
pub async fn impersonate(
    state: &WebState,
    sysadmin: &str,
    target: &str,
    ip: Option<&str>,
) -> Result<String, WebError> {
    let target = normalize_address(target)?;
    let user = state.store.user(&target).await?.ok_or(WebError::NotFound)?;
    if !user.domain_admin {
        return Err(WebError::Forbidden(format!(
            "{target} is not a domain administrator"
        )));
    }
    state
        .store
        .audit(
            &format!("sysadmin:{sysadmin}"),
            "impersonate",
            &target,
            "web",
            ip,
        )
        .await?;
    Ok(target)
}

/// The domain administrators of a domain.
pub async fn domain_admins(state: &WebState, domain: &str) -> Result<Vec<String>, WebError> {
    Ok(state
        .store
        .list_users(domain)
        .await?
        .into_iter()
        .filter(|u| u.domain_admin)
        .map(|u| u.address)
        .collect())
}
