//! Passkeys (WebAuthn) as a second factor, behind the pages and the API: the
//! registration ceremony (on the account page, or as the first factor of a
//! forced enrollment), the sign-in ceremony (at the second step, and to confirm
//! it is the user before a sensitive action), and removal. Each ceremony's state is kept in the store (see
//! `store::passkeys`), never in this node's memory, so a ceremony begun through
//! one node finishes through another.

use serde_json::Value;
use tracing::warn;
use webauthn_rs::Webauthn;
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Uuid,
};

use super::WebState;
use super::ops::{
    CodeOutcome, ReauthOutcome, Requester, WebError, authorize, effective_status, user_actor,
    user_context,
};
use crate::credentials::passkey::credential_id;
use crate::login_log::LoginAttempt;
use crate::policy::{DomainStatus, Proof, SensitiveAction, may_remove_factor};
use crate::store::{CeremonyPurpose, PasskeyRecord, UserRecord};

/// Longest passkey name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// A begun ceremony: its id (sent back with the result) and the options for
/// `navigator.credentials.create` / `.get` (WebAuthn JSON, binary as base64url).
pub struct Begun {
    pub ceremony: String,
    pub options: Value,
}

fn relying_party(state: &WebState) -> Result<&Webauthn, WebError> {
    state
        .webauthn
        .as_deref()
        .map_err(|why| WebError::Forbidden(why.clone()))
}

/// The user handle the authenticator stores: derived from the user id with the
/// instance key, so it names no mailbox.
fn user_handle(state: &WebState, user: &UserRecord) -> Uuid {
    let mac = state.key.mac(&[b"passkey-user", &user.id.to_be_bytes()]);
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&mac[..16]);
    Uuid::from_bytes(bytes)
}

fn parse_passkey(record: &PasskeyRecord) -> Option<Passkey> {
    match serde_json::from_str(&record.credential) {
        Ok(passkey) => Some(passkey),
        Err(err) => {
            warn!(passkey = record.id, error = %err, "a stored passkey cannot be read; skipped");
            None
        }
    }
}

fn internal(what: &str, err: impl std::fmt::Display) -> WebError {
    warn!(error = %err, "passkey {what}");
    WebError::BadRequest(format!("the passkey {what} failed; start again"))
}

/// The user's passkeys, for the account page.
pub async fn list(state: &WebState, address: &str) -> Result<Vec<PasskeyRecord>, WebError> {
    let (_, user) = user_context(state, address).await?;
    Ok(state.store.passkeys(user.id).await?)
}

/// Begins adding a passkey. Refused while the domain is Disabled (as for an
/// authenticator app), to an impersonator, and without `public_url`.
pub async fn begin_registration(state: &WebState, who: &Requester<'_>) -> Result<Begun, WebError> {
    let (domain, user) = user_context(state, who.address).await?;
    authorize(&user, who, SensitiveAction::AddFactor)?;
    if effective_status(domain.as_ref()) == DomainStatus::Disabled {
        return Err(WebError::Forbidden(
            "2-Step Authentication is not turned on for your domain".into(),
        ));
    }
    let rp = relying_party(state)?;
    let exclude = state
        .store
        .passkeys(user.id)
        .await?
        .iter()
        .filter_map(parse_passkey)
        .map(|p| p.cred_id().clone())
        .collect::<Vec<_>>();
    let (options, registration) = rp
        .start_passkey_registration(
            user_handle(state, &user),
            &user.address,
            &user.address,
            Some(exclude),
        )
        .map_err(|err| internal("registration", err))?;
    let saved =
        serde_json::to_string(&registration).map_err(|err| internal("registration", err))?;
    let ceremony = state
        .store
        .begin_ceremony(user.id, CeremonyPurpose::Register, &saved)
        .await?;
    let options = serde_json::to_value(&options).map_err(|err| internal("registration", err))?;
    Ok(Begun { ceremony, options })
}

/// The name a user gave, trimmed; refused when empty or too long.
pub fn checked_name(name: &str) -> Result<&str, WebError> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(WebError::BadRequest(format!(
            "give the passkey a name of 1 to {MAX_NAME_CHARS} characters"
        )));
    }
    Ok(name)
}

