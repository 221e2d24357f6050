//! Domains: the system administrator's feature switch and the domain administrator's
//! status and grace period. A domain missing here behaves as Disabled.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::audit::{AuditActor, insert_audit};
use super::events::{EventKind, insert_event};
use super::users::{ensure_user_in, normalize_address};
use super::{Store, StoreError, get_flag, get_parsed, normalize_domain, unix_now};
use crate::notices::NoticeKinds;
use crate::policy::{DomainPolicy, DomainStatus};

/// A domain as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainRecord {
    /// Lower-cased.
    pub name: String,
    /// The system administrator's switch.
    pub feature: bool,
    /// The domain administrator's choice; applies once `feature` is on.
    pub status: DomainStatus,
    /// End of the Forced enrollment grace period (Unix seconds).
    pub grace_until: Option<i64>,
    pub created_at: i64,
    /// The domain administrator's "Remember trusted browsers": whether a
    /// browser may skip the sign-in's second step for 30 days.
    pub trusted_browsers: bool,
    /// The security notices the domain administrator turned off.
    pub notices_off: NoticeKinds,
}

impl DomainRecord {
    /// What the policy function needs.
    pub fn policy(&self) -> DomainPolicy {
        DomainPolicy {
            feature: self.feature,
            status: self.status,
            grace_until: self.grace_until,
        }
    }
}

/// Decodes `name, feature, status, grace_until, created_at, trusted_browsers, notices_off`.
pub(crate) fn domain_from_row(row: &AnyRow) -> Result<DomainRecord, StoreError> {
    Ok(DomainRecord {
        name: row.try_get("name")?,
        feature: get_flag(row, "feature")?,
        status: get_parsed(row, "status")?,
        grace_until: row.try_get("grace_until")?,
        created_at: row.try_get("created_at")?,
        trusted_browsers: get_flag(row, "trusted_browsers")?,
        notices_off: get_parsed(row, "notices_off")?,
    })
}

/// The longest host name (RFC 1035 §2.3.4, in its ASCII form).
const MAX_HOST_NAME: usize = 253;
/// The longest label of a host name.
const MAX_LABEL: usize = 63;

