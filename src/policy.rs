//! The one decision: may this credential log in to this protocol for this user now?
//!
//! [`decide_mail_login`] is pure (no I/O, no clock): callers pass the domain's and
//! user's state as read from the store and the current time. The same function runs
//! at login and when live sessions are re-checked after a change, so a session is
//! dropped exactly when a fresh login with its credential would be refused.
//! DESIGN.md's policy table is the specification; the table test below is it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// A domain administrator's choice (DESIGN: Disabled / Enabled / Forced).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainStatus {
    Disabled,
    Enabled,
    Forced,
}

impl DomainStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Enabled => "enabled",
            Self::Forced => "forced",
        }
    }
}

impl fmt::Display for DomainStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DomainStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "disabled" => Ok(Self::Disabled),
            "enabled" => Ok(Self::Enabled),
            "forced" => Ok(Self::Forced),
            other => Err(format!(
                "unknown status {other:?} (expected disabled, enabled or forced)"
            )),
        }
    }
}

/// A mail protocol postern guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Imap,
    Pop3,
    Smtp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Imap, Protocol::Pop3, Protocol::Smtp];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Imap => "imap",
            Self::Pop3 => "pop3",
            Self::Smtp => "smtp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "imap" => Ok(Self::Imap),
            "pop3" => Ok(Self::Pop3),
            "smtp" => Ok(Self::Smtp),
            other => Err(format!(
                "unknown protocol {other:?} (expected imap, pop3 or smtp)"
            )),
        }
    }
}

/// The protocols an app password may be used with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scopes {
    imap: bool,
    pop3: bool,
    smtp: bool,
}

impl Scopes {
    pub const ALL: Scopes = Scopes {
        imap: true,
        pop3: true,
        smtp: true,
    };

    pub fn contains(self, protocol: Protocol) -> bool {
        match protocol {
            Protocol::Imap => self.imap,
            Protocol::Pop3 => self.pop3,
            Protocol::Smtp => self.smtp,
        }
    }

    pub fn protocols(self) -> impl Iterator<Item = Protocol> {
        Protocol::ALL.into_iter().filter(move |p| self.contains(*p))
    }
}

impl fmt::Display for Scopes {
    /// `imap,pop3,smtp`: the stored and printed form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.protocols().map(Protocol::as_str).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for Scopes {
    type Err = String;
    /// A comma-separated list; at least one protocol.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut scopes = Scopes {
            imap: false,
            pop3: false,
            smtp: false,
        };
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            match part.parse::<Protocol>()? {
                Protocol::Imap => scopes.imap = true,
                Protocol::Pop3 => scopes.pop3 = true,
                Protocol::Smtp => scopes.smtp = true,
            }
        }
        if scopes.protocols().next().is_none() {
            return Err("a scope names at least one of imap, pop3, smtp".into());
        }
        Ok(scopes)
    }
}

/// The source networks an app password may be used from: empty for anywhere
/// (as Stalwart's per-password allowed IPs). Fixed at creation; a live
/// session's address never changes, so only a login checks it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceNetworks(Vec<IpNet>);

impl SourceNetworks {
    /// Anywhere: no restriction.
    pub const ANYWHERE: SourceNetworks = SourceNetworks(Vec::new());
    /// Networks one app password may list at most.
    pub const MAX: usize = 20;

    pub fn is_anywhere(&self) -> bool {
        self.0.is_empty()
    }

    pub fn networks(&self) -> &[IpNet] {
        &self.0
    }

    /// Whether a client at `ip` is inside one of the networks (an IPv4 client
    /// seen as `::ffff:a.b.c.d` counts as its IPv4 address).
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.is_empty() || self.0.iter().any(|net| net.contains(&ip))
    }
}

impl fmt::Display for SourceNetworks {
    /// `192.0.2.0/24,2001:db8::/32`: the stored and printed form ("" for anywhere).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for SourceNetworks {
    type Err = String;
    /// CIDRs (or single addresses) separated by commas, spaces or new lines;
    /// nothing at all is anywhere. Host bits are cleared (`192.0.2.7/24` is
    /// `192.0.2.0/24`); duplicates are kept once.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut networks: Vec<IpNet> = Vec::new();
        for part in s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
        {
            let net = match part.parse::<IpNet>() {
                Ok(net) => net.trunc(),
                Err(_) => match part.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip.to_canonical()),
                    Err(_) => {
                        return Err(format!(
                            "network {part:?} is not an IPv4 or IPv6 address or CIDR \
                             (e.g. 192.0.2.0/24 or 2001:db8::/32)"
                        ));
                    }
                },
            };
            if !networks.contains(&net) {
                networks.push(net);
            }
        }
        if networks.len() > Self::MAX {
            return Err(format!(
                "at most {} networks per app password ({} given)",
                Self::MAX,
                networks.len()
            ));
        }
        Ok(Self(networks))
    }
}

/// A domain's 2-Step settings as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainPolicy {
    /// The system administrator's switch.
    pub feature: bool,
    /// The domain administrator's choice; applies only while `feature` is on.
    pub status: DomainStatus,
    /// End of the Forced enrollment grace period (Unix seconds), if any.
    pub grace_until: Option<i64>,
}

impl DomainPolicy {
    /// DESIGN: Disabled unless the feature is on, else the administrator's choice.
    pub fn effective_status(&self) -> DomainStatus {
        if self.feature {
            self.status
        } else {
            DomainStatus::Disabled
        }
    }

