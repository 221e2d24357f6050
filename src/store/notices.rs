//! The outbox of security notices (see [`crate::notices`]): a row per notice and
//! recipient, queued by [`enqueue_in`] inside the transaction of the change it
//! reports, claimed by one sender at a time, then marked sent or failed, and
//! pruned.
//!
//! Whether a notice is queued at all is [`crate::policy::decide_notice`]'s
//! call, from the domain's turned-off kinds and the user's notices of the last
//! hour, both read here in the change's transaction (on PostgreSQL with the
//! user's row locked), so the rate limit holds across nodes. The store neither
//! writes the text nor sends anything.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use tracing::info;

use super::audit::{AuditActor, insert_audit};
use super::factors::FactorKind;
use super::{Backend, Store, StoreError, get_parsed, normalize_domain, unix_now};
use crate::address::fold;
use crate::notices::{NoticeKind, NoticeKinds};
use crate::policy::{NoticeDecision, decide_notice};

/// A queued notice to one recipient, as the sender sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedNotice {
    pub id: i64,
    /// The account it is about.
    pub user_address: String,
    pub kind: NoticeKind,
    /// The mailbox, or a recovery address.
    pub recipient: String,
    /// What changed, in words; never a secret.
    pub detail: String,
    /// Who made the change, as the audit log names them.
    pub actor: String,
    /// The client address the change came from, when known.
    pub ip: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Sends tried, this claim's included.
    pub attempts: i64,
}

/// A notice row with where it stands: `queued`, `sent` or `failed`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoticeRecord {
    pub notice: QueuedNotice,
    pub state: String,
    /// Unix seconds.
    pub next_attempt_at: i64,
}

const COLUMNS: &str = "id, user_address, kind, recipient, detail, actor, ip, created_at, attempts, state, \
     next_attempt_at";

fn notice_from_row(row: &AnyRow) -> Result<NoticeRecord, StoreError> {
    Ok(NoticeRecord {
        notice: QueuedNotice {
            id: row.try_get("id")?,
            user_address: row.try_get("user_address")?,
            kind: get_parsed(row, "kind")?,
            recipient: row.try_get("recipient")?,
            detail: row.try_get("detail")?,
            actor: row.try_get("actor")?,
            ip: row.try_get("ip")?,
            created_at: row.try_get("created_at")?,
            attempts: row.try_get("attempts")?,
        },
        state: row.try_get("state")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
    })
}

/// Queues a notice of `kind` about `address` on `conn` (the change's
/// transaction) for the user's mailbox, their confirmed recovery addresses and
/// `also` (recovery addresses the change just removed), unless the domain
/// turned the kind off or the user's hourly limit is reached. An address with
/// no user row gets nothing (answered as `TurnedOff`: there is nobody to tell).
/// The client address is the actor's.
pub(crate) async fn enqueue_in(
    conn: &mut AnyConnection,
    backend: Backend,
    address: &str,
    kind: NoticeKind,
    detail: &str,
    actor: &(impl AuditActor + ?Sized),
    also: &[String],
) -> Result<NoticeDecision, StoreError> {
    enqueue_from(
        conn,
        backend,
        address,
        kind,
        detail,
        actor,
        actor.ip(),
        also,
    )
    .await
}

