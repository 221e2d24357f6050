//! System administrators: local postern accounts with an Argon2 password hash,
//! and whether that password is the one-time password of a first start (which
//! must be replaced before anything else).

use sqlx::Row;

use super::audit::{AuditActor, insert_audit};
use super::{Store, StoreError, get_flag, unix_now};

/// What a sign-in needs to know about a system administrator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysadminRecord {
    pub password_hash: String,
    /// The password was generated at first start: it works only to choose a
    /// new one.
    pub must_change_password: bool,
}

fn valid_name(name: &str) -> Result<&str, StoreError> {
    let name = name.trim();
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(StoreError::InvalidAddress(format!(
            "{name:?} is not a system administrator name"
        )));
    }
    Ok(name)
}

impl Store {
    /// Creates a system administrator, or replaces the password hash of an existing
    /// one (`postern admin sysadmin add`). The password is the administrator's
    /// own: not one-time. The hash never reaches the audit log.
    pub async fn add_sysadmin(
        &self,
        name: &str,
        password_hash: &str,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<(), StoreError> {
        let name = valid_name(name)?;
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO sysadmins (name, password_hash, created_at, must_change_password) \
             VALUES ($1, $2, $3, 0) \
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash, \
             must_change_password = 0",
        )
        .bind(name)
        .bind(password_hash)
        .bind(unix_now())
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, actor, "sysadmin.add", name, "", None).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Creates the first system administrator with a one-time password, unless
    /// any system administrator exists (another node may have been first).
    /// Returns whether it was created.
    pub async fn create_first_sysadmin(
        &self,
        name: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        let name = valid_name(name)?;
        let mut tx = self.begin().await?;
        let created = sqlx::query(
            "INSERT INTO sysadmins (name, password_hash, created_at, must_change_password) \
             SELECT $1, $2, $3, 1 WHERE NOT EXISTS (SELECT 1 FROM sysadmins) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(password_hash)
        .bind(unix_now())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if created {
            insert_audit(
                &mut tx,
                "postern",
                "sysadmin.add",
                name,
                "one-time password",
                None,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(created)
    }

    /// Replaces a system administrator's password with one they chose, if the
    /// stored hash is still `current_hash` (two racing changes cannot both
    /// succeed, and a one-time password works for one change only). Returns
    /// whether it was replaced.
    pub async fn change_sysadmin_password(
        &self,
        name: &str,
        current_hash: &str,
        new_hash: &str,
        ip: Option<&str>,
    ) -> Result<bool, StoreError> {
        let name = valid_name(name)?;
        let mut tx = self.begin().await?;
        let changed = sqlx::query(
            "UPDATE sysadmins SET password_hash = $1, must_change_password = 0 \
             WHERE name = $2 AND password_hash = $3",
        )
        .bind(new_hash)
        .bind(name)
        .bind(current_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if changed {
            let actor = format!("sysadmin:{name}");
            insert_audit(&mut tx, &actor, "sysadmin.password", name, "web", ip).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// The password hash of a system administrator, if the name exists.
    pub async fn sysadmin_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.sysadmin(name).await?.map(|r| r.password_hash))
    }

    /// A system administrator's password hash and whether it is one-time.
    pub async fn sysadmin(&self, name: &str) -> Result<Option<SysadminRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT password_hash, CAST(must_change_password AS BIGINT) AS must_change_password \
             FROM sysadmins WHERE name = $1",
        )
        .bind(name.trim())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(SysadminRecord {
                password_hash: row.try_get("password_hash")?,
                must_change_password: get_flag(&row, "must_change_password")?,
            })
        })
        .transpose()
    }

    /// How many system administrators exist (0 on a first start).
    pub async fn sysadmin_count(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM sysadmins")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
