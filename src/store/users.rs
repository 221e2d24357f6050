//! Users: mailbox addresses postern has seen, their disabled and domain-administrator
//! flags, and the derived "enrolled" state (a confirmed second factor or a passkey exists). The
//! primary password is never stored: the upstream server checks it.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::audit::{AuditActor, insert_audit};
use super::domains::DomainRecord;
use super::events::{EventKind, insert_event};
use super::login_failures::{self, LoginFailures};
use super::{Store, StoreError, get_flag, get_parsed, normalize_domain, unix_now};
use crate::address::Address;
use crate::notices::NoticeKind;
use crate::policy::UserState;

/// The user columns plus the derived `enrolled`, for a `users u` query.
macro_rules! user_columns {
    () => {
        concat!(
            "u.id, u.address, u.domain, u.disabled, u.domain_admin, u.created_at, \
             CAST(CASE WHEN ",
            super::factors::enrolled_condition!("u.id"),
            " THEN 1 ELSE 0 END AS BIGINT) AS enrolled"
        )
    };
}

/// A user as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub id: i64,
    /// `local@domain`, lower-cased.
    pub address: String,
    /// The part after '@'; need not be a known domain.
    pub domain: String,
    pub disabled: bool,
    pub domain_admin: bool,
    /// A confirmed second factor or a passkey exists.
    pub enrolled: bool,
    pub created_at: i64,
}

impl UserRecord {
    /// What the policy function needs.
    pub fn state(&self) -> UserState {
        UserState {
            enrolled: self.enrolled,
            disabled: self.disabled,
        }
    }
}

/// What a login, and the re-check of a live session, read about an address:
/// read in one round trip, and nothing is created by reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The address's domain, if postern knows it (an unknown one is Disabled).
    pub domain: Option<DomainRecord>,
    /// The user's row, if postern has one (created by a successful login or an
    /// administrator; a refused login creates none).
    pub user: Option<UserRecord>,
    /// Recent failed logins, counted for any address.
    pub failures: LoginFailures,
}

impl Account {
    /// What the policy function needs: a user without a row has no factors and
    /// is not disabled.
    pub fn state(&self) -> UserState {
        self.user.as_ref().map_or(
            UserState {
                enrolled: false,
                disabled: false,
            },
            UserRecord::state,
        )
    }

    /// The domain's policy, `None` for a domain postern does not know.
    pub fn policy(&self) -> Option<crate::policy::DomainPolicy> {
        self.domain.as_ref().map(DomainRecord::policy)
    }
}

/// One line of `postern admin user list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    pub address: String,
    pub enrolled: bool,
    pub disabled: bool,
    pub domain_admin: bool,
    /// How many app passwords the user has.
    pub app_passwords: i64,
    /// The latest use of any of them.
    pub last_used_at: Option<i64>,
}

/// Trims and lower-cases `local@domain` (see [`crate::address::Address`]):
/// exactly one '@', both parts non-empty, no whitespace or control characters,
/// at most 256 bytes.
pub fn normalize_address(address: &str) -> Result<String, StoreError> {
    Address::parse(address)
        .map(Address::into_string)
        .map_err(|err| StoreError::InvalidAddress(err.to_string()))
}

fn user_from_row(row: &AnyRow) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        id: row.try_get("id")?,
        address: row.try_get("address")?,
        domain: row.try_get("domain")?,
        disabled: get_flag(row, "disabled")?,
        domain_admin: get_flag(row, "domain_admin")?,
        enrolled: get_flag(row, "enrolled")?,
        created_at: row.try_get("created_at")?,
    })
}

/// The `d_`-prefixed domain columns of a `LEFT JOIN domains d`.
fn domain_from_row(row: &AnyRow) -> Result<Option<DomainRecord>, StoreError> {
    Ok(match row.try_get::<Option<String>, _>("d_name")? {
        None => None,
        Some(name) => Some(DomainRecord {
            name,
            feature: get_flag(row, "d_feature")?,
            status: get_parsed(row, "d_status")?,
            grace_until: row.try_get("d_grace_until")?,
            created_at: row.try_get("d_created_at")?,
            trusted_browsers: get_flag(row, "d_trusted_browsers")?,
            notices_off: get_parsed(row, "d_notices_off")?,
        }),
    })
}

/// Creates the user on first sight and returns the record; `address` must already be
/// normalised. Safe against a concurrent creation of the same user.
pub(crate) async fn ensure_user_in(
    conn: &mut AnyConnection,
    address: &str,
) -> Result<UserRecord, StoreError> {
    insert_user(conn, address).await?;
    let row = sqlx::query(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users u WHERE u.address = $1"
    ))
    .bind(address)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => user_from_row(&row),
        None => Err(StoreError::UnknownUser(address.to_owned())),
    }
}

