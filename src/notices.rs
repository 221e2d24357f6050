//! Security notices by e-mail: what a notice says, and the task that sends the
//! queued ones.
//!
//! A notice is queued by the store in the same transaction as the change it
//! reports (an `outbox` row per recipient, see `store::notices`), so a notice is
//! never lost and never holds up the change. Every `serve` node runs one
//! [`NoticeSender`]: it claims due rows atomically (two nodes never send one
//! row twice; a claim older than [`CLAIM_TIMEOUT`] lapses, so a node that died
//! mid-send does not strand its rows), sends each through `[relay]` with
//! [`RecoveryMailer::send_text`], retries a failure with a growing delay up to
//! [`MAX_ATTEMPTS`] times, then gives up; sent and failed rows are pruned after
//! a day. Every outcome is counted in `postern_notices_total{kind,result}`.
//!
//! What a notice may contain: the kind of change, the device or factor named in
//! words, when, who (the user or an administrator) and from which client
//! address. Never a password, code, secret or link. [`compose`] is pure, so
//! every text is tested as it is sent.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use time::OffsetDateTime;
use tracing::{info, warn};

use crate::clock::unix_now;
use crate::recovery_mail::RecoveryMailer;
use crate::store::{QueuedNotice, Store, StoreError};

/// Seconds after which a claimed row that was neither sent nor failed may be
/// claimed again (longer than a batch of sends can take).
pub const CLAIM_TIMEOUT: i64 = 10 * 60;
/// Sends of one row before it is given up.
pub const MAX_ATTEMPTS: i64 = 5;
/// Rows one node claims at a time.
const BATCH: i64 = 20;
/// How often a node looks for due notices.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Sent and given-up rows are kept this long (the rate limit counts the last
/// hour), then deleted.
pub const KEEP_SECS: i64 = 86_400;

/// What a notice reports. Each can be turned off per domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoticeKind {
    /// The user's first second factor: 2-Step Authentication is on.
    TwoStepOn,
    /// The user's last second factor went (turned off, or reset by an administrator).
    TwoStepOff,
    /// Another second factor (app, recovery address, passkey) was added.
    FactorAdded,
    /// A second factor was removed; others remain.
    FactorRemoved,
    AppPasswordCreated,
    AppPasswordRevoked,
    /// New backup codes replaced the old ones.
    BackupCodes,
    /// 100 consecutive failed logins blocked the account's mail logins.
    AccountBlocked,
}

impl NoticeKind {
    pub const ALL: [NoticeKind; 8] = [
        Self::TwoStepOn,
        Self::TwoStepOff,
        Self::FactorAdded,
        Self::FactorRemoved,
        Self::AppPasswordCreated,
        Self::AppPasswordRevoked,
        Self::BackupCodes,
        Self::AccountBlocked,
    ];

    /// The stored and typed name (`--off app-password-created`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TwoStepOn => "two-step-on",
            Self::TwoStepOff => "two-step-off",
            Self::FactorAdded => "factor-added",
            Self::FactorRemoved => "factor-removed",
            Self::AppPasswordCreated => "app-password-created",
            Self::AppPasswordRevoked => "app-password-revoked",
            Self::BackupCodes => "backup-codes",
            Self::AccountBlocked => "account-blocked",
        }
    }

    /// What the domain card's checkbox says.
    pub fn label(self) -> &'static str {
        match self {
            Self::TwoStepOn => "2-Step Authentication turned on",
            Self::TwoStepOff => "2-Step Authentication turned off",
            Self::FactorAdded => "A second factor or passkey added",
            Self::FactorRemoved => "A second factor or passkey removed",
            Self::AppPasswordCreated => "An application password created",
            Self::AppPasswordRevoked => "An application password revoked",
            Self::BackupCodes => "Backup codes generated",
            Self::AccountBlocked => "Mail logins blocked after 100 failures",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for NoticeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NoticeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown notice {s:?} (expected one of {})",
                    known.join(", ")
                )
            })
    }
}

/// A set of notice kinds (a domain's turned-off ones), stored as the
/// comma-separated names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NoticeKinds(u16);

