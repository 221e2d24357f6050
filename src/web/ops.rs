//! The actions behind both the HTML pages and the JSON API, so the two cannot
//! drift: each checks who may do what and then calls the store.

use std::net::SocketAddr;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::http::StatusCode;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::session::Auth;
use super::{WebState, recovery};
use crate::credentials::{AppPassword, IssuedAppPassword, issue_app_password, totp};
use crate::gate::AfterSuccess;
use crate::policy::{DomainStatus, Scopes, WebLoginStep, decide_web_login};
use crate::secret::Secret;
use crate::store::{
    AppPasswordRecord, DomainRecord, FactorKind, Store, StoreError, UserRecord, UserSummary,
    normalize_address,
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
}

impl WebError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
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

pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The audit actor for a logged-in user (or a system administrator acting as one).
pub fn user_actor(address: &str, impersonator: Option<&str>) -> String {
    match impersonator {
        Some(name) => format!("sysadmin:{name} as user:{address}"),
        None => format!("user:{address}"),
    }
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

/// What the primary password step led to.
pub enum PasswordOutcome {
    Wrong,
    Next(Auth),
}

/// Checks the primary password upstream, then asks the policy what comes next.
pub async fn password_step(
    state: &WebState,
    address: &str,
    password: &str,
    client: Option<SocketAddr>,
) -> Result<PasswordOutcome, WebError> {
    let outcome = check_password(state, address, password, client).await;
    super::login_counts::count(super::login_counts::password(&outcome));
    outcome
}

async fn check_password(
    state: &WebState,
    address: &str,
    password: &str,
    client: Option<SocketAddr>,
) -> Result<PasswordOutcome, WebError> {
    let Ok(address) = normalize_address(address) else {
        return Ok(PasswordOutcome::Wrong);
    };
    if password.is_empty() {
        return Ok(PasswordOutcome::Wrong);
    }
    let Some(settings) = &state.imap else {
        warn!("web login: no [imap] section, so primary passwords cannot be checked");
        return Err(WebError::Upstream);
    };
    let client = client.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let ip = client.ip();
    // The mail ports' penalties apply here too, so the web form is no faster
    // way to guess a primary password than IMAP is.
    let delay = state.penalties.delay(ip);
    if !delay.is_zero() {
        metrics::counter!(crate::metrics::PENALTY_SECONDS).increment(delay.as_secs());
        tokio::time::sleep(delay).await;
    }
    // Read before the upstream is asked: a blocked account is refused without
    // asking it. The account's failure count is read with it, shared by every
    // node; reading creates nothing, so a refused address leaves no user row.
    let account = state.store.account(&address).await?;
    let now = unix_now();
    if account.failures.block(now) {
        info!(target: "postern::login", protocol = "web", user = %address, client = %ip, result = "refused", reason = "account-blocked");
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
        warn!(user = %address, error = %err, "web login: upstream check failed");
        WebError::Upstream
    })?;
    if !right {
        if state.penalties.failed(ip, attempt) {
            state.gate.count_login_failure(&address, now).await;
        }
        info!(target: "postern::login", protocol = "web", user = %address, client = %ip, result = "refused", reason = "upstream-refused");
        return Ok(PasswordOutcome::Wrong);
    }
    state.penalties.succeeded(ip, &address);
    state
        .gate
        .login_succeeded(&address, AfterSuccess::for_account(&account))
        .await;
    if account.state().disabled {
        info!(target: "postern::login", protocol = "web", user = %address, client = %ip, result = "refused", reason = "disabled");
        return Err(WebError::Forbidden(
            "this account is disabled; ask your administrator".into(),
        ));
    }
    let step = decide_web_login(account.policy().as_ref(), account.state(), now);
    info!(target: "postern::login", protocol = "web", user = %address, client = %ip, result = "password-ok", next = ?step);
    Ok(PasswordOutcome::Next(match step {
        WebLoginStep::Done | WebLoginStep::DoneMayEnroll => Auth::User {
            address,
            impersonator: None,
        },
        WebLoginStep::SecondStep => Auth::SecondStep { address },
        WebLoginStep::MustEnroll => Auth::MustEnroll { address },
    }))
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
    let outcome = check_second_step(state, address, session_id, code, ip).await;
    super::login_counts::count(super::login_counts::code(&outcome));
    outcome
}

