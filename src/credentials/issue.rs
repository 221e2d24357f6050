//! Issuing an app password: generate, store its keyed lookup. The one path used
//! by the CLI, the web UI and tests.

use super::app_password::AppPassword;
use super::key::InstanceKey;
use crate::policy::Scopes;
use crate::store::{NewAppPassword, Store, StoreError};

/// What the user needs, shown once.
#[derive(Debug)]
pub struct IssuedAppPassword {
    pub id: i64,
    pub password: AppPassword,
}

/// Creates an app password for `address` (the user record is created on first
/// sight). At most `MAX_APP_PASSWORDS` per user.
pub async fn issue_app_password(
    store: &Store,
    key: &InstanceKey,
    address: &str,
    name: &str,
    scopes: Scopes,
    expires_at: Option<i64>,
    actor: &str,
) -> Result<IssuedAppPassword, StoreError> {
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
            },
            actor,
        )
        .await?;
    Ok(IssuedAppPassword { id, password })
}
