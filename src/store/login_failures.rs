//! The per-account count of consecutive failed mail logins, kept on the user's row
//! so that every node behind a load balancer counts towards one block.
//!
//! The store only counts and clears; whether a failure counts (trusted networks, a
//! repeated password) and when a count blocks the account is decided in
//! [`crate::penalty`]. The count is read with the user's row at login, so a
//! successful login writes only when there is something to clear.

use super::{Store, StoreError, normalize_address};

impl Store {
    /// Counts one failed login for `address` at `now`. Failures older than
    /// `forget_before` are forgotten first, so the count starts again at one.
    /// An address postern has no row for is not counted (nothing is created).
    pub async fn count_login_failure(
        &self,
        address: &str,
        now: i64,
        forget_before: i64,
    ) -> Result<(), StoreError> {
        let address = normalize_address(address)?;
        sqlx::query(
            "UPDATE users SET \
             failed_logins = CASE WHEN last_failed_at >= $3 THEN failed_logins + 1 ELSE 1 END, \
             last_failed_at = $2 \
             WHERE address = $1",
        )
        .bind(&address)
        .bind(now)
        .bind(forget_before)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets the user's failed logins (a successful login).
    pub async fn clear_login_failures(&self, user_id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET failed_logins = 0 WHERE id = $1 AND failed_logins <> 0")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