/// [`enqueue_in`] with the client address given.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn enqueue_from(
    conn: &mut AnyConnection,
    backend: Backend,
    address: &str,
    kind: NoticeKind,
    detail: &str,
    actor: &(impl AuditActor + ?Sized),
    ip: Option<&str>,
    also: &[String],
) -> Result<NoticeDecision, StoreError> {
    let lock = match backend {
        // Two changes of one user on two nodes count each other.
        Backend::Postgres => "SELECT id FROM users WHERE address = $1 FOR UPDATE",
        Backend::Sqlite => "SELECT id FROM users WHERE address = $1",
    };
    let user_id: Option<i64> = sqlx::query_scalar(lock)
        .bind(address)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(user_id) = user_id else {
        return Ok(NoticeDecision::TurnedOff);
    };
    let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
    let off: Option<String> = sqlx::query_scalar("SELECT notices_off FROM domains WHERE name = $1")
        .bind(domain)
        .fetch_optional(&mut *conn)
        .await?;
    let off: NoticeKinds = match off {
        Some(text) => text.parse().map_err(|detail| StoreError::Corrupt {
            what: "notices_off",
            detail,
        })?,
        None => NoticeKinds::NONE,
    };
    let now = unix_now();
    let last_hour: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM notices \
         WHERE user_address = $1 AND recipient = $1 AND created_at > $2",
    )
    .bind(address)
    .bind(now - 3600)
    .fetch_one(&mut *conn)
    .await?;
    let decision = decide_notice(off, kind, last_hour);
    match decision {
        NoticeDecision::Queue => {}
        NoticeDecision::TurnedOff => return Ok(decision),
        NoticeDecision::RateLimited => {
            crate::notices::count(kind.as_str(), "rate-limited");
            info!(user = %address, kind = kind.as_str(), "security notice not sent: hourly limit reached");
            return Ok(decision);
        }
    }
    let recovery: Vec<String> = sqlx::query_scalar(
        "SELECT secret FROM second_factors WHERE user_id = $1 AND kind = $2 AND confirmed = 1 \
         ORDER BY id",
    )
    .bind(user_id)
    .bind(FactorKind::Email.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let mut recipients = vec![address.to_owned()];
    for other in recovery.into_iter().chain(also.iter().cloned()) {
        if !recipients.iter().any(|r| fold(r) == fold(&other)) {
            recipients.push(other);
        }
    }
    for recipient in &recipients {
        sqlx::query(
            "INSERT INTO notices (user_address, kind, recipient, detail, actor, ip, created_at, \
             state, attempts, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', 0, $7)",
        )
        .bind(address)
        .bind(kind.as_str())
        .bind(recipient)
        .bind(detail)
        .bind(actor.name())
        .bind(ip)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(decision)
}

impl Store {
    /// Queues a notice on its own (a change that is not the store's, such as a
    /// mail postern decides to send); see [`enqueue_in`]. An address postern
    /// has no user row for is sent nothing (answered as `TurnedOff`).
    pub async fn enqueue_notice(
        &self,
        address: &str,
        kind: NoticeKind,
        detail: &str,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<NoticeDecision, StoreError> {
        let address = super::normalize_address(address)?;
        let mut tx = self.begin().await?;
        let decision =
            enqueue_in(&mut tx, self.backend, &address, kind, detail, actor, &[]).await?;
        tx.commit().await?;
        Ok(decision)
    }

    /// Claims up to `limit` rows due at `now` for this sender (`claim`, a
    /// random token): queued rows nobody holds, or whose claim is older than
    /// `timeout` seconds. Each claim counts as an attempt. Two senders never
    /// get the same row.
    pub async fn claim_notices(
        &self,
        claim: &str,
        now: i64,
        timeout: i64,
        limit: i64,
    ) -> Result<Vec<QueuedNotice>, StoreError> {
        let sql = match self.backend {
            // The rows are picked once (a locking CTE is evaluated once), a
            // row another sender is claiming is skipped, and the conditions
            // are checked again on the row as it is updated.
            Backend::Postgres => format!(
                "WITH picked AS (SELECT id AS pick_id FROM notices WHERE state = 'queued' \
                     AND next_attempt_at <= $2 AND (claimed_at IS NULL OR claimed_at <= $3) \
                     ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 UPDATE notices SET claim = $1, claimed_at = $2, attempts = attempts + 1 \
                 FROM picked WHERE id = pick_id \
                 AND state = 'queued' AND (claimed_at IS NULL OR claimed_at <= $3) \
                 RETURNING {COLUMNS}"
            ),
            // One writer at a time: the statement sees no other claim.
            Backend::Sqlite => format!(
                "UPDATE notices SET claim = $1, claimed_at = $2, attempts = attempts + 1 \
                 WHERE id IN (SELECT id FROM notices WHERE state = 'queued' \
                     AND next_attempt_at <= $2 AND (claimed_at IS NULL OR claimed_at <= $3) \
                     ORDER BY id LIMIT $4) \
                 RETURNING {COLUMNS}"
            ),
        };
        // Only the fixed words above are formatted in; every value is bound.
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(claim)
            .bind(now)
            .bind(now - timeout)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut claimed: Vec<QueuedNotice> = rows
            .iter()
            .map(|row| notice_from_row(row).map(|r| r.notice))
            .collect::<Result<_, _>>()?;
        claimed.sort_by_key(|n| n.id);
        Ok(claimed)
    }

    /// Marks a claimed row sent (nothing happens if the claim lapsed).
    pub async fn notice_sent(&self, id: i64, claim: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE notices SET state = 'sent', claim = NULL, claimed_at = NULL \
             WHERE id = $1 AND claim = $2",
        )
        .bind(id)
        .bind(claim)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Releases a claimed row whose send failed: tried again from `next_at`,
    /// or with `give_up` marked failed.
    pub async fn notice_failed(
        &self,
        id: i64,
        claim: &str,
        give_up: bool,
        next_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE notices SET state = $3, next_attempt_at = $4, claim = NULL, \
             claimed_at = NULL WHERE id = $1 AND claim = $2",
        )
        .bind(id)
        .bind(claim)
        .bind(if give_up { "failed" } else { "queued" })
        .bind(next_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes sent and failed rows queued before `before`.
    pub async fn prune_notices(&self, before: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM notices WHERE state <> 'queued' AND created_at < $1")
                .bind(before)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// The notice rows about `address`, oldest first.
    pub async fn notices_of(&self, address: &str) -> Result<Vec<NoticeRecord>, StoreError> {
        let address = super::normalize_address(address)?;
        let sql = format!("SELECT {COLUMNS} FROM notices WHERE user_address = $1 ORDER BY id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&address)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(notice_from_row).collect()
    }

    /// Sets the notice kinds a known domain does not send.
    pub async fn set_domain_notices(
        &self,
        name: &str,
        off: NoticeKinds,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<(), StoreError> {
        let name = normalize_domain(name)?;
        let mut tx = self.begin().await?;
        let changed = sqlx::query("UPDATE domains SET notices_off = $2 WHERE name = $1")
            .bind(&name)
            .bind(off.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if changed == 0 {
            return Err(StoreError::UnknownDomain(name));
        }
        let detail = format!("off={off}");
        insert_audit(&mut tx, actor, "domain.notices", &name, &detail, None).await?;
        tx.commit().await?;
        Ok(())
    }
}
