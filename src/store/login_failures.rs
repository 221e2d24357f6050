//! The per-account count of consecutive failed logins, kept by address in its
//! own table so that every node behind a load balancer counts towards one block,
//! and so that a refused login for an address postern has never let in creates
//! no user row.
//!
//! The store only counts and clears; whether a failure counts (trusted networks, a
//! repeated password) and when a count blocks the account is decided in
//! [`crate::penalty`]. The count is read with the user's row at login
//! ([`Store::account`]), so a successful login writes only when there is
//! something to clear.

use sqlx::AnyConnection;

use super::{Store, StoreError, normalize_address};
use crate::notices::NoticeKind;

/// An address's consecutive failed logins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoginFailures {
    /// Failures since the last success or administrator clear.
    pub count: i64,
    /// Unix time of the latest one (0: never).
    pub last_at: i64,
}

impl LoginFailures {
    /// Whether they block the account's logins at `now`.
    pub fn block(&self, now: i64) -> bool {
        crate::penalty::account_blocked(self.count, self.last_at, now)
    }
}

/// Forgets `address`'s failures (inside a change's transaction).
pub(crate) async fn clear_in(conn: &mut AnyConnection, address: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM login_failures WHERE address = $1")
        .bind(address)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl Store {
    /// Counts one failed login for `address` at `now`. Failures older than
    /// `forget_before` are forgotten first (this address's, and every other
    /// address's row that went quiet), so the count starts again at one.
    pub async fn count_login_failure(
        &self,
        address: &str,
        now: i64,
        forget_before: i64,
    ) -> Result<(), StoreError> {
        self.count_login_failure_from(address, now, forget_before, None)
            .await
    }

    /// [`Store::count_login_failure`] of a login from `ip`: the failure that
    /// blocks the account ([`crate::penalty::BLOCK_AFTER`]) queues an
    /// `account-blocked` notice, naming that address, in the same transaction.
    pub async fn count_login_failure_from(
        &self,
        address: &str,
        now: i64,
        forget_before: i64,
        ip: Option<&str>,
    ) -> Result<(), StoreError> {
        let address = normalize_address(address)?;
        let mut tx = self.begin().await?;
        let count: i64 = sqlx::query_scalar(
            "INSERT INTO login_failures (address, failed_logins, last_failed_at) \
             VALUES ($1, 1, $2) ON CONFLICT (address) DO UPDATE SET \
             failed_logins = CASE WHEN login_failures.last_failed_at >= $3 \
                             THEN login_failures.failed_logins + 1 ELSE 1 END, \
             last_failed_at = $2 RETURNING failed_logins",
        )
        .bind(&address)
        .bind(now)
        .bind(forget_before)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM login_failures WHERE last_failed_at < $1")
            .bind(forget_before)
            .execute(&mut *tx)
            .await?;
        if count == i64::from(crate::penalty::BLOCK_AFTER) {
            super::notices::enqueue_from(
                &mut tx,
                self.backend,
                &address,
                NoticeKind::AccountBlocked,
                "",
                "system",
                ip,
                &[],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets an address's failed logins (a successful login).
    pub async fn clear_login_failures(&self, address: &str) -> Result<(), StoreError> {
        let address = normalize_address(address)?;
        let mut conn = self.pool.acquire().await?;
        clear_in(&mut conn, &address).await
    }

    /// An address's stored failed logins (zero when none are counted).
    pub async fn login_failures(&self, address: &str) -> Result<LoginFailures, StoreError> {
        let address = normalize_address(address)?;
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT failed_logins, last_failed_at FROM login_failures WHERE address = $1",
        )
        .bind(&address)
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            row.map_or_else(LoginFailures::default, |(count, last_at)| LoginFailures {
                count,
                last_at,
            }),
        )
    }
}