async fn insert_user(conn: &mut AnyConnection, address: &str) -> Result<(), StoreError> {
    let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
    sqlx::query(
        "INSERT INTO users (address, domain, disabled, domain_admin, created_at) \
         VALUES ($1, $2, 0, 0, $3) ON CONFLICT (address) DO NOTHING",
    )
    .bind(address)
    .bind(domain)
    .bind(unix_now())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The address of user `id`, or [`StoreError::UnknownUser`].
pub(crate) async fn address_of(conn: &mut AnyConnection, id: i64) -> Result<String, StoreError> {
    sqlx::query_scalar("SELECT address FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::UnknownUser(format!("#{id}")))
}

/// The rows a user owns that are removed one at a time, by id.
#[derive(Clone, Copy, Debug)]
pub(crate) enum OwnedRow {
    AppPassword,
    SecondFactor,
    Passkey,
}

impl OwnedRow {
    fn delete_sql(self) -> &'static str {
        match self {
            Self::AppPassword => "DELETE FROM app_passwords WHERE id = $1 AND user_id = $2",
            Self::SecondFactor => "DELETE FROM second_factors WHERE id = $1 AND user_id = $2",
            Self::Passkey => "DELETE FROM passkeys WHERE id = $1 AND user_id = $2",
        }
    }

    fn audit_action(self) -> &'static str {
        match self {
            Self::AppPassword => "app_password.revoke",
            Self::SecondFactor => "second_factor.remove",
            Self::Passkey => "passkey.remove",
        }
    }
}

