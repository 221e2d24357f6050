//! The audit log: who changed what, and login results. Rows are only ever appended;
//! changes append theirs inside their own transaction (see [`insert_audit`]).

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{Store, StoreError, unix_now};
use crate::address::fold;

/// One audit row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// Who: "cli", "system", "sysadmin:NAME", "user:ADDRESS".
    pub actor: String,
    /// What, e.g. "domain.status", "app_password.revoke", "login".
    pub action: String,
    /// The object: a domain, an address, a system administrator's name.
    pub target: String,
    /// Free text; never a secret.
    pub detail: String,
    /// The client's address, when the change came over the network.
    pub ip: Option<String>,
}

/// Which audit rows [`Store::list_audit`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only rows about this user (as target) or by this user (as actor `user:ADDRESS`).
    pub user: Option<String>,
    /// Only rows at or after this Unix time.
    pub since: Option<i64>,
    /// At most this many rows.
    pub limit: i64,
}

impl Default for AuditFilter {
    fn default() -> Self {
        AuditFilter {
            user: None,
            since: None,
            limit: 100,
        }
    }
}

/// An audit row to append.
#[derive(Clone, Debug)]
pub struct NewAudit {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub ip: Option<String>,
}

/// Who made a change, as the audit log records it: a name ("cli",
/// "sysadmin:NAME", "user:ADDRESS") and, for a change that came over the
/// network, the client's address. A plain string is a local actor (the CLI).
pub trait AuditActor: Sync {
    fn name(&self) -> &str;
    fn ip(&self) -> Option<&str> {
        None
    }
}

impl AuditActor for str {
    fn name(&self) -> &str {
        self
    }
}

impl AuditActor for String {
    fn name(&self) -> &str {
        self
    }
}

/// A change made through the web UI or the API, by `name` from `ip`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteActor {
    pub name: String,
    pub ip: Option<String>,
}

impl AuditActor for RemoteActor {
    fn name(&self) -> &str {
        &self.name
    }
    fn ip(&self) -> Option<&str> {
        self.ip.as_deref()
    }
}

/// Appends an audit row on `conn`, typically inside the caller's transaction;
/// the client address is `ip`, else the actor's.
pub(crate) async fn insert_audit(
    conn: &mut AnyConnection,
    actor: &(impl AuditActor + ?Sized),
    action: &str,
    target: &str,
    detail: &str,
    ip: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, target, detail, ip) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(unix_now())
    .bind(actor.name())
    .bind(action)
    .bind(target)
    .bind(detail)
    .bind(ip.or_else(|| actor.ip()))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Rows per INSERT statement in [`Store::audit_batch`]: 6 parameters each.
/// SQLite finds a numbered parameter's name by a linear scan, so binding costs
/// grow with the square of a statement's parameters; 32 rows keep that small
/// while a batch still makes one round trip per 32 rows.
const AUDIT_ROWS_PER_INSERT: usize = 32;

/// `INSERT INTO audit_log ... VALUES ($1, ..., $6), ($7, ...)` for `rows` rows.
fn multi_row_insert(rows: usize) -> String {
    let mut sql =
        String::from("INSERT INTO audit_log (at, actor, action, target, detail, ip) VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        let first = row * 6 + 1;
        sql.push('(');
        for column in 0..6 {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(first + column).to_string());
        }
        sql.push(')');
    }
    sql
}

fn audit_from_row(row: &AnyRow) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        detail: row.try_get("detail")?,
        ip: row.try_get("ip")?,
    })
}

impl Store {
    /// Appends an audit row on its own, for events that change nothing else (a login
    /// result, an impersonation).
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
        ip: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_audit(&mut conn, actor, action, target, detail, ip).await
    }

    /// Appends several audit rows in one transaction, one statement per
    /// [`AUDIT_ROWS_PER_INSERT`] rows (the gate batches login results this way,
    /// so a busy node takes the write lock once per batch and makes one round
    /// trip to the database per statement, not per row).
    pub async fn audit_batch(&self, rows: &[NewAudit]) -> Result<(), StoreError> {
        let at = unix_now();
        let mut tx = self.begin().await?;
        for chunk in rows.chunks(AUDIT_ROWS_PER_INSERT) {
            // Only numbered placeholders are generated; every value is bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(multi_row_insert(chunk.len())));
            for row in chunk {
                query = query
                    .bind(at)
                    .bind(row.actor.as_str())
                    .bind(row.action.as_str())
                    .bind(row.target.as_str())
                    .bind(row.detail.as_str())
                    .bind(row.ip.as_deref());
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Audit rows matching `filter`, newest first.
    pub async fn list_audit(&self, filter: AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let user = filter.user.as_deref().map(fold);
        let as_actor = user.as_ref().map(|u| format!("user:{u}"));
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, detail, ip FROM audit_log \
             WHERE (CAST($1 AS TEXT) IS NULL OR target = $1 OR actor = $2) \
               AND (CAST($3 AS BIGINT) IS NULL OR at >= $3) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(user)
        .bind(as_actor)
        .bind(filter.since)
        .bind(filter.limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_from_row).collect()
    }
}
