//! A Forced roll-out users can follow: the date a domain administrator
//! schedules, and the mails that tell every user without 2-Step about it.
//!
//! The date itself is the domain's `grace_until` under status Forced: the
//! policy ([`DomainPolicy::scheduled_forced`]) switches by itself at that
//! instant on every node, and live sessions carry it as their deadline
//! (`crate::recheck`), so nothing here takes part in the switch. This module
//! owns the date's text form (parsing what the web form, the API and the CLI
//! take, and printing it) and [`RolloutMailer`], the background task `serve`
//! runs on every node: it asks the policy which mail each user is due
//! ([`rollout_mail_due`]), claims it in the store (once per user, kind and
//! date across all nodes), and sends it through the `[relay]` as plain text
//! with [`RecoveryMailer::send_text`]. A failed send is logged (never more
//! than the relay's answer) and tried again later; nothing here blocks the
//! administrator's action.
//!
//! [`DomainPolicy::scheduled_forced`]: crate::policy::DomainPolicy::scheduled_forced

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{info, warn};

use crate::clock::unix_now;
use crate::policy::{RolloutMail, UserState, reminder_needed, rollout_mail_due};
use crate::recovery_mail::RecoveryMailer;
use crate::store::{Store, StoreError};

/// The furthest ahead a roll-out may be scheduled.
pub const MAX_AHEAD_SECS: i64 = 365 * 86_400;
/// How often each node looks for mails due (also woken at once when this
/// node's web UI schedules a roll-out or a user without 2-Step signs in).
pub const PASS_INTERVAL: Duration = Duration::from_secs(30);
/// How long after a failed send the mail is tried again.
pub const RETRY_SECS: i64 = 300;

/// `2026-12-20 00:00 UTC`: how pages, mails and the audit log name the date.
pub fn format_date(at: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| at.to_string())
}

/// The date a roll-out is scheduled for, as typed: `YYYY-MM-DD` (the start of
/// that day, UTC) or an RFC 3339 time (`2026-12-20T08:00:00+01:00`). It must
/// lie after `now` and at most [`MAX_AHEAD_SECS`] ahead.
pub fn parse_forced_from(text: &str, now: i64) -> Result<i64, String> {
    let text = text.trim();
    let day = time::macros::format_description!("[year]-[month]-[day]");
    let at = if let Ok(date) = time::Date::parse(text, &day) {
        date.midnight().assume_utc().unix_timestamp()
    } else if let Ok(t) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        t.unix_timestamp()
    } else {
        return Err(format!(
            "{text:?} is not a date: use YYYY-MM-DD (the start of that day, UTC) or an RFC 3339 time"
        ));
    };
    if at <= now {
        return Err(format!(
            "{} has already begun: choose a later date, or force 2-Step Authentication at once",
            format_date(at)
        ));
    }
    if at - now > MAX_AHEAD_SECS {
        return Err("choose a date within a year".into());
    }
    Ok(at)
}

/// Subject and plain-text body of a roll-out mail. No secret, no link but the
/// web UI's address.
pub fn message(
    kind: RolloutMail,
    domain: &str,
    address: &str,
    forced_from: i64,
    sign_in_url: Option<&str>,
) -> (String, String) {
    let date = format_date(forced_from);
    let (subject, opening) = match kind {
        RolloutMail::Notice => (
            format!("2-Step Authentication will be required from {date}"),
            format!("Your mail domain {domain} will require 2-Step Authentication from {date}."),
        ),
        RolloutMail::Reminder => (
            format!("Reminder: 2-Step Authentication is required from {date}"),
            format!(
                "A reminder: your mail domain {domain} requires 2-Step Authentication from \
                 {date}, in a few days, and you have not set it up yet."
            ),
        ),
    };
    let sign_in = match sign_in_url {
        Some(url) => format!("Sign in at {url}"),
        None => "Sign in to your mail service's 2-Step Authentication page (your \
                 administrator can tell you its address)"
            .to_owned(),
    };
    let body = format!(
        "{opening}\n\n\
         From then on your mail apps (on your phone and your computers) no longer accept \
         your mail password: each needs an application password of its own. Please set it \
         up before that date:\n\n\
         1. {sign_in} with your address {address} and your mail password.\n\
         2. Turn on 2-Step Authentication: scan the QR code with an authenticator app and \
         type the code it shows (or add a passkey or a recovery e-mail address).\n\
         3. Under \"Application passwords\", create one for each device or mail app, and \
         type it into that app in place of your mail password.\n\n\
         If you do nothing, your mail apps stop connecting on {date}, and the web page \
         then lets you do nothing but step 2.\n"
    );
    (subject, body)
}

/// What one pass sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    pub sent: usize,
    pub failed: usize,
}