/// Refuses anything but a host name: IDNA (UTS #46 with the STD3 rules, so
/// `javascript:…`, spaces, slashes and the like are out), and in its ASCII
/// (Punycode) form labels of 1 to 63 letters, digits and hyphens, no hyphen at
/// either end, at most 253 characters in all. The name is kept as typed
/// (lowercased), Unicode or Punycode, as mail addresses spell it.
pub fn validate_host_name(name: &str) -> Result<(), StoreError> {
    let refused = |why: &str| {
        StoreError::InvalidAddress(format!(
            "{name:?} is not a domain name ({why}); use letters, digits, hyphens and dots, \
             like example.org"
        ))
    };
    let ascii = idna::domain_to_ascii_strict(name)
        .map_err(|_| refused("not a valid internationalised host name"))?;
    if ascii.is_empty() || ascii.len() > MAX_HOST_NAME {
        return Err(refused("1 to 253 characters"));
    }
    for label in ascii.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL {
            return Err(refused("each part between dots has 1 to 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(refused("letters, digits and hyphens only"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(refused("no hyphen at the start or end of a part"));
        }
    }
    Ok(())
}

impl Store {
    /// Adds a domain (feature off, status disabled). Returns false, and changes and
    /// audits nothing, if it is already known. The one way a domain enters the
    /// store: a name that is no host name is refused here, for the CLI, the web
    /// UI and the API alike.
    pub async fn add_domain(
        &self,
        name: &str,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<bool, StoreError> {
        let name = normalize_domain(name)?;
        validate_host_name(&name)?;
        let mut tx = self.begin().await?;
        let created = sqlx::query(
            "INSERT INTO domains (name, feature, status, grace_until, created_at) \
             VALUES ($1, 0, 'disabled', NULL, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&name)
        .bind(unix_now())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if created {
            insert_audit(&mut tx, actor, "domain.add", &name, "", None).await?;
        }
        tx.commit().await?;
        Ok(created)
    }

    /// The domain, if known.
    pub async fn domain(&self, name: &str) -> Result<Option<DomainRecord>, StoreError> {
        let name = normalize_domain(name)?;
        let row = sqlx::query(
            "SELECT name, feature, status, grace_until, created_at, trusted_browsers, notices_off FROM domains WHERE name = $1",
        )
        .bind(&name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(domain_from_row).transpose()
    }

    /// Every known domain, sorted by name.
    pub async fn list_domains(&self) -> Result<Vec<DomainRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, feature, status, grace_until, created_at, trusted_browsers, notices_off FROM domains ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(domain_from_row).collect()
    }

    /// Turns the 2-Step feature on or off for a known domain.
    pub async fn set_domain_feature(
        &self,
        name: &str,
        on: bool,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<(), StoreError> {
        let name = normalize_domain(name)?;
        let mut tx = self.begin().await?;
        let changed = sqlx::query("UPDATE domains SET feature = $2 WHERE name = $1")
            .bind(&name)
            .bind(i64::from(on))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if changed == 0 {
            return Err(StoreError::UnknownDomain(name));
        }
        let detail = if on { "on" } else { "off" };
        insert_audit(&mut tx, actor, "domain.feature", &name, detail, None).await?;
        insert_event(
            &mut tx,
            self.backend,
            EventKind::DomainFeature,
            Some(&name),
            None,
            None,
        )
        .await?;
        self.commit_change(tx).await?;
        Ok(())
    }

    /// Sets a known domain's status; `grace_until: None` clears the grace period.
    /// Allowed while the feature is off (it applies once it is turned on).
    pub async fn set_domain_status(
        &self,
        name: &str,
        status: DomainStatus,
        grace_until: Option<i64>,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<(), StoreError> {
        let detail = match grace_until {
            Some(until) => format!("{status} grace_until={until}"),
            None => status.to_string(),
        };
        self.change_domain_status(name, status, grace_until, "domain.status", &detail, actor)
            .await
    }

    /// The one write of a domain's status and date, with its audit row
    /// (`action`, `detail`) and the event that re-checks live sessions.
    pub(super) async fn change_domain_status(
        &self,
        name: &str,
        status: DomainStatus,
        grace_until: Option<i64>,
        action: &str,
        detail: &str,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<(), StoreError> {
        let name = normalize_domain(name)?;
        let mut tx = self.begin().await?;
        let changed =
            sqlx::query("UPDATE domains SET status = $2, grace_until = $3 WHERE name = $1")
                .bind(&name)
                .bind(status.as_str())
                .bind(grace_until)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if changed == 0 {
            return Err(StoreError::UnknownDomain(name));
        }
        insert_audit(&mut tx, actor, action, &name, detail, None).await?;
        insert_event(
            &mut tx,
            self.backend,
            EventKind::DomainStatus,
            Some(&name),
            None,
            None,
        )
        .await?;
        self.commit_change(tx).await?;
        Ok(())
    }

    /// Makes `address` (created if new) an administrator of the known `domain`; the
    /// address must belong to that domain.
    pub async fn set_domain_admin(
        &self,
        domain: &str,
        address: &str,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<(), StoreError> {
        let domain = normalize_domain(domain)?;
        let address = normalize_address(address)?;
        if address.rsplit_once('@').map(|(_, d)| d) != Some(domain.as_str()) {
            return Err(StoreError::InvalidAddress(format!(
                "{address} is not an address of {domain}"
            )));
        }
        let mut tx = self.begin().await?;
        let known: Option<String> = sqlx::query_scalar("SELECT name FROM domains WHERE name = $1")
            .bind(&domain)
            .fetch_optional(&mut *tx)
            .await?;
        if known.is_none() {
            return Err(StoreError::UnknownDomain(domain));
        }
        let user = ensure_user_in(&mut tx, &address).await?;
        sqlx::query("UPDATE users SET domain_admin = 1 WHERE id = $1")
            .bind(user.id)
            .execute(&mut *tx)
            .await?;
        insert_audit(&mut tx, actor, "domain.admin", &address, &domain, None).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::validate_host_name;

    #[test]
    fn only_host_names_are_domains() {
        for good in [
            "example.org",
            "mail-1.example.co.uk",
            "bücher.de",
            "xn--bcher-kva.de",
            "localhost",
            &format!("{}.org", "a".repeat(63)),
        ] {
            assert!(validate_host_name(good).is_ok(), "{good}");
        }
        for bad in [
            "javascript:alert(1)",
            "<script>.org",
            "exa mple.org",
            "example..org",
            "example.org.",
            "-example.org",
            "example-.org",
            "ex_ample.org",
            "a/b.org",
            &format!("{}.org", "a".repeat(64)),
            &vec!["abcdefghi"; 26].join("."),
        ] {
            assert!(validate_host_name(bad).is_err(), "{bad}");
        }
    }
}
