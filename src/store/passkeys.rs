//! Passkeys (WebAuthn credentials) and the registration and sign-in ceremonies in
//! progress. A passkey makes its user enrolled (see `factors::enrolled_condition`).
//! A ceremony's state is a row keyed by a random id, bound to its user, valid for
//! [`CEREMONY_LIFETIME`] seconds and deleted by the one call that takes it, so a
//! ceremony begun on one node finishes on any other.
//!
//! The store keeps the credential as the text the web layer gives it (the
//! `webauthn-rs` `Passkey` as JSON); it knows nothing of WebAuthn itself.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::audit::{AuditActor, insert_audit};
use super::events::{EventKind, insert_event};
use super::factors::is_enrolled;
use super::notices::enqueue_in;
use super::users::{OwnedRow, address_of, remove_owned};
use super::{Store, StoreError, unix_now};
use crate::notices::{self, NoticeKind};

/// How long a begun ceremony can be finished, in seconds.
pub const CEREMONY_LIFETIME: i64 = 300;

/// Why a ceremony was begun.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CeremonyPurpose {
    /// Adding a passkey on the account page.
    Register,
    /// Signing in with a passkey: the second step, or "confirm it is you"
    /// before a sensitive action (the same WebAuthn authentication ceremony).
    Login,
}

impl CeremonyPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Login => "login",
        }
    }
}

/// A passkey as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasskeyRecord {
    pub id: i64,
    pub user_id: i64,
    /// The user's name for it ("laptop", "phone").
    pub name: String,
    /// The WebAuthn credential id, base64url.
    pub credential_id: String,
    /// The credential (public key, counter) as the web layer serialised it.
    pub credential: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

fn passkey_from_row(row: &AnyRow) -> Result<PasskeyRecord, StoreError> {
    Ok(PasskeyRecord {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        credential_id: row.try_get("credential_id")?,
        credential: row.try_get("credential")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

impl Store {
    /// Stores a new passkey of the user; returns its id. The user's first factor
    /// makes them enrolled (a `user_enrolled` event, as for a confirmed factor).
    pub async fn add_passkey(
        &self,
        user_id: i64,
        name: &str,
        credential_id: &str,
        credential: &str,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<i64, StoreError> {
        let mut tx = self.begin().await?;
        let address = address_of(&mut tx, user_id).await?;
        let was_enrolled = is_enrolled(&mut tx, user_id).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO passkeys (user_id, name, credential_id, credential, created_at, \
             last_used_at) VALUES ($1, $2, $3, $4, $5, NULL) RETURNING id",
        )
        .bind(user_id)
        .bind(name)
        .bind(credential_id)
        .bind(credential)
        .bind(unix_now())
        .fetch_one(&mut *tx)
        .await?;
        let detail = format!("id={id} name={name:?}");
        insert_audit(&mut tx, actor, "passkey.add", &address, &detail, None).await?;
        let kind = if was_enrolled {
            NoticeKind::FactorAdded
        } else {
            NoticeKind::TwoStepOn
        };
        let words = notices::passkey_words(name);
        enqueue_in(&mut tx, self.backend, &address, kind, &words, actor, &[]).await?;
        if !was_enrolled {
            insert_event(
                &mut tx,
                self.backend,
                EventKind::UserEnrolled,
                None,
                Some(&address),
                None,
            )
            .await?;
        }
        self.commit_change(tx).await?;
        Ok(id)
    }

    /// The user's passkeys, oldest first.
    pub async fn passkeys(&self, user_id: i64) -> Result<Vec<PasskeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, user_id, name, credential_id, credential, created_at, last_used_at \
             FROM passkeys WHERE user_id = $1 ORDER BY id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(passkey_from_row).collect()
    }

    /// Deletes one of the user's passkeys.
    pub async fn remove_passkey(
        &self,
        user_id: i64,
        passkey_id: i64,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let name: Option<String> =
            sqlx::query_scalar("SELECT name FROM passkeys WHERE id = $1 AND user_id = $2")
                .bind(passkey_id)
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
        let address = remove_owned(&mut tx, OwnedRow::Passkey, user_id, passkey_id, actor).await?;
        let kind = if is_enrolled(&mut tx, user_id).await? {
            NoticeKind::FactorRemoved
        } else {
            NoticeKind::TwoStepOff
        };
        let words = notices::passkey_words(name.as_deref().unwrap_or_default());
        enqueue_in(&mut tx, self.backend, &address, kind, &words, actor, &[]).await?;
        self.commit_change(tx).await?;
        Ok(())
    }

    /// Records a sign-in with the passkey: its updated credential (the
    /// authenticator's counter) and the time.
    pub async fn passkey_used(&self, passkey_id: i64, credential: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE passkeys SET credential = $2, last_used_at = $3 WHERE id = $1")
            .bind(passkey_id)
            .bind(credential)
            .bind(unix_now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stores a begun ceremony's state under a new random id (returned), valid for
    /// [`CEREMONY_LIFETIME`] seconds. Expired ceremonies are swept on the way.
    pub async fn begin_ceremony(
        &self,
        user_id: i64,
        purpose: CeremonyPurpose,
        state: &str,
    ) -> Result<String, StoreError> {
        let now = unix_now();
        sqlx::query("DELETE FROM webauthn_ceremonies WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        let id = hex::encode(rand::random::<[u8; 16]>());
        sqlx::query(
            "INSERT INTO webauthn_ceremonies (id, user_id, purpose, state, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(user_id)
        .bind(purpose.as_str())
        .bind(state)
        .bind(now + CEREMONY_LIFETIME)
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// Takes a ceremony's state: only once, only for the user and purpose it was
    /// begun for, only before it expires. `None` otherwise.
    pub async fn take_ceremony(
        &self,
        id: &str,
        user_id: i64,
        purpose: CeremonyPurpose,
    ) -> Result<Option<String>, StoreError> {
        let state: Option<String> = sqlx::query_scalar(
            "DELETE FROM webauthn_ceremonies \
             WHERE id = $1 AND user_id = $2 AND purpose = $3 AND expires_at > $4 \
             RETURNING state",
        )
        .bind(id)
        .bind(user_id)
        .bind(purpose.as_str())
        .bind(unix_now())
        .fetch_optional(&self.pool)
        .await?;
        Ok(state)
    }

    /// Makes a ceremony expire now (tests of the expiry).
    #[doc(hidden)]
    pub async fn expire_ceremony(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE webauthn_ceremonies SET expires_at = $2 WHERE id = $1")
            .bind(id)
            .bind(unix_now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
