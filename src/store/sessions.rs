//! The live-session table: every node's open mail sessions, so that `postern admin
//! session list` sees all of them. The in-memory registry of each node is the source
//! of truth for killing; this table is its shared, best-effort mirror.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError, get_parsed};
use crate::policy::Protocol;

/// One live session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRow {
    /// Unique across nodes.
    pub id: String,
    /// The `postern serve` node holding the connection.
    pub node: String,
    pub user_address: String,
    pub protocol: Protocol,
    /// `primary` or `app-password:<id>`.
    pub credential: String,
    pub client_ip: String,
    /// Unix seconds.
    pub started_at: i64,
}

fn session_from_row(row: &AnyRow) -> Result<SessionRow, StoreError> {
    Ok(SessionRow {
        id: row.try_get("id")?,
        node: row.try_get("node")?,
        user_address: row.try_get("user_address")?,
        protocol: get_parsed(row, "protocol")?,
        credential: row.try_get("credential")?,
        client_ip: row.try_get("client_ip")?,
        started_at: row.try_get("started_at")?,
    })
}

impl Store {
    /// Records a session that just logged in.
    pub async fn register_session(&self, session: &SessionRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (id, node, user_address, protocol, credential, client_ip, \
             started_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&session.id)
        .bind(&session.node)
        .bind(&session.user_address)
        .bind(session.protocol.as_str())
        .bind(&session.credential)
        .bind(&session.client_ip)
        .bind(session.started_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Applies a batch of session changes in one transaction: `started` rows are
    /// inserted, then the `ended` ids deleted (unknown ids are ignored).
    pub async fn sync_sessions(
        &self,
        started: &[SessionRow],
        ended: &[String],
    ) -> Result<(), StoreError> {
        if started.is_empty() && ended.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for session in started {
            sqlx::query(
                "INSERT INTO sessions (id, node, user_address, protocol, credential, \
                 client_ip, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&session.id)
            .bind(&session.node)
            .bind(&session.user_address)
            .bind(session.protocol.as_str())
            .bind(&session.credential)
            .bind(&session.client_ip)
            .bind(session.started_at)
            .execute(&mut *tx)
            .await?;
        }
        for id in ended {
            sqlx::query("DELETE FROM sessions WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Forgets a session that ended; unknown ids are ignored.
    pub async fn unregister_session(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every node's sessions, oldest first.
    pub async fn list_sessions(&self) -> Result<Vec<SessionRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, node, user_address, protocol, credential, client_ip, started_at \
             FROM sessions ORDER BY started_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    /// Forgets every session of `node` (at its start, after a crash, or at shutdown);
    /// returns how many were removed.
    pub async fn remove_node_sessions(&self, node: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM sessions WHERE node = $1")
            .bind(node)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}