    /// The date a scheduled roll-out makes 2-Step binding, while it is still
    /// ahead: a Forced domain (feature on) whose `grace_until` is after `now`.
    /// A roll-out *is* the grace period, seen as a date: until then a user
    /// who has not enrolled keeps the primary password, from then on the
    /// table's Forced rows apply, by [`decide_mail_login`] alone, on every
    /// node, with no stored change at that instant.
    pub fn scheduled_forced(&self, now: i64) -> Option<i64> {
        (self.effective_status() == DomainStatus::Forced)
            .then_some(self.grace_until)
            .flatten()
            .filter(|&at| now < at)
    }
}

/// How long before a scheduled roll-out the reminder goes out.
pub const ROLLOUT_REMINDER_SECS: i64 = 3 * 86_400;

/// The mails a scheduled roll-out sends a user who has not enrolled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RolloutMail {
    /// The announcement with the date and the steps, once the date is set.
    Notice,
    /// [`ROLLOUT_REMINDER_SECS`] before the date.
    Reminder,
}

impl RolloutMail {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Notice => "notice",
            Self::Reminder => "reminder",
        }
    }
}

/// Whether a notice sent at `notice_sent_at` calls for a reminder before
/// `forced_from`: only when it went out before the reminder's time (a notice
/// sent in the last days is its own reminder).
pub fn reminder_needed(notice_sent_at: i64, forced_from: i64) -> bool {
    notice_sent_at < forced_from - ROLLOUT_REMINDER_SECS
}

/// Which roll-out mail `user` of `domain` is due now, if any: nothing unless
/// the domain has a roll-out ahead and the user is neither enrolled nor
/// disabled; the notice first; the reminder once its time has come, if the
/// notice called for one and it has not gone out (`reminder_done`).
pub fn rollout_mail_due(
    domain: Option<&DomainPolicy>,
    user: UserState,
    notice_sent_at: Option<i64>,
    reminder_done: bool,
    now: i64,
) -> Option<RolloutMail> {
    let forced_from = domain?.scheduled_forced(now)?;
    if user.enrolled || user.disabled {
        return None;
    }
    match notice_sent_at {
        None => Some(RolloutMail::Notice),
        Some(sent) => (!reminder_done
            && reminder_needed(sent, forced_from)
            && now >= forced_from - ROLLOUT_REMINDER_SECS)
            .then_some(RolloutMail::Reminder),
    }
}

/// What the policy needs to know about a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UserState {
    /// A second factor has been verified.
    pub enrolled: bool,
    /// An administrator disabled the account.
    pub disabled: bool,
}

/// The credential a client presented, as classified by the store lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    /// Anything that is not one of the user's app passwords: only the upstream
    /// server can tell whether it is right.
    Primary,
    /// One of the user's app passwords, verified.
    AppPassword {
        scopes: Scopes,
        expires_at: Option<i64>,
        /// Where it may be used from, and where the client is (after any
        /// PROXY header from a trusted proxy).
        source: Source<'a>,
    },
    /// A live session's app password that no longer exists (revoked, or removed
    /// by a reset). Never produced at login: there it is simply not found.
    RevokedAppPassword,
}

/// An app password's source networks and the client's address, checked like
/// its scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source<'a> {
    pub networks: &'a SourceNetworks,
    pub client: IpAddr,
}

impl Source<'_> {
    /// No restriction (a live session's re-check: its address never changes,
    /// so the login's check stands).
    pub const ANYWHERE: Source<'static> = Source {
        networks: &SourceNetworks::ANYWHERE,
        client: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    };
}

/// How postern logs in upstream when a login is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamLogin {
    /// With the client's own credentials; the upstream verifies them.
    Passthrough,
    /// With the master account on the user's behalf.
    Master,
}

/// Why a login is refused. The client sees one wording for all of these (no
/// oracle); the reason goes to the log and the audit trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    UserDisabled,
    /// Enrolled user, or Forced domain, presenting a primary password.
    AppPasswordRequired,
    /// Forced domain, not enrolled, grace over: enroll on the web first.
    EnrollmentRequired,
    OutOfScope,
    /// The client is outside the app password's source networks.
    OutsideNetworks,
    Expired,
    Revoked,
}

impl Refusal {
    /// Short machine-friendly reason for logs and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserDisabled => "user-disabled",
            Self::AppPasswordRequired => "app-password-required",
            Self::EnrollmentRequired => "enrollment-required",
            Self::OutOfScope => "app-password-out-of-scope",
            Self::OutsideNetworks => "app-password-outside-networks",
            Self::Expired => "app-password-expired",
            Self::Revoked => "app-password-revoked",
        }
    }

    /// What a person is told when a live session ends for this reason
    /// (IMAP `* BYE [ALERT]`, POP3 `-ERR [AUTH]`, SMTP `421 4.7.0`).
    pub fn session_message(self) -> &'static str {
        match self {
            Self::UserDisabled => "Your account has been disabled.",
            Self::AppPasswordRequired => {
                "2-Step Authentication is on for your account: sign in with an application password."
            }
            Self::EnrollmentRequired => {
                "Your domain now requires 2-Step Authentication: set it up on the web, then use an application password."
            }
            Self::OutOfScope => "This application password is not allowed for this protocol.",
            Self::OutsideNetworks => "This application password is not allowed from this network.",
            Self::Expired => "This application password has expired.",
            Self::Revoked => "This application password was revoked.",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(UpstreamLogin),
    Refuse(Refusal),
}

