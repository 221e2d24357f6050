//! Login counters kept in the store so that every node counts towards one limit
//! and a restart forgets nothing: the per-client login delay
//! ([`crate::penalty`]), wrong second-step codes and system-administrator
//! passwords, and the system administrator's sign-in rate
//! ([`crate::web::attempts`]).
//!
//! Every write is exact (one statement or one transaction per attempt); what a
//! row means is decided by the caller from its time stamps. Rows that went
//! quiet are deleted when the next attempt of the same kind is counted.

use sqlx::Row;

use super::events::insert_client_event;
use super::{Backend, Store, StoreError};

/// One client network's stored login failures (see [`crate::penalty`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PenaltyRow {
    pub failures: i64,
    /// Unix time of the latest failure.
    pub last_at: i64,
    /// The accounts tried, in [`crate::penalty`]'s encoding.
    pub accounts: String,
}

impl Store {
    /// A client network's stored failures, if any are stored.
    pub async fn client_penalty(&self, client: &str) -> Result<Option<PenaltyRow>, StoreError> {
        let row = sqlx::query(
            "SELECT failures, last_at, accounts FROM client_penalties WHERE client = $1",
        )
        .bind(client)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(PenaltyRow {
                failures: row.try_get("failures")?,
                last_at: row.try_get("last_at")?,
                accounts: row.try_get("accounts")?,
            })
        })
        .transpose()
    }

    /// Replaces a client network's row by what `change` makes of it (`None`:
    /// no row), in one transaction that no other node's change interleaves.
    /// With `announce`, a [`super::EventKind::ClientFailed`] event tells every
    /// node. Rows older than `forget_before` are deleted.
    pub async fn update_client_penalty<F>(
        &self,
        client: &str,
        forget_before: i64,
        announce: bool,
        change: F,
    ) -> Result<(), StoreError>
    where
        F: FnOnce(Option<PenaltyRow>) -> Option<PenaltyRow> + Send,
    {
        let mut tx = self.begin().await?;
        // A row to lock exists before it is read (an empty one means none).
        sqlx::query(
            "INSERT INTO client_penalties (client, failures, last_at, accounts) \
             VALUES ($1, 0, 0, '') ON CONFLICT (client) DO NOTHING",
        )
        .bind(client)
        .execute(&mut *tx)
        .await?;
        let select = match self.backend {
            Backend::Postgres => {
                "SELECT failures, last_at, accounts FROM client_penalties \
                 WHERE client = $1 FOR UPDATE"
            }
            Backend::Sqlite => {
                "SELECT failures, last_at, accounts FROM client_penalties WHERE client = $1"
            }
        };
        let row = sqlx::query(select).bind(client).fetch_one(&mut *tx).await?;
        let old = PenaltyRow {
            failures: row.try_get("failures")?,
            last_at: row.try_get("last_at")?,
            accounts: row.try_get("accounts")?,
        };
        let old = (old.failures > 0 || !old.accounts.is_empty()).then_some(old);
        match change(old) {
            Some(new) => {
                sqlx::query(
                    "UPDATE client_penalties SET failures = $2, last_at = $3, accounts = $4 \
                     WHERE client = $1",
                )
                .bind(client)
                .bind(new.failures)
                .bind(new.last_at)
                .bind(&new.accounts)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM client_penalties WHERE client = $1")
                    .bind(client)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        sqlx::query("DELETE FROM client_penalties WHERE last_at < $1 AND client <> $2")
            .bind(forget_before)
            .bind(client)
            .execute(&mut *tx)
            .await?;
        if announce {
            insert_client_event(&mut tx, self.backend, client).await?;
        }
        // No `commit_change`: a failure changes no remembered login.
        tx.commit().await?;
        Ok(())
    }

    /// The client networks with a failure at or after `since`.
    pub async fn penalised_clients(&self, since: i64) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT client FROM client_penalties WHERE last_at >= $1")
                .bind(since)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Whether any of the counters (by key hash) is locked at `now`.
    pub async fn attempts_locked(&self, keys: &[String], now: i64) -> Result<bool, StoreError> {
        for key in keys {
            let locked: Option<i64> =
                sqlx::query_scalar("SELECT locked_until FROM attempt_counters WHERE key_hash = $1")
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?;
            if locked.is_some_and(|until| until > now) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Counts a wrong attempt against the counter `key` at `now`: a counter
    /// older than `window` seconds and not locked starts again at one; the
    /// `max`-th failure locks it for `window` seconds.
    pub async fn attempt_failed(
        &self,
        key: &str,
        now: i64,
        window: i64,
        max: i64,
    ) -> Result<(), StoreError> {
        let first_lock = if max <= 1 { now + window } else { 0 };
        let mut conn = self.pool.acquire().await?;
        sqlx::query(
            "INSERT INTO attempt_counters (key_hash, failures, since, locked_until) \
             VALUES ($1, 1, $2, $5) ON CONFLICT (key_hash) DO UPDATE SET \
             failures = CASE WHEN attempt_counters.since >= $2 - $3 \
                             OR attempt_counters.locked_until > $2 \
                        THEN attempt_counters.failures + 1 ELSE 1 END, \
             since = CASE WHEN attempt_counters.since >= $2 - $3 \
                          OR attempt_counters.locked_until > $2 \
                     THEN attempt_counters.since ELSE $2 END, \
             locked_until = CASE \
                 WHEN attempt_counters.locked_until > $2 THEN attempt_counters.locked_until \
                 WHEN (CASE WHEN attempt_counters.since >= $2 - $3 \
                            THEN attempt_counters.failures + 1 ELSE 1 END) >= $4 \
                 THEN $2 + $3 ELSE 0 END",
        )
        .bind(key)
        .bind(now)
        .bind(window)
        .bind(max)
        .bind(first_lock)
        .execute(&mut *conn)
        .await?;
        sqlx::query("DELETE FROM attempt_counters WHERE since < $1 AND locked_until <= $2")
            .bind(now - window)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Clears counters (a right answer).
    pub async fn attempts_cleared(&self, keys: &[String]) -> Result<(), StoreError> {
        for key in keys {
            sqlx::query("DELETE FROM attempt_counters WHERE key_hash = $1")
                .bind(key)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Counts an attempt from `client` in its fixed window of `window` seconds
    /// at `now`; returns the attempts counted in the window, this one included.
    pub async fn client_rate_hit(
        &self,
        client: &str,
        now: i64,
        window: i64,
    ) -> Result<i64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let count: i64 = sqlx::query_scalar(
            "INSERT INTO client_rates (client, since, count) VALUES ($1, $2, 1) \
             ON CONFLICT (client) DO UPDATE SET \
             count = CASE WHEN client_rates.since > $2 - $3 \
                     THEN client_rates.count + 1 ELSE 1 END, \
             since = CASE WHEN client_rates.since > $2 - $3 \
                     THEN client_rates.since ELSE $2 END \
             RETURNING count",
        )
        .bind(client)
        .bind(now)
        .bind(window)
        .fetch_one(&mut *conn)
        .await?;
        sqlx::query("DELETE FROM client_rates WHERE since <= $1")
            .bind(now - window)
            .execute(&mut *conn)
            .await?;
        Ok(count)
    }
}
