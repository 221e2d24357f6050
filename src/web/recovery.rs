//! The recovery e-mail second factor, behind both the pages and the JSON API:
//! adding an address (confirmed by a code sent to it), removing it, and sending
//! and checking sign-in codes.
//!
//! Codes are eight digits, kept only as a keyed hash (like backup codes), live
//! for ten minutes, work once and are void after five wrong guesses; sending is
//! limited per user (see `crate::store`'s email code limits). A failed send is
//! logged without the code and leaves nothing usable behind.

use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::WebState;
use super::ops::{
    CodeOutcome, Requester, WebError, authorize, effective_status, unix_now, user_actor,
    user_context,
};
use crate::address::same;
use crate::policy::{DomainStatus, SensitiveAction};
use crate::recovery_mail::{CodeMail, mask_address, parse_address};
use crate::store::{EmailCodeIssue, EmailCodePurpose, FactorKind, SecondFactorRecord, UserRecord};

/// Digits of a recovery e-mail code.
pub const CODE_DIGITS: usize = 8;

/// A user's recovery address as the pages show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryAddress {
    pub factor_id: i64,
    /// `a***@example.org`.
    pub masked: String,
    /// Confirmed with a code: it counts as a second factor.
    pub confirmed: bool,
}

/// What a code for a new recovery address led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfirmOutcome {
    Accepted,
    /// Wrong; this many guesses are left before the code is void.
    Wrong {
        left: i64,
    },
    /// No usable code: expired, used, void after wrong guesses, or never sent.
    Void,
}

/// Eight random digits.
fn new_code() -> String {
    format!("{:08}", rand::random_range(0..100_000_000u32))
}

/// `1234 5678`: easier to read off a phone.
fn display(code: &str) -> String {
    format!("{} {}", &code[..4], &code[4..])
}