/// The policy for a mail login (IMAP, POP3, SMTP). `domain` is `None` for a domain
/// postern does not know, which behaves as Disabled.
pub fn decide_mail_login(
    domain: Option<&DomainPolicy>,
    user: UserState,
    credential: Credential<'_>,
    protocol: Protocol,
    now: i64,
) -> Decision {
    if user.disabled {
        return Decision::Refuse(Refusal::UserDisabled);
    }
    let status = domain.map_or(DomainStatus::Disabled, DomainPolicy::effective_status);
    match credential {
        Credential::RevokedAppPassword => Decision::Refuse(Refusal::Revoked),
        Credential::AppPassword {
            scopes,
            expires_at,
            source,
        } => {
            if expires_at.is_some_and(|at| at <= now) {
                Decision::Refuse(Refusal::Expired)
            } else if !scopes.contains(protocol) {
                Decision::Refuse(Refusal::OutOfScope)
            } else if !source.networks.admits(source.client) {
                Decision::Refuse(Refusal::OutsideNetworks)
            } else {
                Decision::Allow(UpstreamLogin::Master)
            }
        }
        Credential::Primary => match (status, user.enrolled) {
            (DomainStatus::Disabled, _) | (DomainStatus::Enabled, false) => {
                Decision::Allow(UpstreamLogin::Passthrough)
            }
            (DomainStatus::Enabled | DomainStatus::Forced, true) => {
                Decision::Refuse(Refusal::AppPasswordRequired)
            }
            (DomainStatus::Forced, false) => {
                let in_grace = domain
                    .and_then(|d| d.grace_until)
                    .is_some_and(|until| now < until);
                if in_grace {
                    Decision::Allow(UpstreamLogin::Passthrough)
                } else {
                    Decision::Refuse(Refusal::EnrollmentRequired)
                }
            }
        },
    }
}

/// Until when an allowed mail login stays allowed without any stored change:
/// the app password's expiry, or the end of a Forced domain's grace period for a
/// primary password. Live sessions are re-checked at that time.
pub fn allowed_until(
    domain: Option<&DomainPolicy>,
    user: UserState,
    credential: Credential<'_>,
) -> Option<i64> {
    match credential {
        Credential::AppPassword { expires_at, .. } => expires_at,
        Credential::RevokedAppPassword => None,
        Credential::Primary => {
            let domain = domain?;
            (domain.effective_status() == DomainStatus::Forced && !user.enrolled)
                .then_some(domain.grace_until)
                .flatten()
        }
    }
}

/// What the web login asks for after the primary password was verified upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebLoginStep {
    /// The password is enough.
    Done,
    /// The user is offered enrollment but may skip it.
    DoneMayEnroll,
    /// A second factor is required.
    SecondStep,
    /// Forced domain without enrollment: enroll before anything else.
    MustEnroll,
}

/// The policy table's web-login column.
pub fn decide_web_login(domain: Option<&DomainPolicy>, user: UserState, now: i64) -> WebLoginStep {
    let status = domain.map_or(DomainStatus::Disabled, DomainPolicy::effective_status);
    match (status, user.enrolled) {
        (DomainStatus::Disabled, _) => WebLoginStep::Done,
        (DomainStatus::Enabled, false) => WebLoginStep::DoneMayEnroll,
        (_, true) => WebLoginStep::SecondStep,
        (DomainStatus::Forced, false) => {
            let in_grace = domain
                .and_then(|d| d.grace_until)
                .is_some_and(|until| now < until);
            if in_grace {
                WebLoginStep::DoneMayEnroll
            } else {
                WebLoginStep::MustEnroll
            }
        }
    }
}

/// What a signed-in user's web session may do, decided again on every request
/// from the stored state: a session opened before the domain was forced (or
/// before its grace ended) is bound like a new sign-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebAccess {
    /// Everything a user may do.
    Full,
    /// The domain forces 2-Step and the user has none: enroll, nothing else.
    EnrollOnly,
    /// The account is disabled: nothing.
    Disabled,
}

/// The web column of the table for a session that already passed the sign-in
/// steps. `impersonated`: a system administrator acting as the user, who signed
/// in with their own credentials; the user's enrollment duty does not bind them
/// (and they may not create credentials for the user, see
/// [`decide_sensitive_action`]).
pub fn decide_web_access(
    domain: Option<&DomainPolicy>,
    user: UserState,
    impersonated: bool,
    now: i64,
) -> WebAccess {
    if impersonated {
        return WebAccess::Full;
    }
    if user.disabled {
        return WebAccess::Disabled;
    }
    match decide_web_login(domain, user, now) {
        WebLoginStep::MustEnroll => WebAccess::EnrollOnly,
        WebLoginStep::Done | WebLoginStep::DoneMayEnroll | WebLoginStep::SecondStep => {
            WebAccess::Full
        }
    }
}

/// How a web session last proved who its user is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// The primary password, checked by the upstream server.
    PrimaryPassword,
    /// A TOTP, backup or recovery e-mail code (or a factor just confirmed).
    SecondFactor,
}

/// Actions on a user's own credentials that a stolen session cookie must not
/// be enough for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SensitiveAction {
    CreateAppPassword,
    CreateBackupCodes,
    TurnOff,
    RemoveFactor,
    /// Enrolling a TOTP app or a recovery address.
    AddFactor,
}

