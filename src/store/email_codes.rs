//! One-time codes sent to a recovery address: issued under the per-user sending
//! limits, kept only as a keyed hash, live for [`EMAIL_CODE_LIFETIME`] seconds,
//! spent by a conditional UPDATE (so two racing logins cannot both win) and void
//! after [`EMAIL_CODE_MAX_FAILURES`] wrong guesses.
//!
//! The store neither generates nor hashes codes, nor sends mail: the caller does.

use std::fmt;

use sqlx::{AnyConnection, Row};

use super::audit::{AuditActor, insert_audit};
use super::factors::FactorKind;
use super::users::address_of;
use super::{Backend, Store, StoreError};

/// Seconds a code stays usable after it was issued.
pub const EMAIL_CODE_LIFETIME: i64 = 10 * 60;
/// Wrong guesses a code survives; the next one finds it void.
pub const EMAIL_CODE_MAX_FAILURES: i64 = 5;
/// At most one code per user and purpose in this many seconds...
pub const EMAIL_CODE_MIN_INTERVAL: i64 = 60;
/// ...and at most this many per user and hour, whatever their purpose.
pub const EMAIL_CODES_PER_HOUR: i64 = 5;

/// What a code proves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmailCodePurpose {
    /// The user owns the recovery address being added.
    Confirm,
    /// The second step of a web login.
    Login,
}

impl EmailCodePurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirm => "confirm",
            Self::Login => "login",
        }
    }
}

impl fmt::Display for EmailCodePurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of asking for a new code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmailCodeIssue {
    /// Stored: `factor_id` is the recovery address it goes to.
    Issued { code_id: i64, factor_id: i64 },
    /// The sending limit is reached; another code may be sent in this many seconds.
    Limited { retry_after: i64 },
}

/// A code that can still be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveEmailCode {
    pub id: i64,
    pub factor_id: i64,
    pub code_hash: String,
    /// Wrong guesses so far.
    pub failures: i64,
}

/// Inside the caller's transaction: whether the user may be sent a code now.
/// On PostgreSQL the user's row is locked first, so that two racing requests
/// count each other; SQLite's `BEGIN IMMEDIATE` already serialises writers.
async fn sending_limit(
    conn: &mut AnyConnection,
    backend: Backend,
    user_id: i64,
    purpose: EmailCodePurpose,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT id FROM users WHERE id = $1 FOR UPDATE")
            .bind(user_id)
            .fetch_optional(&mut *conn)
            .await?;
    }
    let rows = sqlx::query(
        "SELECT created_at, purpose FROM email_codes WHERE user_id = $1 AND created_at > $2 \
         ORDER BY created_at",
    )
    .bind(user_id)
    .bind(now - 3600)
    .fetch_all(&mut *conn)
    .await?;
    let mut recent = Vec::with_capacity(rows.len());
    let mut last_same = None;
    for row in &rows {
        let at: i64 = row.try_get("created_at")?;
        let kind: String = row.try_get("purpose")?;
        if kind == purpose.as_str() {
            last_same = Some(at);
        }
        recent.push(at);
    }
    let mut wait = 0;
    if let Some(last) = last_same {
        wait = wait.max(last + EMAIL_CODE_MIN_INTERVAL - now);
    }
    let per_hour = usize::try_from(EMAIL_CODES_PER_HOUR).unwrap_or(usize::MAX);
    if recent.len() >= per_hour {
        // The window frees up when the oldest code that still counts leaves it.
        let oldest = recent[recent.len() - per_hour];
        wait = wait.max(oldest + 3600 - now);
    }
    Ok((wait > 0).then_some(wait))
}

/// Inside the caller's transaction: spends the user's earlier codes for
/// `purpose`, forgets day-old ones, and stores the new one.
async fn insert_code(
    conn: &mut AnyConnection,
    user_id: i64,
    factor_id: i64,
    purpose: EmailCodePurpose,
    code_hash: &str,
    now: i64,
) -> Result<i64, StoreError> {
    sqlx::query(
        "UPDATE email_codes SET used_at = $3 \
         WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL",
    )
    .bind(user_id)
    .bind(purpose.as_str())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM email_codes WHERE user_id = $1 AND created_at < $2")
        .bind(user_id)
        .bind(now - 86_400)
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query_scalar(
        "INSERT INTO email_codes (user_id, factor_id, purpose, code_hash, created_at, \
         failures, used_at) VALUES ($1, $2, $3, $4, $5, 0, NULL) RETURNING id",
    )
    .bind(user_id)
    .bind(factor_id)
    .bind(purpose.as_str())
    .bind(code_hash)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?)
}

