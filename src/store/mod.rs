//! Persistent state: the sqlx pool, the migrations runner, and one submodule per table
//! family (domains, users and their failed logins, second factors, recovery e-mail
//! codes, app passwords, system administrators, the audit log, the event log, the
//! live-session table, the web sign-in sessions and the trusted browsers).
//!
//! The store owns SQL and nothing else: it does not decide whether a login is allowed
//! (that is [`crate::policy`]), hash passwords or talk to the network. Every change
//! made on behalf of someone writes its `audit_log` row, and where the change can make
//! a live session's credential unacceptable its `events` row, in the same transaction
//! as the change, so the audit trail and the event log never disagree with the data.
//!
//! One code path serves SQLite and PostgreSQL through sqlx's `Any` driver: every
//! integer column is a 64-bit integer on both (booleans are 0/1), placeholders are
//! `$1, $2, ...`, and the two migration folders describe the same schema.

mod app_passwords;
mod audit;
pub mod batch;
mod counters;
mod domains;
mod email_codes;
mod events;
mod factors;
mod login_failures;
mod notices;
mod passkeys;
mod rollout;
mod schema;
mod sessions;
mod sysadmins;
mod trusted_browsers;
mod users;
mod web_sessions;

pub(crate) use crate::clock::unix_now;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Connection, Row, Transaction};

use crate::epoch::ChangeEpoch;

pub use app_passwords::{AppPasswordRecord, MAX_APP_PASSWORDS, NewAppPassword};
pub use audit::{AuditActor, AuditFilter, AuditRecord, NewAudit, RemoteActor};
pub use counters::PenaltyRow;
pub use domains::DomainRecord;
pub use email_codes::{
    EMAIL_CODE_LIFETIME, EMAIL_CODE_MAX_FAILURES, EMAIL_CODE_MIN_INTERVAL, EMAIL_CODES_PER_HOUR,
    EmailCodeIssue, EmailCodePurpose, LiveEmailCode,
};
pub use events::{EventKind, EventRecord, NOTIFY_CHANNEL};
pub use factors::{FactorKind, SecondFactorRecord};
pub use login_failures::LoginFailures;
pub use notices::{NoticeRecord, QueuedNotice};
pub use passkeys::{CEREMONY_LIFETIME, CeremonyPurpose, PasskeyRecord};
pub use rollout::{CLAIM_LEASE_SECS, EnrollmentCounts, RolloutClaim, RolloutRecipient};
pub use schema::{MigrationId, SchemaMismatch, SchemaStatus};
pub use sessions::SessionRow;
pub use sysadmins::SysadminRecord;
pub use trusted_browsers::{NewTrustedBrowser, TrustedBrowserRecord};
pub use users::{Account, UserRecord, UserSummary, normalize_address};
pub use web_sessions::WebSessionRow;

/// Migrations for each backend; the right one is picked at runtime by [`Store::connect`].
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Everything that can go wrong in the store (all of it on postern's side, never
/// the client's).
///
/// Each variant's `Display` says everything once, causes included: sqlx's errors
/// are kept as data, not as [`std::error::Error::source`], because their own
/// `Display` already repeats their source, and a chain printed with `{:#}` (the
/// binary's edge) or a log line's `%err` would show it two or three times.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// [`Store::connect`] failed; `url` is already redacted ([`redact_url`]).
    #[error("cannot open the store {url}: {error}")]
    Open {
        /// The store URL without its password.
        url: String,
        /// Why: a database or migration error.
        error: Box<StoreError>,
    },
    /// The database could not be reached or refused a statement.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("database migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// The database's schema is not this binary's (older, newer or changed).
    #[error("{0}")]
    Schema(SchemaMismatch),
    /// A domain setting was changed for a domain postern does not know.
    #[error("unknown domain {0:?}: add it first with `postern admin domain add {0}`")]
    UnknownDomain(String),
    /// A user id or address that has no record.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// The user already has [`MAX_APP_PASSWORDS`] app passwords.
    #[error(
        "too many app passwords: a user may have at most {MAX_APP_PASSWORDS}; revoke one first"
    )]
    TooManyAppPasswords,
    /// The record named by id does not exist (or belongs to another user).
    #[error("not found")]
    NotFound,
    /// An address or domain name that is not well formed; the text says why.
    #[error("invalid address: {0}")]
    InvalidAddress(String),
    /// A stored value that cannot be decoded (e.g. an unknown scope or status).
    #[error("stored {what} is invalid: {detail}")]
    Corrupt {
        /// Which column.
        what: &'static str,
        /// The parse error.
        detail: String,
    },
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        Self::Database(err)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(err)
    }
}

