//! Trusted browsers (`trusted_browsers`): browsers a user let skip the web
//! sign-in's second step for 30 days, and the domain setting that allows it.
//!
//! Rows are keyed by the keyed hash of the browser's cookie id (the web layer
//! hashes; the store never sees an id). Whether a row lets a sign-in skip the
//! second step is `crate::policy::decide_trusted_browser`'s to say, not the
//! store's; the store deletes rows (audited, in the change's transaction)
//! whenever they must never vouch again: forgotten by the user, 2-Step turned
//! off, `user reset`, the domain's setting turned off, voided at a sign-in, or
//! expired (the sweep).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::audit::{AuditActor, insert_audit};
use super::users::address_of;
use super::{Store, StoreError, normalize_domain};

/// One trusted browser as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedBrowserRecord {
    pub id: i64,
    pub user_id: i64,
    /// The keyed hash of the cookie's id (hex), to tell "this browser".
    pub id_hash: String,
    /// A short description, such as "Firefox on Linux".
    pub browser: String,
    /// 16 bits of the keyed hash of the primary password it was trusted with.
    pub password_tag: u16,
    /// Unix seconds.
    pub created_at: i64,
    /// The last sign-in it let skip the second step (Unix seconds).
    pub last_used_at: Option<i64>,
    /// Unix seconds: it vouches for nothing from then on, and is swept.
    pub expires_at: i64,
}

/// A browser to trust, as [`Store::trust_browser`] stores it.
#[derive(Clone, Debug)]
pub struct NewTrustedBrowser<'a> {
    pub id_hash: &'a str,
    pub browser: &'a str,
    pub password_tag: u16,
    pub created_at: i64,
    pub expires_at: i64,
    /// The hash of the cookie this browser held before (another user's, or an
    /// earlier one): that row can no longer be reached and is deleted.
    pub replaces: Option<&'a str>,
}

/// The columns [`record_from_row`] reads.
macro_rules! columns {
    () => {
        "id, user_id, id_hash, browser, password_tag, created_at, last_used_at, expires_at"
    };
}