/// How recent a proof must be for a sensitive action (GitHub's sudo mode
/// and Google's re-authentication ask again after a few minutes).
pub const REAUTH_WINDOW_SECS: i64 = 10 * 60;

/// Whether a sensitive action may go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionCheck {
    Allow,
    /// Ask for a code (an enrolled user) or the password (a user without a
    /// second factor) first.
    Reauthenticate {
        need: Proof,
    },
    /// A system administrator acting as the user may not change the user's
    /// credentials.
    NotForImpersonator,
}

/// Decides a sensitive action from the session's last proof `(kind, unix time)`.
/// An enrolled user must have passed a second factor in the last
/// [`REAUTH_WINDOW_SECS`]; a user with none, the primary password.
pub fn decide_sensitive_action(
    user: UserState,
    impersonated: bool,
    action: SensitiveAction,
    last_proof: Option<(Proof, i64)>,
    now: i64,
) -> ActionCheck {
    if impersonated {
        return ActionCheck::NotForImpersonator;
    }
    if action == SensitiveAction::AddFactor {
        return ActionCheck::Allow;
    }
    let need = if user.enrolled {
        Proof::SecondFactor
    } else {
        Proof::PrimaryPassword
    };
    let fresh = last_proof.is_some_and(|(kind, at)| {
        let strong_enough = kind == Proof::SecondFactor || need == Proof::PrimaryPassword;
        strong_enough && at <= now && now - at < REAUTH_WINDOW_SECS
    });
    if fresh {
        ActionCheck::Allow
    } else {
        ActionCheck::Reauthenticate { need }
    }
}

/// Whether a user may remove one of their second factors (an authenticator app,
/// the recovery address, a passkey): always, unless it is the last one
/// (`others_left` false) and the domain forces 2-Step.
pub fn may_remove_factor(status: DomainStatus, others_left: bool) -> bool {
    others_left || status != DomainStatus::Forced
}

/// How long a browser the user trusted at the second step may skip it
/// ("don't ask again on this browser for 30 days", as Google offers).
pub const TRUSTED_BROWSER_SECS: i64 = 30 * 86_400;

/// What is stored about the browser a sign-in's trusted-browser cookie names,
/// for [`decide_trusted_browser`]. The caller has already checked that the row
/// belongs to the user signing in (another user's row vouches for nobody).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustedBrowser {
    /// Unix seconds: the end of the 30 days.
    pub expires_at: i64,
    /// The primary password just accepted has the tag stored when the browser
    /// was trusted (a different one: the password was changed upstream).
    pub same_password: bool,
}

/// Why a trusted browser can never skip the second step again: its row is
/// deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustVoided {
    /// The domain administrator requires the second step on every sign-in.
    NotAllowed,
    Expired,
    /// The primary password was changed (or reset) since.
    PasswordChanged,
}

impl TrustVoided {
    /// For the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotAllowed => "not allowed by the domain",
            Self::Expired => "expired",
            Self::PasswordChanged => "password changed",
        }
    }
}

/// Whether a trusted browser lets a sign-in skip its second step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustedBrowserCheck {
    /// Signed in without the second step.
    Skip,
    /// The sign-in goes on as the policy table says (no browser, or nothing to
    /// skip); the browser's row, if any, stays.
    NoSkip,
    /// Ask for the second step, and forget the browser.
    Void(TrustVoided),
}

/// May a trusted browser skip the sign-in's second step? Only where the table
/// asks for one (`step`), for a user who is not disabled, in a domain that
/// allows it (`domain_allows`), within the 30 days, and with the same primary
/// password as when the browser was trusted.
pub fn decide_trusted_browser(
    domain_allows: bool,
    user: UserState,
    step: WebLoginStep,
    browser: Option<TrustedBrowser>,
    now: i64,
) -> TrustedBrowserCheck {
    let Some(browser) = browser else {
        return TrustedBrowserCheck::NoSkip;
    };
    if step != WebLoginStep::SecondStep || user.disabled || !user.enrolled {
        return TrustedBrowserCheck::NoSkip;
    }
    if !domain_allows {
        TrustedBrowserCheck::Void(TrustVoided::NotAllowed)
    } else if browser.expires_at <= now {
        TrustedBrowserCheck::Void(TrustVoided::Expired)
    } else if !browser.same_password {
        TrustedBrowserCheck::Void(TrustVoided::PasswordChanged)
    } else {
        TrustedBrowserCheck::Skip
    }
}

/// May the browser that just passed the second step be trusted for
/// [`TRUSTED_BROWSER_SECS`]? Not when the domain requires the second step on
/// every sign-in, and not for a system administrator acting as the user.
pub fn may_trust_browser(domain_allows: bool, impersonated: bool) -> bool {
    domain_allows && !impersonated
}

/// Security notices a user may be sent in an hour; past it they are not sent.
pub const NOTICES_PER_HOUR: i64 = 10;

/// What becomes of a security notice about to be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeDecision {
    /// Queued for the user's mailbox and recovery address.
    Queue,
    /// The domain administrator turned this kind off: nothing is queued.
    TurnedOff,
    /// [`NOTICES_PER_HOUR`] were queued in the last hour: not sent.
    RateLimited,
}

