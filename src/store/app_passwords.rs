//! App passwords: per-device credentials for mail clients. Only a keyed hash is
//! stored: `lookup`, HMAC under the instance key of the user and the generated
//! secret, unique per user, so finding the row is the verification. At most
//! [`MAX_APP_PASSWORDS`] per user, checked inside the creating transaction.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::audit::{AuditActor, insert_audit};
use super::events::{EventKind, insert_event};
use super::notices::enqueue_in;
use super::users::{OwnedRow, address_of, remove_owned};
use super::{Backend, Store, StoreError, get_parsed, unix_now};
use crate::notices::{self, NoticeKind};
use crate::policy::{Protocol, Scopes, SourceNetworks};

/// How many app passwords one user may have (DESIGN: at most 40).
pub const MAX_APP_PASSWORDS: i64 = 40;

/// What [`Store::create_app_password`] stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAppPassword {
    /// The device, chosen by the user.
    pub name: String,
    /// Hex keyed hash of the normalised password, unique per user.
    pub lookup: String,
    pub scopes: Scopes,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    /// Where it may be used from (anywhere when empty).
    pub networks: SourceNetworks,
}

/// An app password as stored (never the password itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppPasswordRecord {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub scopes: Scopes,
    /// Where it may be used from (anywhere when empty).
    pub networks: SourceNetworks,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub last_used_ip: Option<String>,
    /// "imap", "pop3" or "smtp".
    pub last_used_protocol: Option<String>,
}

fn app_password_from_row(row: &AnyRow) -> Result<AppPasswordRecord, StoreError> {
    Ok(AppPasswordRecord {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        scopes: get_parsed(row, "scopes")?,
        networks: get_parsed(row, "networks")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        last_used_at: row.try_get("last_used_at")?,
        last_used_ip: row.try_get("last_used_ip")?,
        last_used_protocol: row.try_get("last_used_protocol")?,
    })
}

macro_rules! app_password_columns {
    () => {
        "id, user_id, name, scopes, networks, created_at, expires_at, last_used_at, \
         last_used_ip, last_used_protocol"
    };
}

impl Store {
    /// Stores a new app password for the user and returns its id; refused with
    /// [`StoreError::TooManyAppPasswords`] once the user has [`MAX_APP_PASSWORDS`].
    pub async fn create_app_password(
        &self,
        user_id: i64,
        new: NewAppPassword,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<i64, StoreError> {
        let mut tx = self.begin().await?;
        // Lock the user's row so two concurrent creations cannot both pass the count
        // (SQLite's BEGIN IMMEDIATE already serialises writers).
        let address: Option<String> = match self.backend {
            Backend::Postgres => {
                sqlx::query_scalar("SELECT address FROM users WHERE id = $1 FOR UPDATE")
                    .bind(user_id)
                    .fetch_optional(&mut *tx)
                    .await?
            }
            Backend::Sqlite => Some(address_of(&mut tx, user_id).await?),
        };
        let address = address.ok_or_else(|| StoreError::UnknownUser(format!("#{user_id}")))?;
        let count: i64 = sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM app_passwords WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        if count >= MAX_APP_PASSWORDS {
            return Err(StoreError::TooManyAppPasswords);
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO app_passwords (user_id, name, lookup, scopes, created_at, \
             expires_at, networks) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(user_id)
        .bind(&new.name)
        .bind(&new.lookup)
        .bind(new.scopes.to_string())
        .bind(unix_now())
        .bind(new.expires_at)
        .bind(new.networks.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let mut detail = format!("id={id} name={:?} scopes={}", new.name, new.scopes);
        if let Some(at) = new.expires_at {
            detail.push_str(&format!(" expires_at={at}"));
        }
        if !new.networks.is_anywhere() {
            detail.push_str(&format!(" networks={}", new.networks));
        }
        insert_audit(
            &mut tx,
            actor,
            "app_password.create",
            &address,
            &detail,
            None,
        )
        .await?;
        enqueue_in(
            &mut tx,
            self.backend,
            &address,
            NoticeKind::AppPasswordCreated,
            &notices::device_words(&new.name),
            actor,
            &[],
        )
        .await?;
        self.commit_change(tx).await?;
        Ok(id)
    }

    /// The user's app password with this keyed-hash lookup value, if any.
    pub async fn app_password_by_lookup(
        &self,
        user_id: i64,
        lookup: &str,
    ) -> Result<Option<AppPasswordRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            app_password_columns!(),
            " FROM app_passwords WHERE user_id = $1 AND lookup = $2"
        ))
        .bind(user_id)
        .bind(lookup)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(app_password_from_row).transpose()
    }

    /// The user's app password with this id, if any.
    pub async fn app_password(
        &self,
        user_id: i64,
        id: i64,
    ) -> Result<Option<AppPasswordRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            app_password_columns!(),
            " FROM app_passwords WHERE user_id = $1 AND id = $2"
        ))
        .bind(user_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(app_password_from_row).transpose()
    }

    /// The user's app passwords, oldest first.
    pub async fn list_app_passwords(
        &self,
        user_id: i64,
    ) -> Result<Vec<AppPasswordRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            app_password_columns!(),
            " FROM app_passwords WHERE user_id = $1 ORDER BY id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(app_password_from_row).collect()
    }

    /// Deletes one of the user's app passwords and appends an `app_password_revoked`
    /// event so live sessions using it end. [`StoreError::NotFound`] if the user has
    /// no app password with this id.
    pub async fn revoke_app_password(
        &self,
        user_id: i64,
        id: i64,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let name: Option<String> =
            sqlx::query_scalar("SELECT name FROM app_passwords WHERE id = $1 AND user_id = $2")
                .bind(id)
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
        let address = remove_owned(&mut tx, OwnedRow::AppPassword, user_id, id, actor).await?;
        enqueue_in(
            &mut tx,
            self.backend,
            &address,
            NoticeKind::AppPasswordRevoked,
            &notices::device_words(name.as_deref().unwrap_or_default()),
            actor,
            &[],
        )
        .await?;
        insert_event(
            &mut tx,
            self.backend,
            EventKind::AppPasswordRevoked,
            None,
            Some(&address),
            Some(id),
        )
        .await?;
        self.commit_change(tx).await?;
        Ok(())
    }

    /// Remembers the latest successful use of an app password. A password revoked in
    /// the meantime is silently skipped.
    pub async fn record_app_password_use(
        &self,
        id: i64,
        at: i64,
        ip: &str,
        protocol: Protocol,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE app_passwords SET last_used_at = $2, last_used_ip = $3, \
             last_used_protocol = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(at)
        .bind(ip)
        .bind(protocol.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