impl NoticeKinds {
    pub const NONE: NoticeKinds = NoticeKinds(0);

    pub fn contains(self, kind: NoticeKind) -> bool {
        self.0 & kind.bit() != 0
    }

    pub fn with(self, kind: NoticeKind) -> Self {
        Self(self.0 | kind.bit())
    }

    pub fn without(self, kind: NoticeKind) -> Self {
        Self(self.0 & !kind.bit())
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The kinds in the set, in [`NoticeKind::ALL`]'s order.
    pub fn iter(self) -> impl Iterator<Item = NoticeKind> {
        NoticeKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}

impl fmt::Display for NoticeKinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(NoticeKind::as_str).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for NoticeKinds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .try_fold(Self::NONE, |set, name| Ok(set.with(name.parse()?)))
    }
}

/// How a second factor is named in a notice (never its secret; a recovery
/// address masked as on the pages).
pub fn totp_words() -> String {
    "an authenticator app (TOTP)".to_owned()
}

/// A recovery address, masked.
pub fn recovery_words(address: &str) -> String {
    format!(
        "the recovery e-mail address {}",
        crate::recovery_mail::mask_address(address)
    )
}

/// A passkey by the name its user gave it.
pub fn passkey_words(name: &str) -> String {
    format!("the passkey \"{}\"", printable(name))
}

/// An app password by its device name.
pub fn device_words(name: &str) -> String {
    format!("\"{}\"", printable(name))
}

/// A user-chosen name fit for a mail body: control characters dropped, at
/// most 64 characters.
fn printable(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// Who made the change, in a notice's words.
fn who(notice: &QueuedNotice) -> String {
    let own = format!("user:{}", notice.user_address);
    if notice.actor == own {
        "someone signed in to your account (you, if you did this)".to_owned()
    } else if notice.actor.starts_with("sysadmin:") {
        "a system administrator".to_owned()
    } else {
        "an administrator".to_owned()
    }
}

/// `2026-01-31 14:05 UTC`.
fn when(at: i64) -> String {
    OffsetDateTime::from_unix_timestamp(at).map_or_else(
        |_| format!("{at} (Unix time)"),
        |t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute()
            )
        },
    )
}

/// The subject and plain-text body of a notice.
pub fn compose(notice: &QueuedNotice) -> (String, String) {
    let account = &notice.user_address;
    let detail = &notice.detail;
    let (subject, what, if_not_you) = match notice.kind {
        NoticeKind::TwoStepOn => (
            "2-Step Authentication was turned on".to_owned(),
            format!(
                "2-Step Authentication was turned on for {account}, with {detail}. \
                 From now on, signing in to the web needs a second step, and mail apps \
                 need application passwords."
            ),
            "someone who knows your password has set up a second factor that they \
             control: contact your administrator at once to have 2-Step Authentication \
             reset, and change your password.",
        ),
        NoticeKind::TwoStepOff => (
            "2-Step Authentication was turned off".to_owned(),
            format!(
                "2-Step Authentication was turned off for {account} (removed: {detail}). \
                 Your password alone signs you in again."
            ),
            "change your password now, sign in and turn 2-Step Authentication on again, \
             and tell your administrator.",
        ),
        NoticeKind::FactorAdded => (
            "A second factor was added to your account".to_owned(),
            format!(
                "{} was added as a second factor of {account}.",
                capital(detail)
            ),
            "someone who can sign in as you added a way in that they control: sign in, \
             remove it, change your password, and tell your administrator.",
        ),
        NoticeKind::FactorRemoved => (
            "A second factor was removed from your account".to_owned(),
            format!(
                "{} was removed from the second factors of {account}. Your other \
                 second factors still work.",
                capital(detail)
            ),
            "sign in, check your second factors, change your password, and tell your \
             administrator.",
        ),
        NoticeKind::AppPasswordCreated => (
            "An application password was created".to_owned(),
            format!(
                "An application password named {detail} was created for {account}. \
                 A mail app can now sign in with it."
            ),
            "sign in, revoke it on the application passwords page, change your \
             password, and tell your administrator.",
        ),
        NoticeKind::AppPasswordRevoked => (
            "An application password was revoked".to_owned(),
            format!(
                "The application password named {detail} of {account} was revoked. \
                 A mail app that used it can no longer sign in."
            ),
            "someone can sign in as you: change your password, check your second \
             factors and application passwords, and tell your administrator.",
        ),
        NoticeKind::BackupCodes => (
            "New backup codes were generated".to_owned(),
            format!(
                "New backup codes were generated for {account}; the earlier ones no \
                 longer work."
            ),
            "someone can sign in as you and now holds your backup codes: sign in, \
             generate new ones, change your password, and tell your administrator.",
        ),
        NoticeKind::AccountBlocked => (
            "Mail sign-ins to your account are blocked".to_owned(),
            format!(
                "After 100 failed sign-ins in a row, mail sign-ins to {account} are \
                 refused for 15 minutes, for every app. Someone may be guessing your \
                 password, or a device keeps trying an old one."
            ),
            "update the password in your mail apps if you changed it; otherwise \
             someone is guessing your password: choose a long one and tell your \
             administrator.",
        ),
    };
    let mut body = format!("{what}\n\nWhen: {}\n", when(notice.created_at));
    // A block is nobody's deed but the failed logins'.
    if notice.kind != NoticeKind::AccountBlocked {
        body.push_str(&format!("By: {}\n", who(notice)));
    }
    if let Some(ip) = &notice.ip {
        body.push_str(&format!("From the address: {ip}\n"));
    }
    body.push_str(&format!(
        "\nIf this was you, there is nothing to do.\nIf it was not you: {if_not_you}\n\n\
         This message about {account} was sent automatically to its mailbox and \
         recovery address. It never contains a code or a link; do not answer it.\n"
    ));
    (subject, body)
}

