//! A scheduled Forced roll-out: setting and cancelling its date (the domain's
//! `grace_until`, see [`DomainPolicy::scheduled_forced`]) and the bookkeeping
//! of its mails, so each user gets the notice and the reminder once per date
//! however many nodes run (`rollout_mails`).
//!
//! A node *claims* a mail in one statement (inserting its row, or taking a
//! pending row whose `retry_at` has passed) before it sends, and only the
//! claim's token marks the row sent or failed afterwards. Two nodes racing for
//! the same mail: one statement wins, the other changes no row. A node that
//! dies between its claim and its mark leaves a pending row that another node
//! takes once the lease is over. Which mail is due is the policy's
//! ([`crate::policy::rollout_mail_due`]); this module only reads and claims.
//!
//! [`DomainPolicy::scheduled_forced`]: crate::policy::DomainPolicy::scheduled_forced

use sqlx::Row;

use super::audit::{AuditActor, insert_audit};
use super::events::{EventKind, insert_event};
use super::{Store, StoreError, normalize_domain, unix_now};
use crate::policy::{DomainStatus, RolloutMail};

/// How long a claim holds a mail before another node may take it (a send is
/// bounded by [`crate::recovery_mail::SEND_TIMEOUT`], far less).
pub const CLAIM_LEASE_SECS: i64 = 120;

/// A known user of a domain with a roll-out ahead, who is neither enrolled
/// nor disabled, and where their mails for that date stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutRecipient {
    pub user_id: i64,
    pub address: String,
    /// When the notice for this date went out, if it did.
    pub notice_sent_at: Option<i64>,
    /// The reminder for this date went out, or was found needless.
    pub reminder_done: bool,
}

/// A mail this node claimed: only this token marks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutClaim {
    pub user_id: i64,
    pub kind: RolloutMail,
    pub forced_from: i64,
    token: String,
}

/// How many users of a domain have 2-Step, and how many not (disabled users
/// left out: nothing of this concerns them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnrollmentCounts {
    pub enrolled: i64,
    pub not_enrolled: i64,
}

impl Store {
    /// Schedules Forced for `domain` from `forced_from` (Unix seconds, in the
    /// future), or moves an earlier date: status Forced with that date as the
    /// end of the grace period. Until the date a user who has not enrolled
    /// keeps the primary password; from it on they must enroll. Audited as
    /// `domain.schedule_forced`; live sessions learn their new deadline from
    /// the event.
    pub async fn schedule_forced(
        &self,
        domain: &str,
        forced_from: i64,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<(), StoreError> {
        let detail = crate::rollout::format_date(forced_from);
        self.change_domain_status(
            domain,
            DomainStatus::Forced,
            Some(forced_from),
            "domain.schedule_forced",
            &detail,
            actor,
        )
        .await
    }

    /// Cancels a roll-out still ahead: the domain goes back to Enabled (its
    /// users may go on enrolling). False, and nothing changed, when no date
    /// is ahead (the switch already happened, or none was scheduled).
    pub async fn cancel_scheduled_forced(
        &self,
        domain: &str,
        actor: &(impl AuditActor + ?Sized),
    ) -> Result<bool, StoreError> {
        let name = normalize_domain(domain)?;
        let mut tx = self.begin().await?;
        let changed = sqlx::query(
            "UPDATE domains SET status = 'enabled', grace_until = NULL \
             WHERE name = $1 AND status = 'forced' AND grace_until > $2",
        )
        .bind(&name)
        .bind(unix_now())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            let known: Option<String> =
                sqlx::query_scalar("SELECT name FROM domains WHERE name = $1")
                    .bind(&name)
                    .fetch_optional(&mut *tx)
                    .await?;
            return match known {
                None => Err(StoreError::UnknownDomain(name)),
                Some(_) => Ok(false),
            };
        }
        insert_audit(
            &mut tx,
            actor,
            "domain.schedule_cancel",
            &name,
            "enabled",
            None,
        )
        .await?;
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
        Ok(true)
    }

    /// Enrolled and not-enrolled users of `domain` (disabled ones left out).
    pub async fn enrollment_counts(&self, domain: &str) -> Result<EnrollmentCounts, StoreError> {
        let domain = normalize_domain(domain)?;
        let row = sqlx::query(concat!(
            "SELECT CAST(COALESCE(SUM(CASE WHEN ",
            super::factors::enrolled_condition!("u.id"),
            " THEN 1 ELSE 0 END), 0) AS BIGINT) AS enrolled, \
               CAST(COUNT(*) AS BIGINT) AS total \
             FROM users u WHERE u.domain = $1 AND u.disabled = 0"
        ))
        .bind(&domain)
        .fetch_one(&self.pool)
        .await?;
        let enrolled: i64 = row.try_get("enrolled")?;
        let total: i64 = row.try_get("total")?;
        Ok(EnrollmentCounts {
            enrolled,
            not_enrolled: total - enrolled,
        })
    }