/// Finishes adding a passkey with the browser's answer; returns the new id.
pub async fn finish_registration(
    state: &WebState,
    who: &Requester<'_>,
    ceremony: &str,
    name: &str,
    credential: &Value,
) -> Result<i64, WebError> {
    let name = checked_name(name)?;
    let (_, user) = user_context(state, who.address).await?;
    authorize(&user, who, SensitiveAction::AddFactor)?;
    let rp = relying_party(state)?;
    let Some(saved) = state
        .store
        .take_ceremony(ceremony, user.id, CeremonyPurpose::Register)
        .await?
    else {
        return Err(WebError::BadRequest(
            "that passkey request has expired or was already used; start again".into(),
        ));
    };
    let registration: PasskeyRegistration =
        serde_json::from_str(&saved).map_err(|err| internal("registration", err))?;
    let answer: RegisterPublicKeyCredential = serde_json::from_value(credential.clone())
        .map_err(|err| WebError::BadRequest(format!("not a WebAuthn credential: {err}")))?;
    let passkey = rp
        .finish_passkey_registration(&answer, &registration)
        .map_err(|err| {
            warn!(user = %user.address, error = %err, "a passkey registration was refused");
            WebError::BadRequest(format!("the browser's passkey was refused: {err}"))
        })?;
    let stored = serde_json::to_string(&passkey).map_err(|err| internal("registration", err))?;
    let id = credential_id(passkey.cred_id().as_ref());
    Ok(state
        .store
        .add_passkey(user.id, name, &id, &stored, &who.actor())
        .await?)
}

/// Begins a sign-in with a passkey at the second step (the password step is
/// done). Refused when the user has none.
pub async fn begin_login(state: &WebState, address: &str) -> Result<Begun, WebError> {
    let rp = relying_party(state)?;
    let (_, user) = user_context(state, address).await?;
    let passkeys: Vec<Passkey> = state
        .store
        .passkeys(user.id)
        .await?
        .iter()
        .filter_map(parse_passkey)
        .collect();
    if passkeys.is_empty() {
        return Err(WebError::BadRequest("you have no passkey yet".into()));
    }
    let (options, authentication) = rp
        .start_passkey_authentication(&passkeys)
        .map_err(|err| internal("sign-in", err))?;
    let saved = serde_json::to_string(&authentication).map_err(|err| internal("sign-in", err))?;
    let ceremony = state
        .store
        .begin_ceremony(user.id, CeremonyPurpose::Login, &saved)
        .await?;
    let options = serde_json::to_value(&options).map_err(|err| internal("sign-in", err))?;
    Ok(Begun { ceremony, options })
}

/// Begins a "confirm it is you" with a passkey: the same WebAuthn ceremony as
/// the sign-in's (an assertion over a fresh challenge), for a signed-in user
/// themselves, never for a system administrator acting as them.
pub async fn begin_reauth(state: &WebState, who: &Requester<'_>) -> Result<Begun, WebError> {
    if who.impersonator.is_some() {
        return Err(WebError::NotForImpersonator);
    }
    begin_login(state, who.address).await
}

/// Which step a passkey answers, for the log line and the audit row.
#[derive(Clone, Copy)]
enum Step {
    /// The sign-in's second step.
    SignIn,
    /// "Confirm it is you" before a sensitive action.
    Reauth,
}

impl Step {
    fn action(self) -> &'static str {
        match self {
            Self::SignIn => "web.login",
            Self::Reauth => "web.reauth",
        }
    }

    fn detail(self, name: &str) -> String {
        match self {
            Self::SignIn => format!("second step: passkey {name:?}"),
            Self::Reauth => format!("passkey {name:?}"),
        }
    }
}

/// Finishes a second step with a passkey, under the second step's attempt
/// limits (the same counters as codes); audited like a code.
pub async fn finish_login(
    state: &WebState,
    address: &str,
    session_id: &str,
    ceremony: &str,
    credential: &Value,
    ip: Option<&str>,
) -> Result<CodeOutcome, WebError> {
    let outcome = check(
        state,
        address,
        session_id,
        ceremony,
        credential,
        ip,
        Step::SignIn,
    )
    .await;
    super::login_counts::count(super::login_counts::code(&outcome));
    outcome
}

/// "Confirm it is you" with a passkey: under the same attempt lock as a code
/// (a refused passkey counts as a wrong code, a locked session or user is
/// refused before the signature is looked at); on success the session records
/// a fresh second-factor proof.
pub async fn reauthenticate(
    state: &WebState,
    session_id: &str,
    who: &Requester<'_>,
    ceremony: &str,
    credential: &Value,
) -> Result<ReauthOutcome, WebError> {
    if who.impersonator.is_some() {
        return Err(WebError::NotForImpersonator);
    }
    let outcome = check(
        state,
        who.address,
        session_id,
        ceremony,
        credential,
        who.ip,
        Step::Reauth,
    )
    .await?;
    if outcome != CodeOutcome::Accepted {
        return Ok(ReauthOutcome::Refused(outcome));
    }
    state
        .sessions
        .record_proof(session_id, Proof::SecondFactor)
        .await;
    Ok(ReauthOutcome::Accepted(Proof::SecondFactor))
}