/// The digits of a presented code, if it has the shape of one (spaces, dashes
/// ignored).
fn normalize(code: &str) -> Option<String> {
    let digits: String = code.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    (digits.len() == CODE_DIGITS && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

fn code_hash(state: &WebState, user_id: i64, purpose: EmailCodePurpose, digits: &str) -> String {
    hex::encode(state.key.mac(&[
        b"email-code",
        &user_id.to_be_bytes(),
        purpose.as_str().as_bytes(),
        digits.as_bytes(),
    ]))
}

fn hash_matches(presented: &str, stored: &str) -> bool {
    bool::from(presented.as_bytes().ct_eq(stored.as_bytes()))
}

fn limited(retry_after: i64) -> WebError {
    if retry_after <= 60 {
        WebError::TooMany(format!(
            "a code was sent less than a minute ago; wait {retry_after} seconds before asking \
             for another"
        ))
    } else {
        WebError::TooMany(format!(
            "too many codes were sent in the last hour; try again in {} minutes",
            (retry_after + 59) / 60
        ))
    }
}

fn email_factors(factors: Vec<SecondFactorRecord>) -> Vec<SecondFactorRecord> {
    factors
        .into_iter()
        .filter(|f| f.kind == FactorKind::Email)
        .collect()
}

/// The user's recovery address: the confirmed one, else the one being added.
pub async fn recovery_address(
    state: &WebState,
    user_id: i64,
) -> Result<Option<RecoveryAddress>, WebError> {
    let factors = email_factors(state.store.second_factors(user_id).await?);
    let chosen = factors
        .iter()
        .find(|f| f.confirmed)
        .or_else(|| factors.iter().next_back());
    Ok(chosen.map(|f| RecoveryAddress {
        factor_id: f.id,
        masked: mask_address(f.secret.expose()),
        confirmed: f.confirmed,
    }))
}

/// The confirmed recovery address of a user, masked, if there is one.
pub async fn confirmed_recovery(
    state: &WebState,
    address: &str,
) -> Result<Option<String>, WebError> {
    let (_, user) = user_context(state, address).await?;
    Ok(recovery_address(state, user.id)
        .await?
        .filter(|r| r.confirmed)
        .map(|r| r.masked))
}

/// Starts adding `recovery` as the user's recovery address and sends it a code.
/// Returns the masked address. On a send failure nothing is left behind.
pub async fn add_recovery_address(
    state: &WebState,
    who: &Requester<'_>,
    recovery: &str,
    ip: Option<&str>,
) -> Result<String, WebError> {
    let (domain, user) = user_context(state, who.address).await?;
    authorize(&user, who, SensitiveAction::AddFactor)?;
    let actor = &who.actor();
    if effective_status(domain.as_ref()) == DomainStatus::Disabled {
        return Err(WebError::Forbidden(
            "2-Step Authentication is not turned on for your domain".into(),
        ));
    }
    let Some(parsed) = parse_address(recovery) else {
        return Err(WebError::BadRequest(
            "enter an e-mail address such as name@example.org".into(),
        ));
    };
    let recovery = parsed.to_string();
    if same(&recovery, &user.address) {
        return Err(WebError::BadRequest(
            "use an address outside this mailbox: a code sent here would reach whoever \
             knows your password"
                .into(),
        ));
    }
    let factors = email_factors(state.store.second_factors(user.id).await?);
    if factors.iter().any(|f| f.confirmed) {
        return Err(WebError::BadRequest(
            "remove your current recovery address first".into(),
        ));
    }
    let code = new_code();
    let hash = code_hash(state, user.id, EmailCodePurpose::Confirm, &code);
    let factor_id = match state
        .store
        .start_email_factor(user.id, &recovery, &hash, unix_now(), actor)
        .await?
    {
        EmailCodeIssue::Issued { factor_id, .. } => factor_id,
        EmailCodeIssue::Limited { retry_after } => return Err(limited(retry_after)),
    };
    let masked = mask_address(&recovery);
    if let Err(err) = state
        .mailer
        .send_code(&recovery, &display(&code), CodeMail::Confirm)
        .await
    {
        warn!(user = %user.address, to = %masked, error = %err, "recovery e-mail: the confirmation code could not be sent");
        if let Err(err) = state
            .store
            .remove_second_factor(user.id, factor_id, actor)
            .await
        {
            warn!(user = %user.address, error = %err, "recovery e-mail: could not drop the unsent address");
        }
        return Err(WebError::Mail);
    }
    let detail = format!("purpose=confirm to={masked}");
    state
        .store
        .audit(&actor.name, "email_code.sent", &user.address, &detail, ip)
        .await?;
    info!(user = %user.address, to = %masked, "recovery e-mail: confirmation code sent");
    Ok(masked)
}

/// Confirms the recovery address being added with the code sent to it; the
/// user's first confirmed factor enrolls them (event for the live sessions,
/// audit row).
pub async fn confirm_recovery_address(
    state: &WebState,
    who: &Requester<'_>,
    code: &str,
) -> Result<ConfirmOutcome, WebError> {
    let (_, user) = user_context(state, who.address).await?;
    authorize(&user, who, SensitiveAction::AddFactor)?;
    let actor = &who.actor();
    let now = unix_now();
    let Some(live) = state
        .store
        .live_email_code(user.id, EmailCodePurpose::Confirm, now)
        .await?
    else {
        return Ok(ConfirmOutcome::Void);
    };
    let pending = email_factors(state.store.second_factors(user.id).await?)
        .into_iter()
        .any(|f| f.id == live.factor_id && !f.confirmed);
    if !pending {
        return Ok(ConfirmOutcome::Void);
    }
    let right = normalize(code).is_some_and(|digits| {
        hash_matches(
            &code_hash(state, user.id, EmailCodePurpose::Confirm, &digits),
            &live.code_hash,
        )
    });
    if !right {
        let left = state.store.fail_email_code(live.id).await?;
        return Ok(ConfirmOutcome::Wrong { left });
    }
    if !state.store.use_email_code(live.id, now).await? {
        return Ok(ConfirmOutcome::Void);
    }
    state
        .store
        .confirm_second_factor(user.id, live.factor_id, actor)
        .await?;
    Ok(ConfirmOutcome::Accepted)
}

/// Removes the recovery address (confirmed or being added). Not when it is the
/// last second factor of a user whose domain forces 2-Step; removing the last
/// factor also voids the backup codes and forgets the trusted browsers, as
/// turning 2-Step off does.
pub async fn remove_recovery_address(
    state: &WebState,
    who: &Requester<'_>,
) -> Result<(), WebError> {
    let (domain, user) = user_context(state, who.address).await?;
    let actor = &who.actor();
    let factors = state.store.second_factors(user.id).await?;
    let other_confirmed = factors
        .iter()
        .any(|f| f.kind != FactorKind::Email && f.confirmed)
        || !state.store.passkeys(user.id).await?.is_empty();
    let emails = email_factors(factors);
    if emails.is_empty() {
        return Err(WebError::NotFound);
    }
    let was_confirmed = emails.iter().any(|f| f.confirmed);
    // Dropping an address still being confirmed removes no factor.
    if was_confirmed {
        authorize(&user, who, SensitiveAction::RemoveFactor)?;
    } else if who.impersonator.is_some() {
        return Err(WebError::NotForImpersonator);
    }
    if was_confirmed
        && !other_confirmed
        && effective_status(domain.as_ref()) == DomainStatus::Forced
    {
        return Err(WebError::Forbidden(
            "your domain requires 2-Step Authentication: set up an authenticator app \
             before removing your recovery address"
                .into(),
        ));
    }
    for factor in emails {
        state
            .store
            .remove_second_factor(user.id, factor.id, actor)
            .await?;
    }
    if was_confirmed && !other_confirmed {
        state
            .store
            .replace_backup_codes(user.id, &[], actor)
            .await?;
        super::trusted::two_step_off(state, user.id, actor).await?;
    }
    Ok(())
}

/// Sends a sign-in code to the user's confirmed recovery address. Returns the
/// masked address.
pub async fn send_login_code(
    state: &WebState,
    address: &str,
    ip: Option<&str>,
) -> Result<String, WebError> {
    let (_, user) = user_context(state, address).await?;
    let factor = email_factors(state.store.second_factors(user.id).await?)
        .into_iter()
        .find(|f| f.confirmed)
        .ok_or_else(|| WebError::BadRequest("no recovery e-mail address is set up".into()))?;
    let code = new_code();
    let hash = code_hash(state, user.id, EmailCodePurpose::Login, &code);
    let code_id = match state
        .store
        .issue_email_code(
            user.id,
            factor.id,
            EmailCodePurpose::Login,
            &hash,
            unix_now(),
        )
        .await?
    {
        EmailCodeIssue::Issued { code_id, .. } => code_id,
        EmailCodeIssue::Limited { retry_after } => return Err(limited(retry_after)),
    };
    let to = factor.secret.expose();
    let masked = mask_address(to);
    if let Err(err) = state
        .mailer
        .send_code(to, &display(&code), CodeMail::Login)
        .await
    {
        warn!(user = %user.address, to = %masked, error = %err, "recovery e-mail: the sign-in code could not be sent");
        if let Err(err) = state.store.discard_email_code(code_id).await {
            warn!(user = %user.address, error = %err, "recovery e-mail: could not drop the unsent code");
        }
        return Err(WebError::Mail);
    }
    let detail = format!("purpose=login to={masked}");
    state
        .store
        .audit(
            &user_actor(&user.address, None),
            "email_code.sent",
            &user.address,
            &detail,
            ip,
        )
        .await?;
    info!(user = %user.address, to = %masked, "recovery e-mail: sign-in code sent");
    Ok(masked)
}

/// Checks a presented second-step code as a recovery e-mail code. `None`: it is
/// not one (wrong shape, or wrong while a code is live, which counts against
/// that code).
pub async fn check_login_code(
    state: &WebState,
    user: &UserRecord,
    code: &str,
) -> Result<Option<CodeOutcome>, WebError> {
    let Some(digits) = normalize(code) else {
        return Ok(None);
    };
    let now = unix_now();
    let Some(live) = state
        .store
        .live_email_code(user.id, EmailCodePurpose::Login, now)
        .await?
    else {
        return Ok(Some(CodeOutcome::Expired));
    };
    let presented = code_hash(state, user.id, EmailCodePurpose::Login, &digits);
    if !hash_matches(&presented, &live.code_hash) {
        state.store.fail_email_code(live.id).await?;
        return Ok(None);
    }
    Ok(Some(if state.store.use_email_code(live.id, now).await? {
        CodeOutcome::Accepted
    } else {
        CodeOutcome::Replayed
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_eight_digits_and_typed_with_or_without_spaces() {
        let code = new_code();
        assert_eq!(normalize(&code), Some(code.clone()));
        assert_eq!(normalize(&display(&code)), Some(code.clone()));
        assert_eq!(normalize("1234-5678"), Some("12345678".into()));
        assert_eq!(normalize("123456"), None);
        assert_eq!(normalize("1234567a"), None);
    }
}