    /// The users of `domain` a roll-out on `forced_from` may still have to
    /// mail at `now`: neither enrolled nor disabled, the reminder neither sent
    /// nor found needless, and — before the reminder's time — the notice not
    /// sent. The policy then says which mail, if any, is due.
    pub async fn rollout_recipients(
        &self,
        domain: &str,
        forced_from: i64,
        now: i64,
    ) -> Result<Vec<RolloutRecipient>, StoreError> {
        let domain = normalize_domain(domain)?;
        let rows = sqlx::query(concat!(
            "SELECT u.id, u.address, n.state AS notice_state, n.done_at AS notice_at, \
                    r.state AS reminder_state \
             FROM users u \
             LEFT JOIN rollout_mails n ON n.user_id = u.id AND n.kind = 'notice' \
                  AND n.forced_from = $2 \
             LEFT JOIN rollout_mails r ON r.user_id = u.id AND r.kind = 'reminder' \
                  AND r.forced_from = $2 \
             WHERE u.domain = $1 AND u.disabled = 0 AND NOT ",
            super::factors::enrolled_condition!("u.id"),
            " AND (r.state IS NULL OR r.state = 'pending') \
              AND (n.state IS NULL OR n.state = 'pending' OR $3 >= $4) \
             ORDER BY u.id"
        ))
        .bind(&domain)
        .bind(forced_from)
        .bind(now)
        .bind(forced_from - crate::policy::ROLLOUT_REMINDER_SECS)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let notice_state: Option<String> = row.try_get("notice_state")?;
                let notice_at: Option<i64> = row.try_get("notice_at")?;
                let reminder_state: Option<String> = row.try_get("reminder_state")?;
                Ok(RolloutRecipient {
                    user_id: row.try_get("id")?,
                    address: row.try_get("address")?,
                    notice_sent_at: notice_at.filter(|_| notice_state.as_deref() == Some("sent")),
                    reminder_done: matches!(reminder_state.as_deref(), Some("sent" | "skipped")),
                })
            })
            .collect()
    }

    /// Claims one mail for this node: true when no other node has sent it or
    /// holds it now. The claim lasts [`CLAIM_LEASE_SECS`].
    pub async fn claim_rollout_mail(
        &self,
        user_id: i64,
        kind: RolloutMail,
        forced_from: i64,
        now: i64,
    ) -> Result<Option<RolloutClaim>, StoreError> {
        let token = hex::encode(rand::random::<[u8; 16]>());
        let inserted = sqlx::query(
            "INSERT INTO rollout_mails \
               (user_id, kind, forced_from, state, claim, retry_at, attempts, done_at) \
             VALUES ($1, $2, $3, 'pending', $4, $5, 1, NULL) \
             ON CONFLICT (user_id, kind, forced_from) DO NOTHING",
        )
        .bind(user_id)
        .bind(kind.as_str())
        .bind(forced_from)
        .bind(&token)
        .bind(now + CLAIM_LEASE_SECS)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        let claimed = inserted
            || sqlx::query(
                "UPDATE rollout_mails SET claim = $4, retry_at = $5, attempts = attempts + 1 \
                 WHERE user_id = $1 AND kind = $2 AND forced_from = $3 \
                   AND state = 'pending' AND retry_at <= $6",
            )
            .bind(user_id)
            .bind(kind.as_str())
            .bind(forced_from)
            .bind(&token)
            .bind(now + CLAIM_LEASE_SECS)
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected()
                == 1;
        Ok(claimed.then_some(RolloutClaim {
            user_id,
            kind,
            forced_from,
            token,
        }))
    }

    /// Marks a claimed mail sent. False if the claim was lost meanwhile (its
    /// lease ran out and another node took the mail).
    pub async fn rollout_mail_sent(
        &self,
        claim: &RolloutClaim,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "UPDATE rollout_mails SET state = 'sent', done_at = $5 \
             WHERE user_id = $1 AND kind = $2 AND forced_from = $3 AND claim = $4 \
               AND state = 'pending'",
        )
        .bind(claim.user_id)
        .bind(claim.kind.as_str())
        .bind(claim.forced_from)
        .bind(&claim.token)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// A claimed mail could not be sent: nobody tries it again before
    /// `retry_at`.
    pub async fn rollout_mail_failed(
        &self,
        claim: &RolloutClaim,
        retry_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE rollout_mails SET retry_at = $5 \
             WHERE user_id = $1 AND kind = $2 AND forced_from = $3 AND claim = $4 \
               AND state = 'pending'",
        )
        .bind(claim.user_id)
        .bind(claim.kind.as_str())
        .bind(claim.forced_from)
        .bind(&claim.token)
        .bind(retry_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that a mail needs not go out (a reminder after a notice sent
    /// in the reminder's own days).
    pub async fn skip_rollout_mail(
        &self,
        user_id: i64,
        kind: RolloutMail,
        forced_from: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO rollout_mails \
               (user_id, kind, forced_from, state, claim, retry_at, attempts, done_at) \
             VALUES ($1, $2, $3, 'skipped', '', $4, 0, $4) \
             ON CONFLICT (user_id, kind, forced_from) DO NOTHING",
        )
        .bind(user_id)
        .bind(kind.as_str())
        .bind(forced_from)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