/// Whether a notice of `kind` is queued, given the kinds the user's domain
/// turned `off` and how many notices the user was queued in the last hour.
pub fn decide_notice(
    off: crate::notices::NoticeKinds,
    kind: crate::notices::NoticeKind,
    queued_last_hour: i64,
) -> NoticeDecision {
    if off.contains(kind) {
        NoticeDecision::TurnedOff
    } else if queued_last_hour >= NOTICES_PER_HOUR {
        NoticeDecision::RateLimited
    } else {
        NoticeDecision::Queue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DomainStatus::*;

    #[test]
    fn notice_table() {
        use crate::notices::{NoticeKind::*, NoticeKinds};
        let off = NoticeKinds::NONE.with(AppPasswordCreated);
        for (off, kind, last_hour, expected) in [
            (
                NoticeKinds::NONE,
                AppPasswordCreated,
                0,
                NoticeDecision::Queue,
            ),
            (NoticeKinds::NONE, AccountBlocked, 9, NoticeDecision::Queue),
            (
                NoticeKinds::NONE,
                TwoStepOff,
                10,
                NoticeDecision::RateLimited,
            ),
            (off, AppPasswordCreated, 0, NoticeDecision::TurnedOff),
            (off, AppPasswordCreated, 50, NoticeDecision::TurnedOff),
            (off, AppPasswordRevoked, 0, NoticeDecision::Queue),
            (off, AppPasswordRevoked, 11, NoticeDecision::RateLimited),
        ] {
            assert_eq!(
                decide_notice(off, kind, last_hour),
                expected,
                "{kind} {last_hour}"
            );
        }
    }

    const NOW: i64 = 1_800_000_000;

    fn domain(feature: bool, status: DomainStatus) -> DomainPolicy {
        DomainPolicy {
            feature,
            status,
            grace_until: None,
        }
    }

    fn user(enrolled: bool) -> UserState {
        UserState {
            enrolled,
            disabled: false,
        }
    }

    const APP: Credential<'static> = Credential::AppPassword {
        scopes: Scopes::ALL,
        expires_at: None,
        source: Source::ANYWHERE,
    };

    /// DESIGN.md's table, row by row: (status, enrolled, primary, app password, web).
    #[test]
    fn the_policy_table() {
        use Decision::*;
        use UpstreamLogin::*;
        use WebLoginStep::*;
        let rows = [
            (Disabled, false, Allow(Passthrough), Allow(Master), Done),
            (Disabled, true, Allow(Passthrough), Allow(Master), Done),
            (
                Enabled,
                false,
                Allow(Passthrough),
                Allow(Master),
                DoneMayEnroll,
            ),
            (
                Enabled,
                true,
                Refuse(Refusal::AppPasswordRequired),
                Allow(Master),
                SecondStep,
            ),
            (
                Forced,
                false,
                Refuse(Refusal::EnrollmentRequired),
                Allow(Master),
                MustEnroll,
            ),
            (
                Forced,
                true,
                Refuse(Refusal::AppPasswordRequired),
                Allow(Master),
                SecondStep,
            ),
        ];
        for (status, enrolled, primary, app, web) in rows {
            let d = domain(true, status);
            for protocol in Protocol::ALL {
                assert_eq!(
                    decide_mail_login(Some(&d), user(enrolled), Credential::Primary, protocol, NOW),
                    primary,
                    "{status} enrolled={enrolled} primary {protocol}"
                );
                assert_eq!(
                    decide_mail_login(Some(&d), user(enrolled), APP, protocol, NOW),
                    app,
                    "{status} enrolled={enrolled} app {protocol}"
                );
            }
            assert_eq!(decide_web_login(Some(&d), user(enrolled), NOW), web);
        }
    }

    #[test]
    fn feature_off_means_disabled_whatever_the_status() {
        for status in [Disabled, Enabled, Forced] {
            let d = domain(false, status);
            assert_eq!(d.effective_status(), Disabled);
            assert_eq!(
                decide_mail_login(
                    Some(&d),
                    user(true),
                    Credential::Primary,
                    Protocol::Imap,
                    NOW
                ),
                Decision::Allow(UpstreamLogin::Passthrough)
            );
        }
    }

    #[test]
    fn unknown_domain_behaves_as_disabled() {
        assert_eq!(
            decide_mail_login(None, user(true), Credential::Primary, Protocol::Pop3, NOW),
            Decision::Allow(UpstreamLogin::Passthrough)
        );
        assert_eq!(decide_web_login(None, user(true), NOW), WebLoginStep::Done);
    }

    #[test]
    fn forced_grace_period_lets_primary_through_until_it_ends() {
        let d = DomainPolicy {
            grace_until: Some(NOW + 10),
            ..domain(true, Forced)
        };
        let login = |now| {
            decide_mail_login(
                Some(&d),
                user(false),
                Credential::Primary,
                Protocol::Smtp,
                now,
            )
        };
        assert_eq!(login(NOW), Decision::Allow(UpstreamLogin::Passthrough));
        assert_eq!(login(NOW + 9), Decision::Allow(UpstreamLogin::Passthrough));
        assert_eq!(
            login(NOW + 10),
            Decision::Refuse(Refusal::EnrollmentRequired)
        );
        // Grace never helps an enrolled user's primary password.
        assert_eq!(
            decide_mail_login(
                Some(&d),
                user(true),
                Credential::Primary,
                Protocol::Smtp,
                NOW
            ),
            Decision::Refuse(Refusal::AppPasswordRequired)
        );
        assert_eq!(
            decide_web_login(Some(&d), user(false), NOW),
            WebLoginStep::DoneMayEnroll
        );
        assert_eq!(
            decide_web_login(Some(&d), user(false), NOW + 10),
            WebLoginStep::MustEnroll
        );
    }

    /// A roll-out scheduled for a date: the Forced rows of the table from
    /// that instant on, the Enabled rows' behaviour for mail before it.
    #[test]
    fn a_scheduled_roll_out_forces_from_its_date() {
        use Decision::*;
        use UpstreamLogin::*;
        let at = NOW + 3_600;
        let scheduled = DomainPolicy {
            grace_until: Some(at),
            ..domain(true, Forced)
        };
        // (now, enrolled, primary, web, still scheduled)
        let rows = [
            (
                at - 1,
                false,
                Allow(Passthrough),
                WebLoginStep::DoneMayEnroll,
                Some(at),
            ),
            (
                at - 1,
                true,
                Refuse(Refusal::AppPasswordRequired),
                WebLoginStep::SecondStep,
                Some(at),
            ),
            (
                at,
                false,
                Refuse(Refusal::EnrollmentRequired),
                WebLoginStep::MustEnroll,
                None,
            ),
            (
                at + 86_400,
                false,
                Refuse(Refusal::EnrollmentRequired),
                WebLoginStep::MustEnroll,
                None,
            ),
            (
                at,
                true,
                Refuse(Refusal::AppPasswordRequired),
                WebLoginStep::SecondStep,
                None,
            ),
        ];
        for (now, enrolled, primary, web, ahead) in rows {
            for protocol in Protocol::ALL {
                assert_eq!(
                    decide_mail_login(
                        Some(&scheduled),
                        user(enrolled),
                        Credential::Primary,
                        protocol,
                        now
                    ),
                    primary,
                    "now={now} enrolled={enrolled} {protocol}"
                );
                assert_eq!(
                    decide_mail_login(Some(&scheduled), user(enrolled), APP, protocol, now),
                    Allow(Master)
                );
            }
            assert_eq!(decide_web_login(Some(&scheduled), user(enrolled), now), web);
            assert_eq!(scheduled.scheduled_forced(now), ahead, "now={now}");
        }
        // A live password session learns the instant it must be checked again.
        assert_eq!(
            allowed_until(Some(&scheduled), user(false), Credential::Primary),
            Some(at)
        );
        // No roll-out while the feature is off, or without a date.
        let off = DomainPolicy {
            feature: false,
            ..scheduled
        };
        assert_eq!(off.scheduled_forced(NOW), None);
        assert_eq!(domain(true, Forced).scheduled_forced(NOW), None);
        assert_eq!(domain(true, Enabled).scheduled_forced(NOW), None);
    }

    #[test]
    fn roll_out_mails_go_to_users_without_2_step_once_each() {
        use RolloutMail::*;
        let at = NOW + 10 * 86_400;
        let window = at - ROLLOUT_REMINDER_SECS;
        let scheduled = DomainPolicy {
            grace_until: Some(at),
            ..domain(true, Forced)
        };
        let disabled = UserState {
            enrolled: false,
            disabled: true,
        };
        // (user, notice sent at, reminder done, now, due)
        let rows = [
            (user(false), None, false, NOW, Some(Notice)),
            (user(true), None, false, NOW, None),
            (disabled, None, false, NOW, None),
            (user(false), Some(NOW), false, NOW + 60, None),
            (user(false), Some(NOW), false, window - 1, None),
            (user(false), Some(NOW), false, window, Some(Reminder)),
            (user(false), Some(NOW), true, window, None),
            (user(true), Some(NOW), false, window, None),
            // Known only in the last days: the notice is its own reminder.
            (user(false), None, false, window + 5, Some(Notice)),
            (user(false), Some(window + 5), false, window + 60, None),
            // The date has come: nothing more is sent.
            (user(false), None, false, at, None),
            (user(false), Some(NOW), false, at, None),
        ];
        for (u, sent, reminded, now, due) in rows {
            assert_eq!(
                rollout_mail_due(Some(&scheduled), u, sent, reminded, now),
                due,
                "{u:?} sent={sent:?} reminded={reminded} now={now}"
            );
        }
        for d in [
            None,
            Some(domain(true, Enabled)),
            Some(domain(true, Forced)),
        ] {
            assert_eq!(
                rollout_mail_due(d.as_ref(), user(false), None, false, NOW),
                None
            );
        }
    }

    #[test]
    fn allowed_until_names_the_next_time_based_change() {
        let grace = DomainPolicy {
            grace_until: Some(NOW + 50),
            ..domain(true, Forced)
        };
        assert_eq!(
            allowed_until(Some(&grace), user(false), Credential::Primary),
            Some(NOW + 50)
        );
        assert_eq!(
            allowed_until(Some(&grace), user(true), Credential::Primary),
            None
        );
        assert_eq!(
            allowed_until(
                Some(&domain(true, Enabled)),
                user(false),
                Credential::Primary
            ),
            None
        );
        let expiring = Credential::AppPassword {
            scopes: Scopes::ALL,
            expires_at: Some(NOW + 9),
            source: Source::ANYWHERE,
        };
        assert_eq!(allowed_until(None, user(true), expiring), Some(NOW + 9));
    }

    #[test]
    fn app_password_scope_and_expiry() {
        let d = domain(true, Enabled);
        let imap_only = Credential::AppPassword {
            scopes: "imap".parse().unwrap(),
            expires_at: None,
            source: Source::ANYWHERE,
        };
        assert_eq!(
            decide_mail_login(Some(&d), user(true), imap_only, Protocol::Imap, NOW),
            Decision::Allow(UpstreamLogin::Master)
        );
        for p in [Protocol::Pop3, Protocol::Smtp] {
            assert_eq!(
                decide_mail_login(Some(&d), user(true), imap_only, p, NOW),
                Decision::Refuse(Refusal::OutOfScope)
            );
        }
        let expiring = Credential::AppPassword {
            scopes: Scopes::ALL,
            expires_at: Some(NOW + 1),
            source: Source::ANYWHERE,
        };
        assert_eq!(
            decide_mail_login(Some(&d), user(true), expiring, Protocol::Imap, NOW),
            Decision::Allow(UpstreamLogin::Master)
        );
        assert_eq!(
            decide_mail_login(Some(&d), user(true), expiring, Protocol::Imap, NOW + 1),
            Decision::Refuse(Refusal::Expired)
        );
    }

    #[test]
    fn disabled_user_is_refused_whatever_the_credential() {
        let disabled = UserState {
            enrolled: true,
            disabled: true,
        };
        for d in [
            None,
            Some(domain(true, Forced)),
            Some(domain(false, Disabled)),
        ] {
            for credential in [Credential::Primary, APP] {
                assert_eq!(
                    decide_mail_login(d.as_ref(), disabled, credential, Protocol::Imap, NOW),
                    Decision::Refuse(Refusal::UserDisabled)
                );
            }
        }
    }

    #[test]
    fn a_revoked_app_password_ends_its_session_whatever_the_domain() {
        for d in [
            None,
            Some(domain(true, Enabled)),
            Some(domain(false, Disabled)),
        ] {
            assert_eq!(
                decide_mail_login(
                    d.as_ref(),
                    user(false),
                    Credential::RevokedAppPassword,
                    Protocol::Imap,
                    NOW
                ),
                Decision::Refuse(Refusal::Revoked)
            );
        }
    }

    /// A session's access follows the stored state on every request: the same
    /// rows as the table's web column, for a session already signed in.
    #[test]
    fn web_access_of_a_signed_in_session_follows_the_table() {
        use WebAccess::{EnrollOnly, Full};
        let rows = [
            (Disabled, false, Full),
            (Disabled, true, Full),
            (Enabled, false, Full),
            (Enabled, true, Full),
            (Forced, false, EnrollOnly),
            (Forced, true, Full),
        ];
        for (status, enrolled, access) in rows {
            let d = domain(true, status);
            assert_eq!(
                decide_web_access(Some(&d), user(enrolled), false, NOW),
                access,
                "{status} enrolled={enrolled}"
            );
        }
        let grace = DomainPolicy {
            grace_until: Some(NOW + 10),
            ..domain(true, Forced)
        };
        assert_eq!(
            decide_web_access(Some(&grace), user(false), false, NOW),
            Full
        );
        assert_eq!(
            decide_web_access(Some(&grace), user(false), false, NOW + 10),
            EnrollOnly
        );
        let disabled = UserState {
            enrolled: true,
            disabled: true,
        };
        assert_eq!(
            decide_web_access(None, disabled, false, NOW),
            WebAccess::Disabled
        );
        // The impersonating administrator signed in as themselves.
        assert_eq!(
            decide_web_access(Some(&domain(true, Forced)), user(false), true, NOW),
            Full
        );
    }

    #[test]
    fn sensitive_actions_need_a_recent_proof_of_the_right_kind() {
        use ActionCheck::*;
        use SensitiveAction::*;
        let recent = NOW - REAUTH_WINDOW_SECS + 1;
        let stale = NOW - REAUTH_WINDOW_SECS;
        let code = |at| Some((Proof::SecondFactor, at));
        let password = |at| Some((Proof::PrimaryPassword, at));
        for action in [CreateAppPassword, CreateBackupCodes, TurnOff, RemoveFactor] {
            // Enrolled: only a second factor counts.
            let need_code = Reauthenticate {
                need: Proof::SecondFactor,
            };
            assert_eq!(
                decide_sensitive_action(user(true), false, action, code(recent), NOW),
                Allow
            );
            for proof in [code(stale), password(NOW), None, code(NOW + 5)] {
                assert_eq!(
                    decide_sensitive_action(user(true), false, action, proof, NOW),
                    need_code,
                    "{action:?} {proof:?}"
                );
            }
            // No factor: the password, or a factor just confirmed.
            for proof in [password(recent), code(recent)] {
                assert_eq!(
                    decide_sensitive_action(user(false), false, action, proof, NOW),
                    Allow
                );
            }
            assert_eq!(
                decide_sensitive_action(user(false), false, action, password(stale), NOW),
                Reauthenticate {
                    need: Proof::PrimaryPassword
                }
            );
        }
        assert_eq!(
            decide_sensitive_action(user(false), false, AddFactor, None, NOW),
            Allow
        );
        for action in [
            CreateAppPassword,
            CreateBackupCodes,
            TurnOff,
            RemoveFactor,
            AddFactor,
        ] {
            assert_eq!(
                decide_sensitive_action(user(true), true, action, code(NOW), NOW),
                NotForImpersonator
            );
        }
    }

    #[test]
    fn scopes_parse_and_print() {
        let s: Scopes = " imap, smtp ".parse().unwrap();
        assert!(s.contains(Protocol::Imap) && s.contains(Protocol::Smtp));
        assert!(!s.contains(Protocol::Pop3));
        assert_eq!(s.to_string(), "imap,smtp");
        assert!("".parse::<Scopes>().is_err());
        assert!("imap,ftp".parse::<Scopes>().is_err());
        assert_eq!(Scopes::ALL.to_string(), "imap,pop3,smtp");
    }

    #[test]
    fn app_password_source_networks_are_checked_like_a_scope() {
        let d = domain(true, Forced);
        let networks: SourceNetworks = "192.0.2.0/24, 2001:db8::/32".parse().unwrap();
        let from = |client: &str| Credential::AppPassword {
            scopes: Scopes::ALL,
            expires_at: None,
            source: Source {
                networks: &networks,
                client: client.parse().unwrap(),
            },
        };
        for inside in [
            "192.0.2.1",
            "192.0.2.255",
            "2001:db8::7",
            "::ffff:192.0.2.9",
        ] {
            assert_eq!(
                decide_mail_login(Some(&d), user(true), from(inside), Protocol::Imap, NOW),
                Decision::Allow(UpstreamLogin::Master),
                "{inside}"
            );
        }
        for outside in ["127.0.0.1", "192.0.3.1", "2001:db9::1", "::1"] {
            for protocol in Protocol::ALL {
                assert_eq!(
                    decide_mail_login(Some(&d), user(true), from(outside), protocol, NOW),
                    Decision::Refuse(Refusal::OutsideNetworks),
                    "{outside} {protocol}"
                );
            }
        }
        // Anywhere admits every address.
        assert!(SourceNetworks::ANYWHERE.admits("203.0.113.5".parse().unwrap()));
    }

    #[test]
    fn source_networks_parse_and_print() {
        let n: SourceNetworks = "10.1.2.3/8,\n 192.0.2.7 2001:db8::1/32 10.0.0.0/8"
            .parse()
            .unwrap();
        assert_eq!(n.to_string(), "10.0.0.0/8,192.0.2.7/32,2001:db8::/32");
        assert_eq!(n.to_string().parse::<SourceNetworks>().unwrap(), n);
        assert!("".parse::<SourceNetworks>().unwrap().is_anywhere());
        for bad in [
            "10.0.0.0/33",
            "example.org",
            "192.0.2.0/24,300.1.1.1",
            "::1/129",
        ] {
            let err = bad.parse::<SourceNetworks>().unwrap_err();
            assert!(err.contains("is not an IPv4 or IPv6"), "{bad}: {err}");
        }
        let many: Vec<String> = (0..=SourceNetworks::MAX)
            .map(|i| format!("10.0.{i}.0/24"))
            .collect();
        assert!(
            many.join(",")
                .parse::<SourceNetworks>()
                .unwrap_err()
                .contains("at most")
        );
    }

    #[test]
    fn the_last_factor_stays_while_the_domain_forces_2_step() {
        for (status, others_left, may) in [
            (Disabled, false, true),
            (Enabled, false, true),
            (Forced, false, false),
            (Forced, true, true),
        ] {
            assert_eq!(
                may_remove_factor(status, others_left),
                may,
                "{status:?} {others_left}"
            );
        }
    }

    #[test]
    fn a_trusted_browser_skips_the_second_step_only_while_nothing_changed() {
        use TrustedBrowserCheck::*;
        let fresh = TrustedBrowser {
            expires_at: NOW + 1,
            same_password: true,
        };
        let disabled = UserState {
            enrolled: true,
            disabled: true,
        };
        let rows = [
            // (domain allows, user, step, browser, decision)
            (
                true,
                user(true),
                WebLoginStep::SecondStep,
                Some(fresh),
                Skip,
            ),
            (true, user(true), WebLoginStep::SecondStep, None, NoSkip),
            (
                false,
                user(true),
                WebLoginStep::SecondStep,
                Some(fresh),
                Void(TrustVoided::NotAllowed),
            ),
            (
                true,
                user(true),
                WebLoginStep::SecondStep,
                Some(TrustedBrowser {
                    expires_at: NOW,
                    ..fresh
                }),
                Void(TrustVoided::Expired),
            ),
            (
                true,
                user(true),
                WebLoginStep::SecondStep,
                Some(TrustedBrowser {
                    same_password: false,
                    ..fresh
                }),
                Void(TrustVoided::PasswordChanged),
            ),
            // Nothing to skip: the row stays for when there is.
            (true, user(true), WebLoginStep::Done, Some(fresh), NoSkip),
            (
                true,
                user(false),
                WebLoginStep::MustEnroll,
                Some(fresh),
                NoSkip,
            ),
            (
                true,
                user(false),
                WebLoginStep::DoneMayEnroll,
                Some(fresh),
                NoSkip,
            ),
            (
                true,
                disabled,
                WebLoginStep::SecondStep,
                Some(fresh),
                NoSkip,
            ),
        ];
        for (allows, who, step, browser, expected) in rows {
            assert_eq!(
                decide_trusted_browser(allows, who, step, browser, NOW),
                expected,
                "allows={allows} {who:?} {step:?} {browser:?}"
            );
        }
        assert!(may_trust_browser(true, false));
        assert!(!may_trust_browser(false, false));
        assert!(!may_trust_browser(true, true));
    }
}
