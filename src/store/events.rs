//! The event log: one row per change that can make a live session's credential
//! unacceptable. Every `postern serve` node tails it (`events_after`) and re-checks
//! its sessions; on PostgreSQL each append also sends `NOTIFY postern_events` so
//! nodes can wake up at once instead of waiting for the next poll.
//!
//! Readers rely on ids committing in ascending order. SQLite gives that for free (one
//! writer at a time); on PostgreSQL sequence values are handed out before commit, so
//! appenders serialise on a transaction-scoped advisory lock taken right before the
//! insert and held until commit.

use std::fmt;
use std::str::FromStr;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{Backend, Store, StoreError, get_parsed, unix_now};

/// The advisory lock key that orders event appends on PostgreSQL ("postern" in hex-ish).
const EVENT_LOCK_KEY: i64 = 0x706f_7374_6572;

/// The PostgreSQL channel notified after each event.
pub const NOTIFY_CHANNEL: &str = "postern_events";

/// What changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The system administrator's switch for a domain.
    DomainFeature,
    /// The domain administrator's status (or grace period).
    DomainStatus,
    /// A user verified a second factor.
    UserEnrolled,
    /// A user's second factors, backup codes and app passwords were removed.
    UserReset,
    UserDisabled,
    UserEnabled,
    /// One app password was revoked.
    AppPasswordRevoked,
    /// An administrator asked for a user's sessions to end.
    SessionKill,
    /// A login from a client network failed: nodes read its delay from the
    /// store from now on ([`crate::penalty`]). Changes no login's outcome
    /// otherwise, so it voids no remembered login.
    ClientFailed,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::DomainFeature,
        EventKind::DomainStatus,
        EventKind::UserEnrolled,
        EventKind::UserReset,
        EventKind::UserDisabled,
        EventKind::UserEnabled,
        EventKind::AppPasswordRevoked,
        EventKind::SessionKill,
        EventKind::ClientFailed,
    ];

    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DomainFeature => "domain_feature",
            Self::DomainStatus => "domain_status",
            Self::UserEnrolled => "user_enrolled",
            Self::UserReset => "user_reset",
            Self::UserDisabled => "user_disabled",
            Self::UserEnabled => "user_enabled",
            Self::AppPasswordRevoked => "app_password_revoked",
            Self::SessionKill => "session_kill",
            Self::ClientFailed => "client_failed",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event kind {s:?}"))
    }
}

/// One event row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// Ascending; readers remember the last one they handled.
    pub id: i64,
    pub at: i64,
    pub kind: EventKind,
    /// Set for domain events.
    pub domain: Option<String>,
    /// Set for user events and revocations.
    pub user_address: Option<String>,
    /// Set for revocations.
    pub app_password_id: Option<i64>,
    /// Set for client failures: the client network's first address.
    pub client: Option<String>,
}

/// Appends an event on `conn`, inside the caller's transaction; returns its id.
pub(crate) async fn insert_event(
    conn: &mut AnyConnection,
    backend: Backend,
    kind: EventKind,
    domain: Option<&str>,
    user_address: Option<&str>,
    app_password_id: Option<i64>,
) -> Result<i64, StoreError> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(EVENT_LOCK_KEY)
            .execute(&mut *conn)
            .await?;
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO events (at, kind, domain, user_address, app_password_id) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(unix_now())
    .bind(kind.as_str())
    .bind(domain)
    .bind(user_address)
    .bind(app_password_id)
    .fetch_one(&mut *conn)
    .await?;
    if backend == Backend::Postgres {
        // Delivered on commit, and not at all on rollback.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(id.to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(id)
}

/// Appends a [`EventKind::ClientFailed`] event for `client` on `conn`, inside
/// the caller's transaction.
pub(crate) async fn insert_client_event(
    conn: &mut AnyConnection,
    backend: Backend,
    client: &str,
) -> Result<(), StoreError> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(EVENT_LOCK_KEY)
            .execute(&mut *conn)
            .await?;
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO events (at, kind, client) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(unix_now())
    .bind(EventKind::ClientFailed.as_str())
    .bind(client)
    .fetch_one(&mut *conn)
    .await?;
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(id.to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

fn event_from_row(row: &AnyRow) -> Result<EventRecord, StoreError> {
    Ok(EventRecord {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        kind: get_parsed(row, "kind")?,
        domain: row.try_get("domain")?,
        user_address: row.try_get("user_address")?,
        app_password_id: row.try_get("app_password_id")?,
        client: row.try_get("client")?,
    })
}

/// How long a client's failure stays in the event log (its delay lives in the
/// `client_penalties` table; the row only tells running nodes of it).
pub const CLIENT_FAILED_KEEP_SECS: i64 = 3600;
/// How long every other event stays: far longer than any node may lag
/// (`postern_event_lag_seconds`) and still serve.
pub const EVENT_KEEP_SECS: i64 = 86_400;

impl Store {
    /// Appends an event that goes with no other change (e.g. a session kill); returns
    /// its id.
    pub async fn append_event(
        &self,
        kind: EventKind,
        domain: Option<&str>,
        user_address: Option<&str>,
        app_password_id: Option<i64>,
    ) -> Result<i64, StoreError> {
        let mut tx = self.begin().await?;
        let id = insert_event(
            &mut tx,
            self.backend,
            kind,
            domain,
            user_address,
            app_password_id,
        )
        .await?;
        self.commit_change(tx).await?;
        Ok(id)
    }

    /// Up to `limit` events with an id above `after`, ascending.
    pub async fn events_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, kind, domain, user_address, app_password_id, client FROM events \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Deletes the events no node needs any more; returns how many. A node
    /// reads the log from its newest row at start (and the penalties from their
    /// own table), so old rows serve only a node that fell behind: a client's
    /// failure is kept [`CLIENT_FAILED_KEEP_SECS`], every other event
    /// [`EVENT_KEEP_SECS`]. The newest row always stays, so a new reader's
    /// position never goes back.
    pub async fn prune_events(&self, now: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM events WHERE id < (SELECT MAX(id) FROM events) \
             AND ((kind = $1 AND at < $2) OR at < $3)",
        )
        .bind(EventKind::ClientFailed.as_str())
        .bind(now - CLIENT_FAILED_KEEP_SECS)
        .bind(now - EVENT_KEEP_SECS)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The newest event's id, 0 if there is none: where a new reader starts.
    pub async fn last_event_id(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM events")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
