//! The schema's version: which of the embedded migrations a database has applied
//! (sqlx's `_sqlx_migrations` table), compared with the ones this binary carries.
//!
//! Only `postern migrate` and `serve`'s start change the schema. `postern admin`
//! asks [`Store::schema_status`] first and stops on any difference instead of
//! migrating a database a running `serve` of another version is using. This
//! module reads the migrations table and nothing else; it never creates it.

use std::fmt;

use sqlx::Row;
use sqlx::migrate::{Migrate, Migrator};

use super::{Backend, Store, StoreError};

/// One migration, by version and description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationId {
    /// The number in the file name (`0004_...sql` is 4).
    pub version: i64,
    /// The rest of the file name, words separated by spaces.
    pub description: String,
}

impl fmt::Display for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.description.is_empty() {
            write!(f, "{:04}", self.version)
        } else {
            write!(f, "{:04} ({})", self.version, self.description)
        }
    }
}

/// How a database's schema compares with this binary's migrations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchemaStatus {
    /// Versions applied to the database, in order.
    pub applied: Vec<i64>,
    /// The binary's migrations the database has not applied: it is older.
    pub pending: Vec<MigrationId>,
    /// Versions applied to the database that this binary does not know: it was
    /// migrated by a newer postern.
    pub unknown: Vec<i64>,
    /// Versions applied whose SQL differs from this binary's file of that number.
    pub changed: Vec<i64>,
    /// A migration that started and failed half-way.
    pub dirty: Option<i64>,
}

impl SchemaStatus {
    /// The database has no schema at all (a new file or an empty database).
    pub fn is_empty(&self) -> bool {
        self.applied.is_empty() && self.dirty.is_none()
    }

    /// The database's schema is exactly this binary's.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty()
            && self.unknown.is_empty()
            && self.changed.is_empty()
            && self.dirty.is_none()
    }

    /// The highest applied version (0 when none is).
    pub fn version(&self) -> i64 {
        self.applied.last().copied().unwrap_or(0)
    }

    /// `postern migrate` cannot help: the database is newer, or differs.
    pub fn needs_newer_binary(&self) -> bool {
        !self.unknown.is_empty() || !self.changed.is_empty() || self.dirty.is_some()
    }
}

/// A schema that is not this binary's, as an operator reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaMismatch(pub SchemaStatus);

impl fmt::Display for SchemaMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = &self.0;
        let list = |versions: &[i64]| {
            versions
                .iter()
                .map(|v| format!("{v:04}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        if let Some(version) = status.dirty {
            parts.push(format!(
                "migration {version:04} failed half-way; repair the database by hand"
            ));
        }
        if !status.unknown.is_empty() {
            parts.push(format!(
                "the database schema is newer than this postern {}: it has migration{} {} \
                 that this binary does not know; run the newer postern",
                env!("CARGO_PKG_VERSION"),
                if status.unknown.len() == 1 { "" } else { "s" },
                list(&status.unknown)
            ));
        }
        if !status.changed.is_empty() {
            parts.push(format!(
                "migration{} {} in the database differ{} from this binary's",
                if status.changed.len() == 1 { "" } else { "s" },
                list(&status.changed),
                if status.changed.len() == 1 { "s" } else { "" },
            ));
        }
        if !status.pending.is_empty() {
            let pending: Vec<String> = status.pending.iter().map(ToString::to_string).collect();
            parts.push(format!(
                "the database schema is older than this postern {}: migration{} {} not applied; \
                 run `postern migrate` (or restart `serve` with this version)",
                env!("CARGO_PKG_VERSION"),
                if pending.len() == 1 { "" } else { "s" },
                pending.join(", ")
            ));
        }
        write!(f, "{}", parts.join("; "))
    }
}

impl std::error::Error for SchemaMismatch {}

impl Store {
    /// The embedded migrations for this store's backend.
    pub(super) fn migrator(&self) -> &'static Migrator {
        match self.backend {
            Backend::Sqlite => &super::SQLITE_MIGRATOR,
            Backend::Postgres => &super::POSTGRES_MIGRATOR,
        }
    }

    /// The binary's migrations, oldest first.
    pub fn known_migrations(&self) -> Vec<MigrationId> {
        self.migrator()
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| MigrationId {
                version: m.version,
                description: m.description.to_string(),
            })
            .collect()
    }

    /// Compares the database's applied migrations with the binary's. Reads only;
    /// a database without the migrations table has applied none.
    pub async fn schema_status(&self) -> Result<SchemaStatus, StoreError> {
        let migrator = self.migrator();
        let table = migrator.table_name.as_ref();
        let exists_sql = match self.backend {
            Backend::Sqlite => {
                "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1"
            }
            Backend::Postgres => {
                "SELECT COUNT(*) AS n FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = $1"
            }
        };
        let row = sqlx::query(exists_sql)
            .bind(table)
            .fetch_one(&self.pool)
            .await?;
        let known: Vec<_> = migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .collect();
        if row.try_get::<i64, _>("n")? == 0 {
            return Ok(SchemaStatus {
                pending: self.known_migrations(),
                ..SchemaStatus::default()
            });
        }
        let mut conn = self.pool.acquire().await?;
        let dirty = conn.dirty_version(table).await?;
        let applied = conn.list_applied_migrations(table).await?;
        drop(conn);
        let mut status = SchemaStatus {
            dirty,
            ..SchemaStatus::default()
        };
        for done in &applied {
            status.applied.push(done.version);
            match known.iter().find(|m| m.version == done.version) {
                None => status.unknown.push(done.version),
                Some(m) if m.checksum != done.checksum => status.changed.push(done.version),
                Some(_) => {}
            }
        }
        status.pending = known
            .iter()
            .filter(|m| !status.applied.contains(&m.version))
            .map(|m| MigrationId {
                version: m.version,
                description: m.description.to_string(),
            })
            .collect();
        Ok(status)
    }

    /// Applies the binary's pending migrations (`postern migrate`, `serve`'s
    /// start); returns the ones applied. Refuses a database migrated by a newer
    /// postern, naming its versions, without touching it.
    pub async fn migrate(&self) -> Result<Vec<MigrationId>, StoreError> {
        let before = self.schema_status().await?;
        if before.needs_newer_binary() {
            return Err(StoreError::Schema(SchemaMismatch(before)));
        }
        if before.pending.is_empty() {
            return Ok(Vec::new());
        }
        self.migrator().run(&self.pool).await?;
        Ok(before.pending)
    }

    /// Fails unless the schema is exactly this binary's; a database with no
    /// schema at all is given one first (nothing can be running on it yet).
    /// For `postern admin`, which must never migrate under a running `serve`.
    pub async fn require_current_schema(&self) -> Result<(), StoreError> {
        let status = self.schema_status().await?;
        if status.is_current() {
            return Ok(());
        }
        if status.is_empty() {
            self.migrate().await?;
            return Ok(());
        }
        Err(StoreError::Schema(SchemaMismatch(status)))
    }
}