/// A passkey's answer to a sign-in ceremony, under the attempt limits keyed by
/// the session and the user (those of `ops::second_step`).
async fn check(
    state: &WebState,
    address: &str,
    session_id: &str,
    ceremony: &str,
    credential: &Value,
    ip: Option<&str>,
    step: Step,
) -> Result<CodeOutcome, WebError> {
    let session_key = format!("s:{session_id}");
    let user_key = format!("u:{address}");
    let keys = [session_key.as_str(), user_key.as_str()];
    let client = ip
        .and_then(|ip| ip.parse().ok())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let attempt = LoginAttempt::new("web", "second-step", address, client);
    if state.attempts.locked(&keys).await? {
        attempt.refused("locked");
        return Ok(CodeOutcome::Locked);
    }
    let rp = relying_party(state)?;
    let (_, user) = user_context(state, address).await?;
    let verified = verify_login(state, rp, &user, ceremony, credential).await?;
    let actor = user_actor(address, None);
    match verified {
        Some(name) => {
            attempt.ok();
            state.attempts.succeed(&keys).await?;
            state
                .store
                .audit(&actor, step.action(), address, &step.detail(&name), ip)
                .await?;
            Ok(CodeOutcome::Accepted)
        }
        None => {
            attempt.refused("wrong-passkey");
            state.attempts.fail(&keys).await?;
            let action = format!("{}.passkey_refused", step.action());
            state
                .store
                .audit(&actor, &action, address, "passkey", ip)
                .await?;
            Ok(CodeOutcome::Wrong)
        }
    }
}

/// The name of the passkey that signed, after recording its use; `None` when
/// the ceremony or the signature is not right.
async fn verify_login(
    state: &WebState,
    rp: &Webauthn,
    user: &UserRecord,
    ceremony: &str,
    credential: &Value,
) -> Result<Option<String>, WebError> {
    let Some(saved) = state
        .store
        .take_ceremony(ceremony, user.id, CeremonyPurpose::Login)
        .await?
    else {
        return Ok(None);
    };
    let Ok(authentication) = serde_json::from_str::<PasskeyAuthentication>(&saved) else {
        warn!(user = %user.address, "a stored passkey sign-in cannot be read");
        return Ok(None);
    };
    let Ok(answer) = serde_json::from_value::<PublicKeyCredential>(credential.clone()) else {
        return Ok(None);
    };
    let result = match rp.finish_passkey_authentication(&answer, &authentication) {
        Ok(result) => result,
        Err(err) => {
            warn!(user = %user.address, error = %err, "a passkey sign-in was refused");
            return Ok(None);
        }
    };
    let id = credential_id(result.cred_id().as_ref());
    for record in state.store.passkeys(user.id).await? {
        if record.credential_id != id {
            continue;
        }
        let Some(mut passkey) = parse_passkey(&record) else {
            return Ok(None);
        };
        passkey.update_credential(&result);
        let updated = serde_json::to_string(&passkey).unwrap_or(record.credential.clone());
        state.store.passkey_used(record.id, &updated).await?;
        return Ok(Some(record.name));
    }
    Ok(None)
}

/// Whether the user could remove one passkey now: false when it is their last
/// factor and the domain forces 2-Step.
pub async fn removable(state: &WebState, address: &str) -> Result<bool, WebError> {
    let (domain, user) = user_context(state, address).await?;
    let others =
        other_factors(state, &user).await? || state.store.passkeys(user.id).await?.len() > 1;
    Ok(may_remove_factor(effective_status(domain.as_ref()), others))
}

async fn other_factors(state: &WebState, user: &UserRecord) -> Result<bool, WebError> {
    Ok(state
        .store
        .second_factors(user.id)
        .await?
        .iter()
        .any(|f| f.confirmed))
}

/// Removes one of the user's passkeys: not the last factor while the domain
/// forces 2-Step. Removing the last factor also voids the backup codes and
/// forgets the trusted browsers.
pub async fn remove(state: &WebState, who: &Requester<'_>, id: i64) -> Result<(), WebError> {
    let (domain, user) = user_context(state, who.address).await?;
    let passkeys = state.store.passkeys(user.id).await?;
    if !passkeys.iter().any(|p| p.id == id) {
        return Err(WebError::NotFound);
    }
    authorize(&user, who, SensitiveAction::RemoveFactor)?;
    let others = other_factors(state, &user).await? || passkeys.len() > 1;
    if !may_remove_factor(effective_status(domain.as_ref()), others) {
        return Err(WebError::Forbidden(
            "your domain requires 2-Step Authentication: add another passkey or an \
             authenticator app before removing your last one"
                .into(),
        ));
    }
    let actor = &who.actor();
    state.store.remove_passkey(user.id, id, actor).await?;
    if !others {
        state
            .store
            .replace_backup_codes(user.id, &[], actor)
            .await?;
        super::trusted::two_step_off(state, user.id, actor).await?;
    }
    Ok(())
}