fn capital(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The delay before the next send of a row that failed `attempts` times:
/// 1, 4, 16, 64 minutes.
pub fn retry_delay(attempts: i64) -> i64 {
    60 * 4_i64.pow(u32::try_from((attempts - 1).clamp(0, 4)).unwrap_or(0))
}

/// What one pass of the sender did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendPass {
    pub sent: usize,
    /// Failed, will be tried again.
    pub retried: usize,
    /// Failed for the last time.
    pub failed: usize,
}

/// Sends queued notices: one per `serve` node, on a shared store.
#[derive(Clone, Debug)]
pub struct NoticeSender {
    store: Store,
    mailer: RecoveryMailer,
}

impl NoticeSender {
    pub fn new(store: Store, mailer: RecoveryMailer) -> Self {
        Self { store, mailer }
    }

    /// Claims the notices due at `now`, sends them, records each outcome, and
    /// prunes old rows. Returns once every claimed row is settled.
    pub async fn run_once(&self, now: i64) -> Result<SendPass, StoreError> {
        let claim = hex::encode(rand::random::<[u8; 16]>());
        let mut pass = SendPass::default();
        loop {
            let rows = self
                .store
                .claim_notices(&claim, now, CLAIM_TIMEOUT, BATCH)
                .await?;
            if rows.is_empty() {
                break;
            }
            for notice in rows {
                self.send(&claim, &notice, now, &mut pass).await?;
            }
        }
        self.store.prune_notices(now - KEEP_SECS).await?;
        Ok(pass)
    }

    async fn send(
        &self,
        claim: &str,
        notice: &QueuedNotice,
        now: i64,
        pass: &mut SendPass,
    ) -> Result<(), StoreError> {
        let (subject, body) = compose(notice);
        let kind = notice.kind.as_str();
        match self
            .mailer
            .send_text(&notice.recipient, &subject, body)
            .await
        {
            Ok(()) => {
                self.store.notice_sent(notice.id, claim).await?;
                count(kind, "sent");
                pass.sent += 1;
                info!(id = notice.id, kind, user = %notice.user_address, "security notice sent");
            }
            Err(err) => {
                let give_up = notice.attempts >= MAX_ATTEMPTS;
                let next = now + retry_delay(notice.attempts);
                self.store
                    .notice_failed(notice.id, claim, give_up, next)
                    .await?;
                if give_up {
                    count(kind, "failed");
                    pass.failed += 1;
                    warn!(id = notice.id, kind, user = %notice.user_address,
                        attempts = notice.attempts, error = %err,
                        "security notice could not be sent; giving up");
                } else {
                    count(kind, "retried");
                    pass.retried += 1;
                    warn!(id = notice.id, kind, user = %notice.user_address,
                        attempts = notice.attempts, retry_in_secs = next - now, error = %err,
                        "security notice could not be sent; will retry");
                }
            }
        }
        Ok(())
    }

