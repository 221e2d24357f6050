//! Issuing an app password: generate, store its keyed lookup. The one path used
//! by the CLI, the web UI and tests.

use super::app_password::AppPassword;
use super::key::InstanceKey;
use crate::policy::{Scopes, SourceNetworks};
use crate::store::{AuditActor, NewAppPassword, Store, StoreError};

/// The longest lifetime of an app password, in days (`docs/openapi.yaml`).
pub const MAX_EXPIRES_DAYS: i64 = 3650;

/// An `expires_days` outside 1 to [`MAX_EXPIRES_DAYS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expiry: a whole number of days from 1 to 3650 (leave it out for no expiry)")]
pub struct BadExpiry;

/// When an app password created at `now` expires after `days`: the one check of
/// `expires_days` for the CLI, the web page and the API. 0 is refused, not taken
/// for "never" (no expiry is the field left out).
pub fn expiry_after_days(days: i64, now: i64) -> Result<i64, BadExpiry> {
    if (1..=MAX_EXPIRES_DAYS).contains(&days) {
        Ok(now + days * 86_400)
    } else {
        Err(BadExpiry)
    }
}

/// What the user needs, shown once.
#[derive(Debug)]
pub struct IssuedAppPassword {
    pub id: i64,
    pub password: AppPassword,
}

/// Creates an app password for `address`, usable from anywhere (the user
/// record is created on first sight). At most `MAX_APP_PASSWORDS` per user.
pub async fn issue_app_password(
    store: &Store,
    key: &InstanceKey,
    address: &str,
    name: &str,
    scopes: Scopes,
    expires_at: Option<i64>,
    actor: &(impl AuditActor + ?Sized),
) -> Result<IssuedAppPassword, StoreError> {
    let limits = AppPasswordLimits {
        scopes,
        expires_at,
        networks: SourceNetworks::ANYWHERE,
    };
    issue_limited_app_password(store, key, address, name, limits, actor).await
}

/// What an app password may be used for, fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPasswordLimits {
    pub scopes: Scopes,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub networks: SourceNetworks,
}

/// [`issue_app_password`] with source networks.
pub async fn issue_limited_app_password(
    store: &Store,
    key: &InstanceKey,
    address: &str,
    name: &str,
    limits: AppPasswordLimits,
    actor: &(impl AuditActor + ?Sized),
) -> Result<IssuedAppPassword, StoreError> {
    let AppPasswordLimits {
        scopes,
        expires_at,
        networks,
    } = limits;
    let user = store.ensure_user(address).await?;
    let password = AppPassword::generate();
    let lookup = password.canonical().lookup_key(key, &user.address);
    let id = store
        .create_app_password(
            user.id,
            NewAppPassword {
                name: name.to_owned(),
                lookup,
                scopes,
                expires_at,
                networks,
            },
            actor,
        )
        .await?;
    Ok(IssuedAppPassword { id, password })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_one_to_3650_days() {
        assert_eq!(expiry_after_days(1, 100), Ok(100 + 86_400));
        assert_eq!(expiry_after_days(3650, 0), Ok(3650 * 86_400));
        for bad in [0, -1, 3651, i64::MAX] {
            assert_eq!(expiry_after_days(bad, 0), Err(BadExpiry), "{bad}");
        }
    }
}
