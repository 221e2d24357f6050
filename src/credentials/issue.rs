//! Issuing an app password: generate, hash off the runtime, store with its keyed
//! lookup. The one path used by the CLI, the web UI and tests.

use super::app_password::AppPassword;
use super::key::InstanceKey;
use crate::policy::Scopes;
use crate::store::{NewAppPassword, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("hashing the app password failed: {0}")]
    Hash(String),
}

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
) -> Result<IssuedAppPassword, IssueError> {
    let user = store.ensure_user(address).await?;
    let password = AppPassword::generate();
    let canonical = password.canonical();
    let lookup = canonical.lookup_key(key, &user.address);
    let hash = tokio::task::spawn_blocking(move || canonical.hash())
        .await
        .map_err(|e| IssueError::Hash(e.to_string()))?
        .map_err(|e| IssueError::Hash(e.to_string()))?;
    let id = store
        .create_app_password(
            user.id,
            NewAppPassword {
                name: name.to_owned(),
                lookup,
                hash,
                scopes,
                expires_at,
            },
            actor,
        )
        .await?;
    Ok(IssuedAppPassword { id, password })
}