fn record_from_row(row: &AnyRow) -> Result<TrustedBrowserRecord, StoreError> {
    let tag: i64 = row.try_get("password_tag")?;
    Ok(TrustedBrowserRecord {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        id_hash: row.try_get("id_hash")?,
        browser: row.try_get("browser")?,
        password_tag: u16::try_from(tag).map_err(|_| StoreError::Corrupt {
            what: "trusted_browsers.password_tag",
            detail: format!("{tag} is not 16 bits"),
        })?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

/// Deletes every trusted browser of user `user_id` on `conn` (the caller's
/// transaction); returns how many there were.
pub(crate) async fn forget_user_browsers_in(
    conn: &mut sqlx::AnyConnection,
    user_id: i64,
) -> Result<u64, StoreError> {
    Ok(
        sqlx::query("DELETE FROM trusted_browsers WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
    )
}

impl Store {
    /// Trusts a browser of user `user_id`, audited as `actor`; returns its id.
    pub async fn trust_browser(
        &self,
        user_id: i64,
        browser: &NewTrustedBrowser<'_>,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<i64, StoreError> {
        let mut tx = self.begin().await?;
        let address = address_of(&mut tx, user_id).await?;
        if let Some(old) = browser.replaces {
            sqlx::query("DELETE FROM trusted_browsers WHERE id_hash = $1")
                .bind(old)
                .execute(&mut *tx)
                .await?;
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO trusted_browsers (user_id, id_hash, browser, password_tag, created_at, \
             last_used_at, expires_at) VALUES ($1, $2, $3, $4, $5, NULL, $6) RETURNING id",
        )
        .bind(user_id)
        .bind(browser.id_hash)
        .bind(browser.browser)
        .bind(i64::from(browser.password_tag))
        .bind(browser.created_at)
        .bind(browser.expires_at)
        .fetch_one(&mut *tx)
        .await?;
        let detail = format!("id={id} {}", browser.browser);
        insert_audit(
            &mut tx,
            actor,
            "trusted_browser.add",
            &address,
            &detail,
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// The trusted browser stored under `id_hash`, whoever's it is and even
    /// expired: the policy decides what it is worth.
    pub async fn trusted_browser(
        &self,
        id_hash: &str,
    ) -> Result<Option<TrustedBrowserRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM trusted_browsers WHERE id_hash = $1"
        ))
        .bind(id_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    /// The user's trusted browsers that have not expired at `now`, newest first.
    pub async fn trusted_browsers(
        &self,
        user_id: i64,
        now: i64,
    ) -> Result<Vec<TrustedBrowserRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM trusted_browsers WHERE user_id = $1 AND expires_at > $2 \
             ORDER BY created_at DESC, id DESC"
        ))
        .bind(user_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record_from_row).collect()
    }

    /// A sign-in that skipped the second step thanks to browser `id` of user
    /// `user_id`: its last use is `now`, and the sign-in is audited.
    pub async fn trusted_browser_signed_in(
        &self,
        user_id: i64,
        id: i64,
        now: i64,
        ip: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let address = address_of(&mut tx, user_id).await?;
        let browser: Option<String> = sqlx::query_scalar(
            "UPDATE trusted_browsers SET last_used_at = $3 WHERE id = $1 AND user_id = $2 \
             RETURNING browser",
        )
        .bind(id)
        .bind(user_id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(browser) = browser else {
            return Err(StoreError::NotFound);
        };
        let actor = format!("user:{address}");
        let detail = format!("second step skipped: trusted browser id={id} {browser}");
        insert_audit(
            &mut tx,
            &actor,
            "web.login.trusted_browser",
            &address,
            &detail,
            ip,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets the user's browser `id`, audited as `actor` with `why`
    /// ("forgotten", or why a sign-in voided it). [`StoreError::NotFound`] if
    /// the user has no such browser.
    pub async fn forget_trusted_browser(
        &self,
        user_id: i64,
        id: i64,
        why: &str,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let address = address_of(&mut tx, user_id).await?;
        let browser: Option<String> = sqlx::query_scalar(
            "DELETE FROM trusted_browsers WHERE id = $1 AND user_id = $2 RETURNING browser",
        )
        .bind(id)
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(browser) = browser else {
            return Err(StoreError::NotFound);
        };
        let detail = format!("id={id} {browser}: {why}");
        insert_audit(
            &mut tx,
            actor,
            "trusted_browser.forget",
            &address,
            &detail,
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets every trusted browser of the user, audited as `actor` with
    /// `why` ("forget all", "2-Step turned off") when there was any; returns
    /// how many there were.
    pub async fn forget_trusted_browsers(
        &self,
        user_id: i64,
        why: &str,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let address = address_of(&mut tx, user_id).await?;
        let forgotten = forget_user_browsers_in(&mut tx, user_id).await?;
        if forgotten > 0 {
            let detail = format!("{forgotten} browsers: {why}");
            insert_audit(
                &mut tx,
                actor,
                "trusted_browser.forget_all",
                &address,
                &detail,
                None,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(forgotten)
    }

    /// The domain administrator's "Remember trusted browsers" for a known
    /// domain. Turning it off forgets every trusted browser of the domain's
    /// users in the same transaction; returns how many.
    pub async fn set_domain_trusted_browsers(
        &self,
        domain: &str,
        allowed: bool,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<u64, StoreError> {
        let domain = normalize_domain(domain)?;
        let mut tx = self.begin().await?;
        let changed = sqlx::query("UPDATE domains SET trusted_browsers = $2 WHERE name = $1")
            .bind(&domain)
            .bind(i64::from(allowed))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if changed == 0 {
            return Err(StoreError::UnknownDomain(domain));
        }
        let forgotten = if allowed {
            0
        } else {
            sqlx::query(
                "DELETE FROM trusted_browsers WHERE user_id IN \
                 (SELECT id FROM users WHERE domain = $1)",
            )
            .bind(&domain)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        };
        let detail = if allowed {
            "allowed".to_owned()
        } else {
            format!("not allowed ({forgotten} browsers forgotten)")
        };
        insert_audit(
            &mut tx,
            actor,
            "domain.trusted_browsers",
            &domain,
            &detail,
            None,
        )
        .await?;
        tx.commit().await?;
        Ok(forgotten)
    }

    /// Deletes the trusted browsers expired at `now`; returns how many.
    pub async fn sweep_trusted_browsers(&self, now: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM trusted_browsers WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
