//! Second factors (TOTP secrets, recovery addresses) and backup codes, with their
//! single-use guards: a TOTP step and a backup code are each accepted once, enforced
//! by a conditional UPDATE so two racing logins cannot both win.

use std::fmt;
use std::str::FromStr;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::audit::{AuditActor, insert_audit};
use super::events::{EventKind, insert_event};
use super::notices::enqueue_in;
use super::users::{OwnedRow, address_of, remove_owned};
use super::{Store, StoreError, get_flag, get_parsed, unix_now};
use crate::notices::{self, NoticeKind};
use crate::secret::Secret;

/// The kind of a second factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FactorKind {
    /// RFC 6238 TOTP; the secret is the base32 seed.
    Totp,
    /// One-time codes sent to a recovery address; the secret is that address.
    Email,
}

impl FactorKind {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Totp => "totp",
            Self::Email => "email",
        }
    }
}

impl fmt::Display for FactorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FactorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "totp" => Ok(Self::Totp),
            "email" => Ok(Self::Email),
            other => Err(format!("unknown second factor kind {other:?}")),
        }
    }
}

/// A second factor as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecondFactorRecord {
    pub id: i64,
    pub user_id: i64,
    pub kind: FactorKind,
    /// The TOTP seed (base32) or the recovery address.
    pub secret: Secret<String>,
    /// Verified by the user; only confirmed factors make the user enrolled.
    pub confirmed: bool,
    /// The last TOTP time step accepted (replay guard).
    pub last_used_step: Option<i64>,
    pub created_at: i64,
}

fn factor_from_row(row: &AnyRow) -> Result<SecondFactorRecord, StoreError> {
    Ok(SecondFactorRecord {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        kind: get_parsed(row, "kind")?,
        secret: Secret::new(row.try_get::<String, _>("secret")?),
        confirmed: get_flag(row, "confirmed")?,
        last_used_step: row.try_get("last_used_step")?,
        created_at: row.try_get("created_at")?,
    })
}

/// The one definition of "enrolled", as an SQL condition on the user id
/// expression `$user`: a confirmed second factor or a passkey exists.
macro_rules! enrolled_condition {
    ($user:literal) => {
        concat!(
            "(EXISTS (SELECT 1 FROM second_factors f WHERE f.user_id = ",
            $user,
            " AND f.confirmed = 1) OR EXISTS (SELECT 1 FROM passkeys p WHERE p.user_id = ",
            $user,
            "))"
        )
    };
}
pub(crate) use enrolled_condition;

/// A factor as a notice names it (never the TOTP secret).
fn factor_words(kind: FactorKind, secret: &str) -> String {
    match kind {
        FactorKind::Totp => notices::totp_words(),
        FactorKind::Email => notices::recovery_words(secret),
    }
}

/// The notice for a factor added to a user who `was_enrolled` or not.
fn added(was_enrolled: bool) -> NoticeKind {
    if was_enrolled {
        NoticeKind::FactorAdded
    } else {
        NoticeKind::TwoStepOn
    }
}

/// A factor's kind, secret and whether it is confirmed, if the user has it.
async fn factor_of(
    conn: &mut AnyConnection,
    user_id: i64,
    factor_id: i64,
) -> Result<Option<(FactorKind, String, bool)>, StoreError> {
    let row = sqlx::query(
        "SELECT kind, secret, confirmed FROM second_factors WHERE id = $1 AND user_id = $2",
    )
    .bind(factor_id)
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| {
        Ok((
            get_parsed(&row, "kind")?,
            row.try_get("secret")?,
            get_flag(&row, "confirmed")?,
        ))
    })
    .transpose()
}