impl Store {
    /// Starts adding a recovery address: replaces any unconfirmed one with a new
    /// unconfirmed factor for `recovery` and stores a confirmation code for it, in
    /// one transaction under the sending limits. Nothing changes when limited.
    pub async fn start_email_factor(
        &self,
        user_id: i64,
        recovery: &str,
        code_hash: &str,
        now: i64,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<EmailCodeIssue, StoreError> {
        let mut tx = self.begin().await?;
        let address = address_of(&mut tx, user_id).await?;
        if let Some(retry_after) = sending_limit(
            &mut tx,
            self.backend,
            user_id,
            EmailCodePurpose::Confirm,
            now,
        )
        .await?
        {
            return Ok(EmailCodeIssue::Limited { retry_after });
        }
        sqlx::query(
            "DELETE FROM second_factors WHERE user_id = $1 AND kind = $2 AND confirmed = 0",
        )
        .bind(user_id)
        .bind(FactorKind::Email.as_str())
        .execute(&mut *tx)
        .await?;
        let factor_id: i64 = sqlx::query_scalar(
            "INSERT INTO second_factors (user_id, kind, secret, confirmed, last_used_step, \
             created_at) VALUES ($1, $2, $3, 0, NULL, $4) RETURNING id",
        )
        .bind(user_id)
        .bind(FactorKind::Email.as_str())
        .bind(recovery)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let code_id = insert_code(
            &mut tx,
            user_id,
            factor_id,
            EmailCodePurpose::Confirm,
            code_hash,
            now,
        )
        .await?;
        let detail = format!("id={factor_id} kind=email confirmed=false");
        insert_audit(&mut tx, actor, "second_factor.add", &address, &detail, None).await?;
        tx.commit().await?;
        Ok(EmailCodeIssue::Issued { code_id, factor_id })
    }

    /// Stores a code for the user's recovery address `factor_id`, under the
    /// sending limits.
    pub async fn issue_email_code(
        &self,
        user_id: i64,
        factor_id: i64,
        purpose: EmailCodePurpose,
        code_hash: &str,
        now: i64,
    ) -> Result<EmailCodeIssue, StoreError> {
        let mut tx = self.begin().await?;
        if let Some(retry_after) =
            sending_limit(&mut tx, self.backend, user_id, purpose, now).await?
        {
            return Ok(EmailCodeIssue::Limited { retry_after });
        }
        let code_id = insert_code(&mut tx, user_id, factor_id, purpose, code_hash, now).await?;
        tx.commit().await?;
        Ok(EmailCodeIssue::Issued { code_id, factor_id })
    }

    /// Forgets a code that could not be sent, so it neither works nor counts
    /// against the sending limits.
    pub async fn discard_email_code(&self, code_id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM email_codes WHERE id = $1")
            .bind(code_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The user's newest code for `purpose` that is neither spent, expired nor
    /// void, if any.
    pub async fn live_email_code(
        &self,
        user_id: i64,
        purpose: EmailCodePurpose,
        now: i64,
    ) -> Result<Option<LiveEmailCode>, StoreError> {
        let row = sqlx::query(
            "SELECT id, factor_id, code_hash, failures FROM email_codes \
             WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL \
             AND created_at > $3 AND failures < $4 ORDER BY id DESC LIMIT 1",
        )
        .bind(user_id)
        .bind(purpose.as_str())
        .bind(now - EMAIL_CODE_LIFETIME)
        .bind(EMAIL_CODE_MAX_FAILURES)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(LiveEmailCode {
                id: row.try_get("id")?,
                factor_id: row.try_get("factor_id")?,
                code_hash: row.try_get("code_hash")?,
                failures: row.try_get("failures")?,
            })
        })
        .transpose()
    }

    /// Spends a code the user presented rightly. True only the first time, and
    /// only while it is still live.
    pub async fn use_email_code(&self, code_id: i64, now: i64) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE email_codes SET used_at = $2 WHERE id = $1 AND used_at IS NULL \
             AND created_at > $3 AND failures < $4",
        )
        .bind(code_id)
        .bind(now)
        .bind(now - EMAIL_CODE_LIFETIME)
        .bind(EMAIL_CODE_MAX_FAILURES)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    /// Counts a wrong guess against a code; returns the guesses it has left
    /// (0: it is void now).
    pub async fn fail_email_code(&self, code_id: i64) -> Result<i64, StoreError> {
        let failures: Option<i64> = sqlx::query_scalar(
            "UPDATE email_codes SET failures = failures + 1 \
             WHERE id = $1 AND used_at IS NULL RETURNING failures",
        )
        .bind(code_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(failures.map_or(0, |n| (EMAIL_CODE_MAX_FAILURES - n).max(0)))
    }
}
