//! System administrators: local postern accounts with an Argon2 password hash.

use super::audit::{AuditActor, insert_audit};
use super::{Store, StoreError, unix_now};

impl Store {
    /// Creates a system administrator, or replaces the password hash of an existing
    /// one. The hash never reaches the audit log.
    pub async fn add_sysadmin(
        &self,
        name: &str,
        password_hash: &str,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<(), StoreError> {
        let name = name.trim();
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(StoreError::InvalidAddress(format!(
                "{name:?} is not a system administrator name"
            )));
        }
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO sysadmins (name, password_hash, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash",
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

    /// The password hash of a system administrator, if the name exists.
    pub async fn sysadmin_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT password_hash FROM sysadmins WHERE name = $1")
                .bind(name.trim())
                .fetch_optional(&self.pool)
                .await?,
        )
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