async fn check_second_step(
    state: &WebState,
    address: &str,
    session_id: &str,
    code: &str,
    ip: Option<&str>,
) -> Result<CodeOutcome, WebError> {
    let session_key = format!("s:{session_id}");
    let user_key = format!("u:{address}");
    let keys = [session_key.as_str(), user_key.as_str()];
    if state.attempts.locked(&keys) {
        return Ok(CodeOutcome::Locked);
    }
    let (_, user) = user_context(state, address).await?;
    let outcome = check_code(state, &user, code).await?;
    match outcome {
        CodeOutcome::Accepted => {
            state.attempts.succeed(&keys);
            state
                .store
                .audit(
                    &user_actor(address, None),
                    "web.login",
                    address,
                    "second step",
                    ip,
                )
                .await?;
        }
        _ => {
            state.attempts.fail(&keys);
            state
                .store
                .audit(
                    &user_actor(address, None),
                    "web.login.code_refused",
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
/// domain's effective status is Disabled.
pub async fn pending_totp(
    state: &WebState,
    address: &str,
    actor: &str,
) -> Result<PendingTotp, WebError> {
    let (domain, user) = user_context(state, address).await?;
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
                .add_second_factor(user.id, FactorKind::Totp, &secret, false, actor)
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
    address: &str,
    code: &str,
    actor: &str,
) -> Result<bool, WebError> {
    let key = format!("u:{address}");
    if state.attempts.locked(&[&key]) {
        return Err(WebError::Forbidden(
            "too many wrong codes; wait 15 minutes".into(),
        ));
    }
    let pending = pending_totp(state, address, actor).await?;
    let (_, user) = user_context(state, address).await?;
    let now = u64::try_from(unix_now()).unwrap_or(0);
    let step = totp::matching_step(&pending.secret, code, now)
        .map_err(|_| WebError::BadRequest("the stored secret is invalid".into()))?;
    let Some(step) = step else {
        state.attempts.fail(&[&key]);
        return Ok(false);
    };
    if !state.store.use_totp_step(pending.factor_id, step).await? {
        return Ok(false);
    }
    state
        .store
        .confirm_second_factor(user.id, pending.factor_id, actor)
        .await?;
    state.attempts.succeed(&[&key]);
    Ok(true)
}

/// Characters of a backup code (50 bits from a 32-letter alphabet).
const BACKUP_CODE_LEN: usize = 10;

/// Ten fresh backup codes replacing any earlier ones; shown once.
pub async fn new_backup_codes(
    state: &WebState,
    address: &str,
    actor: &str,
) -> Result<Vec<String>, WebError> {
    let (_, user) = user_context(state, address).await?;
    if !user.enrolled {
        return Err(WebError::Forbidden(
            "set up an authenticator app first".into(),
        ));
    }
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
        .replace_backup_codes(user.id, &hashes, actor)
        .await?;
    Ok(codes)
}

/// Turns 2-Step off for the user: removes every factor and backup code. Not while
/// the domain forces it.
pub async fn turn_off(state: &WebState, address: &str, actor: &str) -> Result<(), WebError> {
    let (domain, user) = user_context(state, address).await?;
    if effective_status(domain.as_ref()) == DomainStatus::Forced {
        return Err(WebError::Forbidden(
            "your domain requires 2-Step Authentication".into(),
        ));
    }
    for factor in state.store.second_factors(user.id).await? {
        state
            .store
            .remove_second_factor(user.id, factor.id, actor)
            .await?;
    }
    state
        .store
        .replace_backup_codes(user.id, &[], actor)
        .await?;
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

pub async fn create_app_password(
    state: &WebState,
    address: &str,
    name: &str,
    scopes: Scopes,
    expires_days: Option<u32>,
    actor: &str,
) -> Result<IssuedAppPassword, WebError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(WebError::BadRequest(
            "give the device a name of 1 to 64 characters".into(),
        ));
    }
    let expires_at = match expires_days {
        None | Some(0) => None,
        Some(days) if days <= 3650 => Some(unix_now() + i64::from(days) * 86_400),
        Some(_) => {
            return Err(WebError::BadRequest("expiry: at most 3650 days".into()));
        }
    };
    issue_app_password(
        &state.store,
        &state.key,
        address,
        name,
        scopes,
        expires_at,
        actor,
    )
    .await
    .map_err(|err| match err {
        crate::credentials::issue::IssueError::Store(StoreError::TooManyAppPasswords) => {
            WebError::BadRequest("at most 40 application passwords; revoke one first".into())
        }
        crate::credentials::issue::IssueError::Store(err) => WebError::from(err),
        crate::credentials::issue::IssueError::Hash(detail) => {
            warn!(%detail, "hashing an app password failed");
            WebError::BadRequest("could not create the password; try again".into())
        }
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
    actor: &str,
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
    Ok(DomainOverview {
        domain: record,
        primary_sessions,
        users,
    })
}

pub async fn set_domain_status(
    state: &WebState,
    domain: &str,
    status: DomainStatus,
    grace_days: Option<u32>,
    actor: &str,
) -> Result<(), WebError> {
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
    let grace_until = match grace_days {
        None | Some(0) => None,
        Some(days) if days <= 365 => Some(unix_now() + i64::from(days) * 86_400),
        Some(_) => return Err(WebError::BadRequest("grace: at most 365 days".into())),
    };
    Ok(state
        .store
        .set_domain_status(domain, status, grace_until, actor)
        .await?)
}

pub async fn reset_user(
    state: &WebState,
    domain: &str,
    target: &str,
    actor: &str,
) -> Result<(), WebError> {
    let target = normalize_address(target)?;
    if domain_of(&target) != domain {
        return Err(WebError::Forbidden(format!("{target} is not in {domain}")));
    }
    Ok(state.store.reset_user(&target, actor).await?)
}

/// Checks a system administrator's password (Argon2, off the runtime).
pub async fn sysadmin_login(
    state: &WebState,
    name: &str,
    password: &str,
    ip: Option<&str>,
) -> Result<bool, WebError> {
    let key = format!("a:{}", name.trim());
    if state.attempts.locked(&[&key]) {
        return Err(WebError::Forbidden(
            "too many wrong passwords; wait 15 minutes".into(),
        ));
    }
    let hash = state.store.sysadmin_hash(name).await?;
    let password = Secret::from(password);
    let right = match hash {
        None => false,
        Some(hash) => tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.expose().as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false),
    };
    let actor = format!("sysadmin:{}", name.trim());
    if right {
        state.attempts.succeed(&[&key]);
        state
            .store
            .audit(&actor, "web.admin_login", name.trim(), "", ip)
            .await?;
    } else {
        state.attempts.fail(&[&key]);
        state
            .store
            .audit(&actor, "web.admin_login.refused", name.trim(), "", ip)
            .await?;
    }
    Ok(right)
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

/// A first start with no system administrator: create `admin` with a random
/// password and log it once.
pub async fn ensure_first_sysadmin(store: &Store) {
    match store.sysadmin_count().await {
        Ok(0) => {}
        Ok(_) => return,
        Err(err) => {
            warn!(error = %err, "could not count system administrators");
            return;
        }
    }
    let password = AppPassword::generate().display();
    let secret = password.clone();
    let hashed = tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(secret.expose().as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    })
    .await;
    let hash = match hashed {
        Ok(Ok(hash)) => hash,
        Ok(Err(err)) => {
            warn!(error = %err, "could not hash the first administrator's password");
            return;
        }
        Err(err) => {
            warn!(error = %err, "could not hash the first administrator's password");
            return;
        }
    };
    match store.add_sysadmin("admin", &hash, "postern").await {
        Ok(()) => warn!(
            password = %password.expose(),
            "no system administrator existed: created `admin` with this one-time password; \
             change it with `postern admin sysadmin add admin`"
        ),
        Err(err) => warn!(error = %err, "could not create the first system administrator"),
    }
}