/// A store URL fit to print: the password in the user part and any `password=`
/// (or `sslpassword=`) query parameter become `***`; everything else (scheme, user,
/// host, port, database, other parameters) is kept so an operator can tell which
/// database is meant. Every place that prints a store URL goes through this.
pub fn redact_url(url: &str) -> String {
    const HIDDEN: &str = "***";
    let (before_query, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let mut out = String::with_capacity(url.len());
    match before_query.split_once("://") {
        // The user part ends at the last `@` (a password may hold `/` or `@`).
        Some((scheme, rest)) if rest.contains('@') => {
            let at = rest.rfind('@').unwrap_or_default();
            let (userinfo, host) = rest.split_at(at);
            out.push_str(scheme);
            out.push_str("://");
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(HIDDEN);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(host);
        }
        _ => out.push_str(before_query),
    }
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((key, _))
                    if key.eq_ignore_ascii_case("password")
                        || key.eq_ignore_ascii_case("sslpassword") =>
                {
                    out.push_str(key);
                    out.push('=');
                    out.push_str(HIDDEN);
                }
                _ => out.push_str(pair),
            }
        }
    }
    out
}

/// The database behind a [`Store`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A local file (the default); one node.
    Sqlite,
    /// A shared server; several nodes.
    Postgres,
}

impl Backend {
    /// The backend a connection URL names, if it is one postern supports.
    pub fn from_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// How long a caller waits for a database connection (sqlx retries a refused
/// connection until then). Past it the caller fails: a mail login gets a
/// temporary error within seconds instead of hanging while the database is down.
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Handle to the database; cheap to clone (it wraps a connection pool).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// This process's change counter (see [`crate::epoch`]): moved after each
    /// commit through this handle (or its clones) that appended an event or
    /// created an app password; the event-log tail moves it for every event.
    epoch: ChangeEpoch,
}

impl Store {
    /// Connects to `url` (`sqlite://path`, `sqlite:path`, `postgres://...`) and brings
    /// the schema up to date (`serve`'s start). A SQLite file and its folder are
    /// created if missing.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let store = Store::open(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to `url` without touching the schema (see [`Store::migrate`] and
    /// [`Store::schema_status`]). A SQLite file and its folder are created if
    /// missing. A failure is [`StoreError::Open`], which names the URL without
    /// its password.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Self::open_pool(url).await.map_err(|err| StoreError::Open {
            url: redact_url(url),
            error: Box::new(err),
        })
    }

    async fn open_pool(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url).ok_or_else(|| {
            sqlx::Error::Configuration(
                "unsupported database URL: expected sqlite: or postgres:".into(),
            )
        })?;
        let pool = match backend {
            Backend::Sqlite => connect_sqlite(url).await?,
            Backend::Postgres => connect_postgres(url).await?,
        };
        Ok(Store {
            pool,
            backend,
            epoch: ChangeEpoch::default(),
        })
    }

    /// This process's change counter (see [`crate::epoch`]).
    pub fn epoch(&self) -> &ChangeEpoch {
        &self.epoch
    }

    /// Which database this store talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every pooled connection; further calls fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a write transaction. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`) so that a read-then-write transaction waits for another
    /// process's writer instead of failing with SQLITE_BUSY half-way.
    async fn begin(&self) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Commits a transaction that can alter a login's outcome (it appended an
    /// event or created an app password), then moves the change counter.
    async fn commit_change(&self, tx: Transaction<'static, Any>) -> Result<(), StoreError> {
        tx.commit().await?;
        self.epoch.advance();
        Ok(())
    }
}

async fn connect_postgres(url: &str) -> Result<AnyPool, StoreError> {
    let pool = AnyPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect(url)
        .await;
    match pool {
        Ok(pool) => Ok(pool),
        // The pool retries until its timeout and then says only that it timed
        // out; one direct attempt tells the operator why (refused, bad password).
        Err(sqlx::Error::PoolTimedOut) => {
            match tokio::time::timeout(ACQUIRE_TIMEOUT, sqlx::AnyConnection::connect(url)).await {
                Ok(Err(err)) => Err(err.into()),
                _ => Err(sqlx::Error::PoolTimedOut.into()),
            }
        }
        Err(err) => Err(err.into()),
    }
}