/// The background task that mails every user without 2-Step of a domain
/// with a roll-out ahead: the notice, then the reminder.
#[derive(Clone)]
pub struct RolloutMailer {
    store: Store,
    relay: RecoveryMailer,
    sign_in_url: Option<String>,
    wake: Arc<Notify>,
}

impl RolloutMailer {
    /// `sign_in_url`: the web UI's `public_url`, named in the mails.
    pub fn new(
        store: Store,
        relay: RecoveryMailer,
        sign_in_url: Option<String>,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            relay,
            sign_in_url,
            wake,
        }
    }

    /// Sends every mail due at `now` that no node has sent or holds.
    pub async fn run_once(&self, now: i64) -> Result<PassReport, StoreError> {
        let mut report = PassReport::default();
        for domain in self.store.list_domains().await? {
            let policy = domain.policy();
            let Some(forced_from) = policy.scheduled_forced(now) else {
                continue;
            };
            for user in self
                .store
                .rollout_recipients(&domain.name, forced_from, now)
                .await?
            {
                // The query left out enrolled and disabled users.
                let state = UserState::default();
                let Some(kind) = rollout_mail_due(
                    Some(&policy),
                    state,
                    user.notice_sent_at,
                    user.reminder_done,
                    now,
                ) else {
                    continue;
                };
                let Some(claim) = self
                    .store
                    .claim_rollout_mail(user.user_id, kind, forced_from, now)
                    .await?
                else {
                    continue;
                };
                let (subject, body) = message(
                    kind,
                    &domain.name,
                    &user.address,
                    forced_from,
                    self.sign_in_url.as_deref(),
                );
                match self.relay.send_text(&user.address, &subject, body).await {
                    Ok(()) => {
                        self.store.rollout_mail_sent(&claim, now).await?;
                        if kind == RolloutMail::Notice && !reminder_needed(now, forced_from) {
                            self.store
                                .skip_rollout_mail(
                                    user.user_id,
                                    RolloutMail::Reminder,
                                    forced_from,
                                    now,
                                )
                                .await?;
                        }
                        self.store
                            .audit(
                                "postern",
                                &format!("rollout.{}", kind.as_str()),
                                &user.address,
                                &format_date(forced_from),
                                None,
                            )
                            .await?;
                        info!(
                            user = %user.address,
                            kind = kind.as_str(),
                            forced_from = %format_date(forced_from),
                            "roll-out mail sent"
                        );
                        report.sent += 1;
                    }
                    Err(err) => {
                        warn!(
                            user = %user.address,
                            kind = kind.as_str(),
                            error = %err,
                            retry_secs = RETRY_SECS,
                            "could not send a roll-out mail; trying again later"
                        );
                        self.store
                            .rollout_mail_failed(&claim, now + RETRY_SECS)
                            .await?;
                        report.failed += 1;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Runs a pass every [`PASS_INTERVAL`], and at once when woken, until the
    /// task is dropped.
    pub async fn run(self) {
        loop {
            if let Err(err) = self.run_once(unix_now()).await {
                warn!(error = %err, "roll-out mails: the store did not answer; trying again");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(PASS_INTERVAL) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000; // 2027-01-15 08:00 UTC

    #[test]
    fn dates_are_days_in_utc_or_rfc_3339_times_ahead() {
        assert_eq!(parse_forced_from("2027-01-20", NOW), Ok(1_800_403_200));
        assert_eq!(format_date(1_800_403_200), "2027-01-20 00:00 UTC");
        assert_eq!(
            parse_forced_from(" 2027-01-20T09:30:00+01:00 ", NOW),
            Ok(1_800_403_200 + 8 * 3600 + 1800)
        );
        for bad in ["20/01/2027", "tomorrow", "", "2027-02-30"] {
            let err = parse_forced_from(bad, NOW).unwrap_err();
            assert!(err.contains("is not a date"), "{bad}: {err}");
        }
        let past = parse_forced_from("2027-01-15", NOW).unwrap_err();
        assert!(past.contains("already begun"), "{past}");
        assert!(parse_forced_from("2029-01-20", NOW).is_err());
    }

    #[test]
    fn the_mails_name_the_date_and_the_steps() {
        let at = 1_800_403_200;
        let (subject, body) = message(
            RolloutMail::Notice,
            "example.org",
            "ivy@example.org",
            at,
            Some("https://mail.example.org/"),
        );
        assert_eq!(
            subject,
            "2-Step Authentication will be required from 2027-01-20 00:00 UTC"
        );
        for step in [
            "Sign in at https://mail.example.org/ with your address ivy@example.org",
            "Turn on 2-Step Authentication",
            "create one for each device or mail app",
        ] {
            assert!(body.contains(step), "{step:?} missing from\n{body}");
        }
        let (subject, _) = message(RolloutMail::Reminder, "example.org", "i@x", at, None);
        assert!(subject.starts_with("Reminder: "), "{subject}");
    }
}