pub(super) async fn is_enrolled(
    conn: &mut AnyConnection,
    user_id: i64,
) -> Result<bool, StoreError> {
    let n: i64 = sqlx::query_scalar(concat!(
        "SELECT CAST(CASE WHEN ",
        enrolled_condition!("$1"),
        " THEN 1 ELSE 0 END AS BIGINT)"
    ))
    .bind(user_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(n > 0)
}

impl Store {
    /// Stores a second factor for the user; returns its id. A factor added already
    /// confirmed (provisioning) enrolls the user like [`Store::confirm_second_factor`].
    pub async fn add_second_factor(
        &self,
        user_id: i64,
        kind: FactorKind,
        secret: &str,
        confirmed: bool,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<i64, StoreError> {
        let mut tx = self.begin().await?;
        let address = address_of(&mut tx, user_id).await?;
        let was_enrolled = is_enrolled(&mut tx, user_id).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO second_factors (user_id, kind, secret, confirmed, last_used_step, \
             created_at) VALUES ($1, $2, $3, $4, NULL, $5) RETURNING id",
        )
        .bind(user_id)
        .bind(kind.as_str())
        .bind(secret)
        .bind(i64::from(confirmed))
        .bind(unix_now())
        .fetch_one(&mut *tx)
        .await?;
        let detail = format!("id={id} kind={kind} confirmed={confirmed}");
        insert_audit(&mut tx, actor, "second_factor.add", &address, &detail, None).await?;
        if confirmed {
            let words = factor_words(kind, secret);
            let notice = added(was_enrolled);
            enqueue_in(&mut tx, self.backend, &address, notice, &words, actor, &[]).await?;
        }
        if confirmed && !was_enrolled {
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

    /// Marks the user's factor as verified. The user's first confirmed factor makes
    /// them enrolled and appends a `user_enrolled` event.
    pub async fn confirm_second_factor(
        &self,
        user_id: i64,
        factor_id: i64,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let address = address_of(&mut tx, user_id).await?;
        let was_enrolled = is_enrolled(&mut tx, user_id).await?;
        let factor = factor_of(&mut tx, user_id, factor_id).await?;
        let changed =
            sqlx::query("UPDATE second_factors SET confirmed = 1 WHERE id = $1 AND user_id = $2")
                .bind(factor_id)
                .bind(user_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        let detail = format!("id={factor_id}");
        insert_audit(
            &mut tx,
            actor,
            "second_factor.confirm",
            &address,
            &detail,
            None,
        )
        .await?;
        if let Some((kind, secret, false)) = &factor {
            let words = factor_words(*kind, secret);
            let notice = added(was_enrolled);
            enqueue_in(&mut tx, self.backend, &address, notice, &words, actor, &[]).await?;
        }
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
        Ok(())
    }

    /// The user's second factors, oldest first.
    pub async fn second_factors(
        &self,
        user_id: i64,
    ) -> Result<Vec<SecondFactorRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, user_id, kind, secret, confirmed, last_used_step, created_at \
             FROM second_factors WHERE user_id = $1 ORDER BY id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(factor_from_row).collect()
    }

    /// Deletes one of the user's second factors.
    pub async fn remove_second_factor(
        &self,
        user_id: i64,
        factor_id: i64,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let factor = factor_of(&mut tx, user_id, factor_id).await?;
        let address =
            remove_owned(&mut tx, OwnedRow::SecondFactor, user_id, factor_id, actor).await?;
        // A factor never confirmed (an enrollment left half-way) was no way in.
        if let Some((kind, secret, true)) = &factor {
            let notice = if is_enrolled(&mut tx, user_id).await? {
                NoticeKind::FactorRemoved
            } else {
                NoticeKind::TwoStepOff
            };
            let words = factor_words(*kind, secret);
            // A removed recovery address is told too.
            let also: &[String] = if *kind == FactorKind::Email {
                std::slice::from_ref(secret)
            } else {
                &[]
            };
            enqueue_in(&mut tx, self.backend, &address, notice, &words, actor, also).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Turns 2-Step Authentication off for the user in one transaction: every
    /// second factor, passkey and backup code goes (each audited as when
    /// removed one by one), and one notice says so.
    pub async fn turn_off_two_step(
        &self,
        user_id: i64,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let address = address_of(&mut tx, user_id).await?;
        let was_enrolled = is_enrolled(&mut tx, user_id).await?;
        let factors = sqlx::query(
            "SELECT id, kind, secret, confirmed FROM second_factors WHERE user_id = $1 ORDER BY id",
        )
        .bind(user_id)
        .fetch_all(&mut *tx)
        .await?;
        let mut removed = Vec::new();
        let mut recovery = Vec::new();
        for row in &factors {
            let id: i64 = row.try_get("id")?;
            let kind: FactorKind = get_parsed(row, "kind")?;
            let secret: String = row.try_get("secret")?;
            if get_flag(row, "confirmed")? {
                removed.push(factor_words(kind, &secret));
                if kind == FactorKind::Email {
                    recovery.push(secret);
                }
            }
            remove_owned(&mut tx, OwnedRow::SecondFactor, user_id, id, actor).await?;
        }
        let passkeys = sqlx::query("SELECT id, name FROM passkeys WHERE user_id = $1 ORDER BY id")
            .bind(user_id)
            .fetch_all(&mut *tx)
            .await?;
        for row in &passkeys {
            let id: i64 = row.try_get("id")?;
            let name: String = row.try_get("name")?;
            removed.push(notices::passkey_words(&name));
            remove_owned(&mut tx, OwnedRow::Passkey, user_id, id, actor).await?;
        }
        sqlx::query("DELETE FROM backup_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        insert_audit(
            &mut tx,
            actor,
            "backup_codes.replace",
            &address,
            "count=0",
            None,
        )
        .await?;
        if was_enrolled {
            // Every recovery address hears of it, the last one included.
            let words = removed.join(", ");
            enqueue_in(
                &mut tx,
                self.backend,
                &address,
                NoticeKind::TwoStepOff,
                &words,
                actor,
                &recovery,
            )
            .await?;
        }
        self.commit_change(tx).await?;
        Ok(())
    }

    /// Records that a TOTP code for time step `step` was presented. True only if no
    /// code for this or a later step was accepted before: a code works once.
    pub async fn use_totp_step(&self, factor_id: i64, step: i64) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE second_factors SET last_used_step = $2 \
             WHERE id = $1 AND (last_used_step IS NULL OR last_used_step < $2)",
        )
        .bind(factor_id)
        .bind(step)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    /// Replaces all of the user's backup codes with these hashes.
    pub async fn replace_backup_codes(
        &self,
        user_id: i64,
        hashes: &[String],
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let address = address_of(&mut tx, user_id).await?;
        sqlx::query("DELETE FROM backup_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        for hash in hashes {
            sqlx::query(
                "INSERT INTO backup_codes (user_id, code_hash, used_at) VALUES ($1, $2, NULL)",
            )
            .bind(user_id)
            .bind(hash)
            .execute(&mut *tx)
            .await?;
        }
        let detail = format!("count={}", hashes.len());
        insert_audit(
            &mut tx,
            actor,
            "backup_codes.replace",
            &address,
            &detail,
            None,
        )
        .await?;
        if !hashes.is_empty() {
            enqueue_in(
                &mut tx,
                self.backend,
                &address,
                NoticeKind::BackupCodes,
                "",
                actor,
                &[],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The user's unused backup codes as `(id, hash)`.
    pub async fn backup_code_hashes(&self, user_id: i64) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, code_hash FROM backup_codes \
             WHERE user_id = $1 AND used_at IS NULL ORDER BY id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("id")?, row.try_get("code_hash")?)))
            .collect()
    }

    /// Marks a backup code used. True only the first time.
    pub async fn use_backup_code(&self, id: i64) -> Result<bool, StoreError> {
        let changed =
            sqlx::query("UPDATE backup_codes SET used_at = $2 WHERE id = $1 AND used_at IS NULL")
                .bind(id)
                .bind(unix_now())
                .execute(&self.pool)
                .await?
                .rows_affected();
        Ok(changed == 1)
    }
}