async fn connect_sqlite(url: &str) -> Result<AnyPool, StoreError> {
    let (path, query) = match url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        Some(rest) => rest.split_once('?').unwrap_or((rest, "")),
        None => (url, ""),
    };
    let in_memory = path.is_empty() || path == ":memory:" || query.contains("mode=memory");
    let mut url = url.to_owned();
    if !in_memory {
        if let Some(parent) = std::path::Path::new(path).parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
        }
        if !query.split('&').any(|kv| kv.starts_with("mode=")) {
            url.push(if query.is_empty() && !url.ends_with('?') {
                '?'
            } else {
                '&'
            });
            url.push_str("mode=rwc");
        }
    }
    let mut options = AnyPoolOptions::new()
        .max_connections(if in_memory { 1 } else { 5 })
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                // `serve` and `admin` share the file: a writer waits up to 5 s for the
                // other one. Set first, as switching to WAL may itself have to wait.
                sqlx::query("PRAGMA busy_timeout = 5000")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("PRAGMA foreign_keys = ON")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("PRAGMA journal_mode = WAL")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("PRAGMA synchronous = NORMAL")
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        });
    if in_memory {
        // Every connection to `:memory:` is a new, empty database: keep the one forever.
        options = options.idle_timeout(None).max_lifetime(None);
    }
    Ok(options
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await?)
}

/// A 0/1 integer column as a bool.
fn get_flag(row: &AnyRow, column: &str) -> Result<bool, StoreError> {
    Ok(row.try_get::<i64, _>(column)? != 0)
}

/// A text column parsed with `FromStr`; a bad value is [`StoreError::Corrupt`].
fn get_parsed<T>(row: &AnyRow, column: &'static str) -> Result<T, StoreError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let text: String = row.try_get(column)?;
    text.parse().map_err(|e: T::Err| StoreError::Corrupt {
        what: column,
        detail: format!("{text:?}: {e}"),
    })
}

/// Lower-cases and checks a domain name (no '@', no whitespace, not empty).
fn normalize_domain(name: &str) -> Result<String, StoreError> {
    let name = name.trim().to_lowercase();
    if name.is_empty()
        || name.len() > 253
        || name.contains('@')
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(StoreError::InvalidAddress(format!(
            "{name:?} is not a domain name"
        )));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_from_url() {
        assert_eq!(
            Backend::from_url("sqlite://data/x.db"),
            Some(Backend::Sqlite)
        );
        assert_eq!(
            Backend::from_url("postgres://h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(
            Backend::from_url("postgresql://h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::from_url("mysql://h/db"), None);
    }

    #[test]
    fn store_urls_are_printed_without_passwords() {
        for (url, shown) in [
            (
                "postgres://postern:s3cret@db:5432/postern",
                "postgres://postern:***@db:5432/postern",
            ),
            // A password with `@` and `/` in it (not percent-encoded).
            (
                "postgres://u:a@b/c@db/postern",
                "postgres://u:***@db/postern",
            ),
            (
                "postgresql://db/postern?user=u&password=s3cret&sslmode=require",
                "postgresql://db/postern?user=u&password=***&sslmode=require",
            ),
            (
                "postgres://postern@db/postern",
                "postgres://postern@db/postern",
            ),
            ("sqlite://data/p.db", "sqlite://data/p.db"),
            ("sqlite:data/p.db?mode=rwc", "sqlite:data/p.db?mode=rwc"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[tokio::test]
    async fn an_unsupported_url_is_refused_without_its_password() {
        let err = Store::connect("mysql://root:s3cret@db/x")
            .await
            .expect_err("mysql is not supported");
        let text = format!("{err}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("mysql://root:***@db/x"), "{text}");
        assert!(std::error::Error::source(&err).is_none(), "{text}");
    }

    #[test]
    fn domain_names_are_lower_cased_and_checked() {
        assert_eq!(normalize_domain(" Example.ORG ").unwrap(), "example.org");
        assert!(normalize_domain("").is_err());
        assert!(normalize_domain("a@b").is_err());
        assert!(normalize_domain("a b").is_err());
    }
}
