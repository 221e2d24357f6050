//! Web sign-in sessions (`web_sessions`), shared by every node: a browser's
//! requests may reach any node, and a restart signs nobody out.
//!
//! The store keeps rows keyed by the keyed hash of the cookie's id (the web
//! layer hashes; the store never sees an id), and enforces expiry: a row past
//! its `expires_at` is never returned, and [`Store::sweep_web_sessions`]
//! deletes such rows. What a session's kind means is decided in
//! `crate::web::session`, not here.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::audit::{RemoteActor, insert_audit};
use super::{Store, StoreError};

/// One stored web session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebSessionRow {
    /// `anonymous`, `second_step`, `user` or `sysadmin`.
    pub kind: String,
    /// The user's address or the system administrator's name ('' if anonymous).
    pub subject: String,
    pub impersonator: Option<String>,
    pub csrf: String,
    /// The primary password's 16-bit tag, kept by a session whose second step
    /// is due (see `crate::web::trusted`).
    pub password_tag: Option<i64>,
    /// `(primary_password | second_factor, unix seconds)`.
    pub proved: Option<(String, i64)>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; refreshed at most once a minute (see
    /// [`Store::touch_web_session`]).
    pub last_seen_at: i64,
    /// Unix seconds: the row is gone from this moment on.
    pub expires_at: i64,
}

fn row_to_session(row: &AnyRow) -> Result<WebSessionRow, StoreError> {
    let proved_kind: Option<String> = row.try_get("proved_kind")?;
    let proved_at: Option<i64> = row.try_get("proved_at")?;
    Ok(WebSessionRow {
        kind: row.try_get("kind")?,
        subject: row.try_get("subject")?,
        impersonator: row.try_get("impersonator")?,
        csrf: row.try_get("csrf")?,
        password_tag: row.try_get("password_tag")?,
        proved: proved_kind.zip(proved_at),
        created_at: row.try_get("created_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

/// Ends every web session of the mail user `address`, signed in or halfway
/// (inside a change's transaction), so the
/// change holds on every node at once.
pub(crate) async fn end_user_web_sessions_in(
    conn: &mut sqlx::AnyConnection,
    address: &str,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM web_sessions WHERE subject = $1 AND kind IN ('second_step', 'user')",
    )
    .bind(address)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

impl Store {
    /// Stores a new session under `id_hash`; `replaces`, if any, is deleted in
    /// the same transaction (rotation at a sign-in step).
    pub async fn insert_web_session(
        &self,
        id_hash: &str,
        session: &WebSessionRow,
        replaces: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        if let Some(old) = replaces {
            sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1")
                .bind(old)
                .execute(&mut *tx)
                .await?;
        }
        let (proved_kind, proved_at) = session.proved.clone().unzip();
        sqlx::query(
            "INSERT INTO web_sessions (id_hash, kind, subject, impersonator, csrf, \
             proved_kind, proved_at, created_at, last_seen_at, expires_at, password_tag) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(id_hash)
        .bind(&session.kind)
        .bind(&session.subject)
        .bind(&session.impersonator)
        .bind(&session.csrf)
        .bind(proved_kind)
        .bind(proved_at)
        .bind(session.created_at)
        .bind(session.last_seen_at)
        .bind(session.expires_at)
        .bind(session.password_tag)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The session stored under `id_hash`, unless it has expired at `now`.
    pub async fn web_session(
        &self,
        id_hash: &str,
        now: i64,
    ) -> Result<Option<WebSessionRow>, StoreError> {
        let row = sqlx::query(
            "SELECT kind, subject, impersonator, csrf, proved_kind, proved_at, created_at, \
             last_seen_at, expires_at, password_tag FROM web_sessions WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_to_session).transpose()
    }

    /// Records activity: `last_seen_at` and the new deadline (never past the
    /// absolute one, which the caller folds into `expires_at`). A no-op for a
    /// row that expired meanwhile.
    pub async fn touch_web_session(
        &self,
        id_hash: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE web_sessions SET last_seen_at = $2, expires_at = $3 \
             WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(id_hash)
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a fresh proof of who the user is in a live session.
    pub async fn prove_web_session(
        &self,
        id_hash: &str,
        kind: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE web_sessions SET proved_kind = $2, proved_at = $3 WHERE id_hash = $1")
            .bind(id_hash)
            .bind(kind)
            .bind(at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends one session (sign-out).
    pub async fn delete_web_session(&self, id_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends every web session of the user `address` ("sign out everywhere"),
    /// audited as `actor` in the same transaction; returns how many there were.
    pub async fn end_user_web_sessions(
        &self,
        address: &str,
        actor: &RemoteActor,
    ) -> Result<u64, StoreError> {
        let address = super::normalize_address(address)?;
        let mut tx = self.begin().await?;
        let ended = end_user_web_sessions_in(&mut tx, &address).await?;
        let detail = format!("{ended} browser sessions ended");
        insert_audit(
            &mut tx,
            actor,
            "web.sign_out_everywhere",
            &address,
            &detail,
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(ended)
    }

    /// Deletes the sessions expired at `now`; returns how many.
    pub async fn sweep_web_sessions(&self, now: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM web_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