    /// Sends due notices every [`POLL_INTERVAL`], for as long as the process runs.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(err) = self.run_once(unix_now()).await {
                warn!(error = %err, "security notices: the store does not answer");
            }
        }
    }
}

/// Counts one notice outcome (`sent`, `retried`, `failed`, `rate-limited`).
pub fn count(kind: &'static str, result: &'static str) {
    metrics::counter!(crate::metrics::NOTICES, "kind" => kind, "result" => result).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(kind: NoticeKind, detail: &str, actor: &str) -> QueuedNotice {
        QueuedNotice {
            id: 1,
            user_address: "alice@example.org".into(),
            kind,
            recipient: "alice@example.org".into(),
            detail: detail.into(),
            actor: actor.into(),
            ip: Some("203.0.113.7".into()),
            created_at: 1_767_225_600,
            attempts: 1,
        }
    }

    #[test]
    fn kinds_round_trip_and_unknown_names_are_refused() {
        let set: NoticeKinds = "app-password-created, Backup-Codes".parse().unwrap();
        assert!(set.contains(NoticeKind::AppPasswordCreated));
        assert!(set.contains(NoticeKind::BackupCodes));
        assert!(!set.contains(NoticeKind::TwoStepOn));
        assert_eq!(set.to_string(), "app-password-created,backup-codes");
        assert_eq!("".parse::<NoticeKinds>().unwrap(), NoticeKinds::NONE);
        let err = "app-password".parse::<NoticeKinds>().unwrap_err();
        assert!(err.contains("two-step-on"), "{err}");
        for kind in NoticeKind::ALL {
            assert_eq!(kind.as_str().parse::<NoticeKind>().unwrap(), kind);
            assert!(!NoticeKinds::NONE.with(kind).without(kind).contains(kind));
        }
    }

    #[test]
    fn a_notice_says_what_when_who_and_from_where() {
        let (subject, body) = compose(&notice(
            NoticeKind::AppPasswordCreated,
            &device_words("phone"),
            "user:alice@example.org",
        ));
        assert_eq!(subject, "An application password was created");
        assert!(body.contains("named \"phone\" was created for alice@example.org"));
        assert!(body.contains("When: 2026-01-01 00:00 UTC"), "{body}");
        assert!(body.contains("From the address: 203.0.113.7"));
        assert!(body.contains("If it was not you: sign in, revoke it"));
        assert!(!body.contains("http"), "no link: {body}");
        let (_, body) = compose(&notice(NoticeKind::TwoStepOff, "all", "cli:root"));
        assert!(body.contains("By: an administrator"), "{body}");
    }

    #[test]
    fn every_kind_has_its_own_subject_and_advice() {
        let mut subjects = std::collections::HashSet::new();
        for kind in NoticeKind::ALL {
            let (subject, body) = compose(&notice(kind, &totp_words(), "system"));
            assert!(subjects.insert(subject), "{kind}");
            assert!(body.contains("If it was not you: "), "{kind}");
        }
    }

    #[test]
    fn names_are_printable_and_recovery_addresses_masked() {
        assert_eq!(device_words("ph\r\nBcc: x"), "\"phBcc: x\"");
        assert_eq!(
            recovery_words("alice.home@elsewhere.test"),
            "the recovery e-mail address a***@elsewhere.test"
        );
    }

    #[test]
    fn retries_wait_longer_each_time() {
        assert_eq!(retry_delay(1), 60);
        assert_eq!(retry_delay(2), 240);
        assert_eq!(retry_delay(4), 3840);
        assert_eq!(retry_delay(9), retry_delay(5));
    }
}