/// Deletes the user's `row` with this `id` and audits it as `actor`, on `conn`
/// (the caller's transaction); returns the user's address.
/// [`StoreError::NotFound`] if the user has no such row.
pub(crate) async fn remove_owned(
    conn: &mut AnyConnection,
    row: OwnedRow,
    user_id: i64,
    id: i64,
    actor: &(impl AuditActor + ?Sized),
) -> Result<String, StoreError> {
    let address = address_of(conn, user_id).await?;
    let removed = sqlx::query(row.delete_sql())
        .bind(id)
        .bind(user_id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if removed == 0 {
        return Err(StoreError::NotFound);
    }
    let detail = format!("id={id}");
    insert_audit(conn, actor, row.audit_action(), &address, &detail, None).await?;
    Ok(address)
}

impl Store {
    /// The user's record, created on first sight.
    pub async fn ensure_user(&self, address: &str) -> Result<UserRecord, StoreError> {
        let address = normalize_address(address)?;
        let mut conn = self.pool.acquire().await?;
        ensure_user_in(&mut conn, &address).await
    }

    /// The user's record, if postern has seen the address.
    pub async fn user(&self, address: &str) -> Result<Option<UserRecord>, StoreError> {
        let address = normalize_address(address)?;
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users u WHERE u.address = $1"
        ))
        .bind(&address)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// The user with this id, if any.
    pub async fn user_by_id(&self, id: i64) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users u WHERE u.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// The address's [`Account`]: its domain, its user row and its failed
    /// logins, in one round trip; nothing is created. The one read behind every
    /// "may this credential log in" answer, at login and at re-check.
    pub async fn account(&self, address: &str) -> Result<Account, StoreError> {
        let address = normalize_address(address)?;
        let domain = normalize_domain(address.rsplit_once('@').map_or("", |(_, d)| d))?;
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            ", d.name AS d_name, d.feature AS d_feature, d.status AS d_status, \
             d.grace_until AS d_grace_until, d.created_at AS d_created_at, d.trusted_browsers AS d_trusted_browsers, d.notices_off AS d_notices_off, \
             f.failed_logins AS f_count, f.last_failed_at AS f_last \
             FROM (SELECT CAST($1 AS TEXT) AS address) q \
             LEFT JOIN users u ON u.address = q.address \
             LEFT JOIN domains d ON d.name = $2 \
             LEFT JOIN login_failures f ON f.address = q.address"
        ))
        .bind(&address)
        .bind(&domain)
        .fetch_one(&self.pool)
        .await?;
        let user = match row.try_get::<Option<i64>, _>("id")? {
            Some(_) => Some(user_from_row(&row)?),
            None => None,
        };
        let failures = match row.try_get::<Option<i64>, _>("f_count")? {
            Some(count) => LoginFailures {
                count,
                last_at: row.try_get::<Option<i64>, _>("f_last")?.unwrap_or(0),
            },
            None => LoginFailures::default(),
        };
        Ok(Account {
            domain: domain_from_row(&row)?,
            user,
            failures,
        })
    }

    /// A signed-in web user's domain record (None if unknown) and user record
    /// (created on first sight). One round trip for a user seen before. Logins
    /// read [`Store::account`] instead, which creates nothing.
    pub async fn login_context(
        &self,
        address: &str,
        domain: &str,
    ) -> Result<(Option<DomainRecord>, UserRecord), StoreError> {
        let address = normalize_address(address)?;
        let domain = normalize_domain(domain)?;
        let mut conn = self.pool.acquire().await?;
        for _ in 0..2 {
            let row = sqlx::query(concat!(
                "SELECT ",
                user_columns!(),
                ", d.name AS d_name, d.feature AS d_feature, d.status AS d_status, \
                 d.grace_until AS d_grace_until, d.created_at AS d_created_at, d.trusted_browsers AS d_trusted_browsers, d.notices_off AS d_notices_off \
                 FROM users u LEFT JOIN domains d ON d.name = $2 WHERE u.address = $1"
            ))
            .bind(&address)
            .bind(&domain)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(row) = row {
                return Ok((domain_from_row(&row)?, user_from_row(&row)?));
            }
            insert_user(&mut conn, &address).await?;
        }
        Err(StoreError::UnknownUser(address))
    }

    /// The users of `domain` with their app-password counts, sorted by address.
    pub async fn list_users(&self, domain: &str) -> Result<Vec<UserSummary>, StoreError> {
        let domain = normalize_domain(domain)?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            ", CAST((SELECT COUNT(*) FROM app_passwords a WHERE a.user_id = u.id) AS BIGINT) \
                 AS app_passwords, \
               (SELECT MAX(a.last_used_at) FROM app_passwords a WHERE a.user_id = u.id) \
                 AS last_used_at \
             FROM users u WHERE u.domain = $1 ORDER BY u.address"
        ))
        .bind(&domain)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let user = user_from_row(row)?;
                Ok(UserSummary {
                    address: user.address,
                    enrolled: user.enrolled,
                    disabled: user.disabled,
                    domain_admin: user.domain_admin,
                    app_passwords: row.try_get("app_passwords")?,
                    last_used_at: row.try_get("last_used_at")?,
                })
            })
            .collect()
    }

    /// Disables or re-enables a user (created if new). A disabled user's mail logins
    /// are refused whatever the credential; re-enabling also clears a guessing block.
    pub async fn set_user_disabled(
        &self,
        address: &str,
        disabled: bool,
        actor: &str,
    ) -> Result<(), StoreError> {
        let address = normalize_address(address)?;
        let mut tx = self.begin().await?;
        let user = ensure_user_in(&mut tx, &address).await?;
        sqlx::query("UPDATE users SET disabled = $2 WHERE id = $1")
            .bind(user.id)
            .bind(i64::from(disabled))
            .execute(&mut *tx)
            .await?;
        if disabled {
            // Every node at once: the rows are gone, whichever node reads them.
            super::web_sessions::end_user_web_sessions_in(&mut tx, &address).await?;
        } else {
            // Enabling is also how an administrator clears a guessing block.
            login_failures::clear_in(&mut tx, &address).await?;
        }
        let (action, kind) = if disabled {
            ("user.disable", EventKind::UserDisabled)
        } else {
            ("user.enable", EventKind::UserEnabled)
        };
        insert_audit(&mut tx, actor, action, &address, "", None).await?;
        insert_event(&mut tx, self.backend, kind, None, Some(&address), None).await?;
        self.commit_change(tx).await?;
        Ok(())
    }

    /// Removes a user's second factors, backup codes, app passwords and trusted
    /// browsers (created if new): the user is no longer enrolled and every app
    /// password stops working. A guessing block is cleared too.
    pub async fn reset_user(
        &self,
        address: &str,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<(), StoreError> {
        let address = normalize_address(address)?;
        let mut tx = self.begin().await?;
        let user = ensure_user_in(&mut tx, &address).await?;
        if user.enrolled {
            // Queued first, so that the recovery addresses about to go hear of it.
            super::notices::enqueue_in(
                &mut tx,
                self.backend,
                &address,
                NoticeKind::TwoStepOff,
                "every second factor, passkey, backup code and application password",
                actor,
                &[],
            )
            .await?;
        }
        let factors = sqlx::query("DELETE FROM second_factors WHERE user_id = $1")
            .bind(user.id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM backup_codes WHERE user_id = $1")
            .bind(user.id)
            .execute(&mut *tx)
            .await?;
        let passkeys = sqlx::query("DELETE FROM passkeys WHERE user_id = $1")
            .bind(user.id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let app_passwords = sqlx::query("DELETE FROM app_passwords WHERE user_id = $1")
            .bind(user.id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let trusted_browsers =
            super::trusted_browsers::forget_user_browsers_in(&mut tx, user.id).await?;
        login_failures::clear_in(&mut tx, &address).await?;
        super::web_sessions::end_user_web_sessions_in(&mut tx, &address).await?;
        let detail = format!(
            "second_factors={factors} passkeys={passkeys} app_passwords={app_passwords} \
             trusted_browsers={trusted_browsers}"
        );
        insert_audit(&mut tx, actor, "user.reset", &address, &detail, None).await?;
        insert_event(
            &mut tx,
            self.backend,
            EventKind::UserReset,
            None,
            Some(&address),
            None,
        )
        .await?;
        self.commit_change(tx).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_trimmed_lower_cased_and_checked() {
        assert_eq!(
            normalize_address("  Alice@Example.ORG\n").unwrap(),
            "alice@example.org"
        );
        for bad in [
            "",
            "alice",
            "@example.org",
            "alice@",
            "a@b@c",
            "al ice@x.org",
            "al\u{0}ice@x.org",
        ] {
            assert!(normalize_address(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}@x.org", "a".repeat(251));
        assert_eq!(long.len(), 257);
        assert!(normalize_address(&long).is_err());
        assert!(normalize_address(&long[1..]).is_ok());
    }
}
