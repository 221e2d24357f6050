//! `postern admin ...`: system administrators, domains, users, app passwords and
//! live sessions (DESIGN.md "Exact command line and config").
//!
//! Every command works on the database directly, also while `serve` runs: the store
//! writes the audit row and, where a live session may be affected, the event that
//! `serve` tails, so changes reach every node within a second. Listings print an
//! aligned table with a header, or with `--json` an array of the shapes DESIGN.md
//! fixes; changes print one confirmation line (`--json`: `{"ok": true, "message"}`).
//! Errors go to the caller (`main` prints them to stderr and exits non-zero).

use crate::clock::unix_now;
use std::io::{BufRead, Write};

use anyhow::{Context, anyhow, bail};
use clap::{Subcommand, ValueEnum};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::Config;
use crate::credentials::{
    AppPasswordLimits, BadExpiry, InstanceKey, IssuedAppPassword, expiry_after_days,
    issue_limited_app_password, totp,
};
use crate::notices::NoticeKinds;
use crate::policy::{DomainStatus, Protocol, Scopes, SourceNetworks};
use crate::secret::Secret;
use crate::store::{
    AppPasswordRecord, AuditFilter, AuditRecord, DomainRecord, EventKind, FactorKind, SessionRow,
    Store, StoreError, UserSummary, normalize_address,
};

/// Seconds in a day, for `--grace-days`.
const DAY: i64 = 86_400;
/// Upper bound of `--grace-days` (about a hundred years).
const MAX_DAYS: i64 = 36_500;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Local accounts of the web UI's system administrators.
    #[command(subcommand)]
    Sysadmin(SysadminCommand),
    /// Domains: the feature switch, the status and grace period, administrators.
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Users: list, provision TOTP, reset, disable, enable.
    #[command(subcommand)]
    User(UserCommand),
    /// Application passwords: create, list, revoke.
    #[command(subcommand)]
    AppPassword(AppPasswordCommand),
    /// Live mail sessions on every node.
    #[command(subcommand)]
    Session(SessionCommand),
    /// The audit log, newest first: changes and login results.
    Audit {
        /// Only rows about this user (as target) or by this user (as actor).
        #[arg(long, value_name = "ADDRESS")]
        user: Option<String>,
        /// Only rows at or after T: RFC 3339, YYYY-MM-DD (UTC), or a duration
        /// back from now such as 30m, 24h, 7d.
        #[arg(long, value_name = "T", value_parser = since)]
        since: Option<i64>,
        /// At most N rows.
        #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
        limit: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum SysadminCommand {
    /// Create a system administrator, or set a new password for one; the password
    /// is read from the first line of stdin.
    Add {
        /// The administrator's login name in the web UI.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Add a domain (feature off, status disabled); a known domain is left as is.
    Add {
        /// The mail domain, e.g. example.org.
        domain: String,
    },
    /// List the known domains.
    List,
    /// Turn the 2-Step feature on or off (the system administrator's switch).
    Feature {
        /// A domain added with `domain add`.
        domain: String,
        /// on or off.
        state: Switch,
    },
    /// Set the domain's status; without --grace-days any grace period is cleared.
    Status {
        /// A domain added with `domain add`.
        domain: String,
        /// Disabled: primary passwords work; enabled: users may enroll;
        /// forced: every user must use a second factor.
        #[arg(value_name = "disabled|enabled|forced")]
        status: DomainStatus,
        /// Forced enrollment grace period, in days from now.
        #[arg(long, value_name = "N", value_parser = days, conflicts_with = "from")]
        grace_days: Option<i64>,
        /// Forced from this date (YYYY-MM-DD, 00:00 UTC, or an RFC 3339
        /// time): users without 2-Step are mailed the date and the steps, and
        /// postern switches by itself then. Only with forced.
        #[arg(long, value_name = "DATE")]
        from: Option<String>,
    },
    /// Allow or not "Don't ask again on this browser for 30 days" at the web
    /// sign-in's second step; off forgets every browser trusted so far.
    TrustedBrowsers {
        /// A domain added with `domain add`.
        domain: String,
        /// on (allowed, the default) or off.
        state: Switch,
    },
    /// Turn security notices by e-mail off or on for the domain's users;
    /// without --off or --on, show which are off.
    Notices {
        /// A domain added with `domain add`.
        domain: String,
        /// Kinds to stop sending, comma-separated: two-step-on, two-step-off,
        /// factor-added, factor-removed, app-password-created,
        /// app-password-revoked, backup-codes, account-blocked.
        #[arg(long, value_name = "KIND,...")]
        off: Option<NoticeKinds>,
        /// Kinds to send again, comma-separated (as for --off).
        #[arg(long, value_name = "KIND,...")]
        on: Option<NoticeKinds>,
    },
    /// Make USER an administrator of DOMAIN.
    Admin {
        /// A domain added with `domain add`.
        domain: String,
        /// A mailbox address of that domain.
        user: String,
    },
}

/// `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// List the users postern has seen in DOMAIN.
    List {
        /// The mail domain.
        domain: String,
    },
    /// Provision a confirmed TOTP second factor with a known secret.
    EnrollTotp {
        /// The user's mailbox address.
        user: String,
        /// The base32 TOTP secret (at least 128 bits).
        #[arg(long, value_name = "BASE32")]
        secret: String,
    },
    /// Drop the user's second factors, backup codes, app passwords and trusted browsers.
    Reset {
        /// The user's mailbox address.
        user: String,
    },
    /// Refuse every mail login of the user, whatever the credential.
    Disable {
        /// The user's mailbox address.
        user: String,
    },
    /// Undo `user disable`.
    Enable {
        /// The user's mailbox address.
        user: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AppPasswordCommand {
    /// Generate an app password; it is printed once, alone on the first line.
    Create {
        /// The user's mailbox address.
        user: String,
        /// The device it is for.
        #[arg(long)]
        name: String,
        /// The protocols it may be used with (default: all).
        #[arg(long, value_name = "imap,pop3,smtp")]
        scope: Option<Scopes>,
        /// Expire it after N days (1 to 3650; left out: never).
        #[arg(long, value_name = "N", value_parser = expires_days)]
        expires_days: Option<i64>,
        /// The source networks it may be used from, as CIDRs separated by
        /// commas (IPv4 or IPv6; default: anywhere).
        #[arg(long, value_name = "CIDR,...")]
        networks: Option<SourceNetworks>,
    },
    /// List the user's app passwords.
    List {
        /// The user's mailbox address.
        user: String,
    },
    /// Revoke one app password (its live sessions end).
    Revoke {
        /// The user's mailbox address.
        user: String,
        /// The app password's id (from `app-password list`).
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List the live mail sessions of every node.
    List,
    /// End every live session of USER, on every node.
    Kill {
        /// The user's mailbox address.
        user: String,
    },
}

/// A day count for `--grace-days`: 1 to [`MAX_DAYS`].
fn days(text: &str) -> Result<i64, String> {
    match text.trim().parse::<i64>() {
        Ok(n) if (1..=MAX_DAYS).contains(&n) => Ok(n),
        _ => Err(format!("expected a number of days from 1 to {MAX_DAYS}")),
    }
}

/// `--expires-days`: checked as the web UI and the API check it.
fn expires_days(text: &str) -> Result<i64, String> {
    let days = text
        .trim()
        .parse::<i64>()
        .map_err(|_| BadExpiry.to_string())?;
    expiry_after_days(days, 0).map_err(|err| err.to_string())?;
    Ok(days)
}

/// `--since`: an RFC 3339 time, a UTC date (`YYYY-MM-DD`), or a duration back from
/// now (`90s`, `30m`, `24h`, `7d`, `2w`); as Unix seconds.
fn since(text: &str) -> Result<i64, String> {
    since_at(text, unix_now())
}

fn since_at(text: &str, now: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at.unix_timestamp());
    }
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = time::Date::parse(text, &date_format) {
        return Ok(date.midnight().assume_utc().unix_timestamp());
    }
    let unit = text.char_indices().last().map_or(0, |(i, _)| i);
    let (number, suffix) = text.split_at(unit);
    let scale = match suffix {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => DAY,
        "w" => 7 * DAY,
        _ => 0,
    };
    match number.parse::<i64>() {
        Ok(n) if scale > 0 && (0..=MAX_DAYS * DAY / scale).contains(&n) => Ok(now - n * scale),
        _ => Err(
            "expected an RFC 3339 time, a date YYYY-MM-DD, or a duration such as 24h or 7d"
                .to_owned(),
        ),
    }
}

/// Runs one admin command, writing its result to `out`.
pub async fn run(
    config: &Config,
    command: AdminCommand,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let store = Store::open(&config.store.url).await?;
    // Never migrate under a running `serve` of another version: say so and stop.
    if let Err(err) = store.require_current_schema().await {
        store.close().await;
        return Err(err).context("postern admin works only on this version's schema");
    }
    let result = Admin {
        config,
        store: &store,
        actor: actor(),
        json,
    }
    .run(command, out)
    .await;
    store.close().await;
    result
}

/// `cli`, or `cli:<login>` when the login of the operator is known.
fn actor() -> String {
    ["SUDO_USER", "USER"]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
        .map_or_else(|| "cli".to_owned(), |login| format!("cli:{login}"))
}

struct Admin<'a> {
    config: &'a Config,
    store: &'a Store,
    actor: String,
    json: bool,
}

impl Admin<'_> {
    async fn run(&self, command: AdminCommand, out: &mut impl Write) -> anyhow::Result<()> {
        match command {
            AdminCommand::Sysadmin(SysadminCommand::Add { name }) => {
                self.sysadmin_add(&name, out).await
            }
            AdminCommand::Domain(command) => self.domain(command, out).await,
            AdminCommand::User(command) => self.user(command, out).await,
            AdminCommand::AppPassword(command) => self.app_password(command, out).await,
            AdminCommand::Session(command) => self.session(command, out).await,
            AdminCommand::Audit { user, since, limit } => {
                let records = self
                    .store
                    .list_audit(AuditFilter { user, since, limit })
                    .await?;
                emit(out, self.json, &audit_rows(&records)?)
            }
        }
    }

    async fn sysadmin_add(&self, name: &str, out: &mut impl Write) -> anyhow::Result<()> {
        let hash = tokio::task::spawn_blocking(|| {
            let password = read_password_line(&mut std::io::stdin().lock())?;
            crate::credentials::admin_password::hash_blocking(password.expose())
                .map_err(|err| anyhow!("cannot hash the password: {err}"))
        })
        .await??;
        self.store.add_sysadmin(name, &hash, &self.actor).await?;
        confirm(
            out,
            self.json,
            &format!("system administrator {} saved", name.trim()),
        )
    }

    async fn domain(&self, command: DomainCommand, out: &mut impl Write) -> anyhow::Result<()> {
        let message = match command {
            DomainCommand::Add { domain } => {
                if self.store.add_domain(&domain, &self.actor).await? {
                    format!("domain {domain} added (feature off, status disabled)")
                } else {
                    format!("domain {domain} is already known; nothing changed")
                }
            }
            DomainCommand::List => {
                let domains = self.store.list_domains().await?;
                return emit(out, self.json, &domain_rows(&domains)?);
            }
            DomainCommand::Feature { domain, state } => {
                let on = state == Switch::On;
                self.store
                    .set_domain_feature(&domain, on, &self.actor)
                    .await?;
                format!("domain {domain}: feature {}", on_off(on))
            }
            DomainCommand::Status {
                domain,
                status,
                grace_days,
                from: Some(date),
            } => {
                if status != DomainStatus::Forced || grace_days.is_some() {
                    bail!("--from goes with status forced (and without --grace-days)");
                }
                let at = crate::rollout::parse_forced_from(&date, unix_now())
                    .map_err(|err| anyhow!("--from: {err}"))?;
                self.store.schedule_forced(&domain, at, &self.actor).await?;
                format!(
                    "domain {domain}: status forced from {}; users without 2-Step are mailed by a running serve",
                    rfc3339(at)?
                )
            }
            DomainCommand::Status {
                domain,
                status,
                grace_days,
                from: None,
            } => {
                let grace_until = grace_days.map(|n| unix_now() + n * DAY);
                self.store
                    .set_domain_status(&domain, status, grace_until, &self.actor)
                    .await?;
                match grace_until {
                    Some(until) => format!(
                        "domain {domain}: status {status}, grace period until {}",
                        rfc3339(until)?
                    ),
                    None => format!("domain {domain}: status {status}, no grace period"),
                }
            }
            DomainCommand::TrustedBrowsers { domain, state } => {
                let on = state == Switch::On;
                let forgotten = self
                    .store
                    .set_domain_trusted_browsers(&domain, on, &self.actor)
                    .await?;
                if on {
                    format!("domain {domain}: trusted browsers allowed")
                } else {
                    format!(
                        "domain {domain}: trusted browsers not allowed \
                         ({forgotten} trusted browsers forgotten)"
                    )
                }
            }
            DomainCommand::Notices { domain, off, on } => {
                let record = self
                    .store
                    .domain(&domain)
                    .await?
                    .ok_or_else(|| StoreError::UnknownDomain(domain.clone()))?;
                let (off, on) = (off.unwrap_or_default(), on.unwrap_or_default());
                if let Some(both) = off.iter().find(|k| on.contains(*k)) {
                    bail!("{both} is named in both --off and --on");
                }
                let mut set = record.notices_off;
                for kind in off.iter() {
                    set = set.with(kind);
                }
                for kind in on.iter() {
                    set = set.without(kind);
                }
                if !(off.is_empty() && on.is_empty()) {
                    self.store
                        .set_domain_notices(&domain, set, &self.actor)
                        .await?;
                }
                if set.is_empty() {
                    format!("domain {}: every security notice is sent", record.name)
                } else {
                    format!("domain {}: security notices off: {set}", record.name)
                }
            }
            DomainCommand::Admin { domain, user } => {
                self.store
                    .set_domain_admin(&domain, &user, &self.actor)
                    .await?;
                format!("{user} is an administrator of {domain}")
            }
        };
        confirm(out, self.json, &message)
    }

    async fn user(&self, command: UserCommand, out: &mut impl Write) -> anyhow::Result<()> {
        let message = match command {
            UserCommand::List { domain } => {
                let users = self.store.list_users(&domain).await?;
                return emit(out, self.json, &user_rows(&users));
            }
            UserCommand::EnrollTotp { user, secret } => {
                let secret = totp::normalize_secret(&secret).context("--secret")?;
                let record = self.store.ensure_user(&user).await?;
                let id = self
                    .store
                    .add_second_factor(record.id, FactorKind::Totp, &secret, true, &self.actor)
                    .await?;
                format!("{}: TOTP enrolled (factor {id})", record.address)
            }
            UserCommand::Reset { user } => {
                self.store.reset_user(&user, &self.actor).await?;
                format!(
                    "{user}: second factors, backup codes, app passwords and trusted browsers removed"
                )
            }
            UserCommand::Disable { user } => {
                self.store
                    .set_user_disabled(&user, true, &self.actor)
                    .await?;
                format!("{user} disabled: every mail login is refused")
            }
            UserCommand::Enable { user } => {
                self.store
                    .set_user_disabled(&user, false, &self.actor)
                    .await?;
                format!("{user} enabled")
            }
        };
        confirm(out, self.json, &message)
    }

    async fn app_password(
        &self,
        command: AppPasswordCommand,
        out: &mut impl Write,
    ) -> anyhow::Result<()> {
        match command {
            AppPasswordCommand::Create {
                user,
                name,
                scope,
                expires_days,
                networks,
            } => {
                let limits = (scope, expires_days, networks.unwrap_or_default());
                self.create_app_password(&user, &name, limits, out).await
            }
            AppPasswordCommand::List { user } => {
                let record = self.store.ensure_user(&user).await?;
                let passwords = self.store.list_app_passwords(record.id).await?;
                emit(out, self.json, &app_password_rows(&passwords)?)
            }
            AppPasswordCommand::Revoke { user, id } => {
                let record = self.store.ensure_user(&user).await?;
                match self
                    .store
                    .revoke_app_password(record.id, id, &self.actor)
                    .await
                {
                    Ok(()) => {}
                    Err(StoreError::NotFound) => bail!(
                        "{} has no app password with id {id} \
                         (see `postern admin app-password list {}`)",
                        record.address,
                        record.address
                    ),
                    Err(err) => return Err(err.into()),
                }
                confirm(
                    out,
                    self.json,
                    &format!("{}: app password {id} revoked", record.address),
                )
            }
        }
    }

    async fn create_app_password(
        &self,
        user: &str,
        name: &str,
        (scope, expires_days, networks): (Option<Scopes>, Option<i64>, SourceNetworks),
        out: &mut impl Write,
    ) -> anyhow::Result<()> {
        let name = name.trim();
        if name.is_empty() {
            bail!("--name: name the device the app password is for");
        }
        let key = InstanceKey::load_or_create(&self.config.secrets.key_file)?;
        let address = normalize_address(user)?;
        let scopes = scope.unwrap_or(Scopes::ALL);
        let expires_at = expires_days
            .map(|days| expiry_after_days(days, unix_now()))
            .transpose()?;
        let limits = AppPasswordLimits {
            scopes,
            expires_at,
            networks,
        };
        let IssuedAppPassword { id, password } =
            issue_limited_app_password(self.store, &key, &address, name, limits, &self.actor)
                .await?;
        let shown = password.display();
        if self.json {
            write_json(
                out,
                &serde_json::json!({ "id": id, "password": shown.expose() }),
            )
        } else {
            writeln!(out, "{}", shown.expose())?;
            eprintln!("app password {id} {name:?} for {address} ({scopes}); it is shown only once");
            Ok(())
        }
    }

    async fn session(&self, command: SessionCommand, out: &mut impl Write) -> anyhow::Result<()> {
        match command {
            SessionCommand::List => {
                let sessions = self.store.list_sessions().await?;
                emit(out, self.json, &session_rows(&sessions)?)
            }
            SessionCommand::Kill { user } => {
                let address = normalize_address(&user)?;
                let live = self
                    .store
                    .list_sessions()
                    .await?
                    .iter()
                    .filter(|s| s.user_address == address)
                    .count();
                let event = self
                    .store
                    .append_event(EventKind::SessionKill, None, Some(&address), None)
                    .await?;
                self.store
                    .audit(
                        &self.actor,
                        "session.kill",
                        &address,
                        &format!("event={event}"),
                        None,
                    )
                    .await?;
                confirm(
                    out,
                    self.json,
                    &format!(
                        "{address}: session kill requested (event {event}); \
                         every node running `postern serve` ends the user's sessions \
                         within 1 s ({live} listed now)"
                    ),
                )
            }
        }
    }
}

/// The first line of `input` without its line ending; an empty one is refused.
fn read_password_line(input: &mut impl BufRead) -> anyhow::Result<Secret<String>> {
    let mut buffer = String::new();
    let read = input.read_line(&mut buffer);
    let keep = buffer.trim_end_matches(['\r', '\n']).len();
    buffer.truncate(keep);
    // The secret wipes the whole buffer (spare capacity included) when dropped.
    let line = Secret::new(buffer);
    read.context("cannot read the password from stdin")?;
    if line.expose().is_empty() {
        bail!("empty password: write the password on the first line of stdin");
    }
    Ok(line)
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// Unix seconds as an RFC 3339 UTC time.
fn rfc3339(unix: i64) -> anyhow::Result<String> {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .ok_or_else(|| anyhow!("stored time {unix} is out of range"))
}

fn rfc3339_opt(unix: Option<i64>) -> anyhow::Result<Option<String>> {
    unix.map(rfc3339).transpose()
}

/// A cell for an optional value: `-` when absent.
fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

// ---- output ----------------------------------------------------------------------

/// One row of a listing: serialised as is for `--json`, as cells under `HEADERS`
/// for text.
trait Row: Serialize {
    const HEADERS: &'static [&'static str];
    fn cells(&self) -> Vec<String>;
}

/// Prints a listing: a JSON array, or an aligned table with a header.
fn emit<R: Row>(out: &mut impl Write, json: bool, rows: &[R]) -> anyhow::Result<()> {
    if json {
        return write_json(out, rows);
    }
    let cells: Vec<Vec<String>> = rows.iter().map(Row::cells).collect();
    let mut widths: Vec<usize> = R::HEADERS.iter().map(|h| h.chars().count()).collect();
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = R::HEADERS.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(&cells) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// One confirmation line for a change (`--json`: `{"ok": true, "message": ...}`).
fn confirm(out: &mut impl Write, json: bool, message: &str) -> anyhow::Result<()> {
    if json {
        write_json(out, &serde_json::json!({ "ok": true, "message": message }))
    } else {
        writeln!(out, "{message}")?;
        Ok(())
    }
}

fn write_json<T: Serialize + ?Sized>(out: &mut impl Write, value: &T) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

#[derive(Serialize)]
struct DomainRow {
    domain: String,
    feature: bool,
    status: DomainStatus,
    grace_until: Option<String>,
    /// The security notices turned off (`domain notices`).
    notices_off: Vec<&'static str>,
}

impl Row for DomainRow {
    const HEADERS: &'static [&'static str] =
        &["DOMAIN", "FEATURE", "STATUS", "GRACE UNTIL", "NOTICES OFF"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.domain.clone(),
            on_off(self.feature).to_owned(),
            self.status.to_string(),
            or_dash(self.grace_until.as_deref()),
            if self.notices_off.is_empty() {
                "-".to_owned()
            } else {
                self.notices_off.join(",")
            },
        ]
    }
}

fn domain_rows(domains: &[DomainRecord]) -> anyhow::Result<Vec<DomainRow>> {
    domains
        .iter()
        .map(|d| {
            Ok(DomainRow {
                domain: d.name.clone(),
                feature: d.feature,
                status: d.status,
                grace_until: rfc3339_opt(d.grace_until)?,
                notices_off: d.notices_off.iter().map(|k| k.as_str()).collect(),
            })
        })
        .collect()
}

#[derive(Serialize)]
struct UserRow {
    user: String,
    enrolled: bool,
    disabled: bool,
    domain_admin: bool,
    app_passwords: i64,
}

impl Row for UserRow {
    const HEADERS: &'static [&'static str] = &[
        "USER",
        "ENROLLED",
        "DISABLED",
        "DOMAIN ADMIN",
        "APP PASSWORDS",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.user.clone(),
            yes_no(self.enrolled),
            yes_no(self.disabled),
            yes_no(self.domain_admin),
            self.app_passwords.to_string(),
        ]
    }
}

fn user_rows(users: &[UserSummary]) -> Vec<UserRow> {
    users
        .iter()
        .map(|u| UserRow {
            user: u.address.clone(),
            enrolled: u.enrolled,
            disabled: u.disabled,
            domain_admin: u.domain_admin,
            app_passwords: u.app_passwords,
        })
        .collect()
}

#[derive(Serialize)]
struct AppPasswordRow {
    id: i64,
    name: String,
    scopes: Vec<Protocol>,
    /// Empty: anywhere.
    networks: Vec<String>,
    created_at: String,
    expires_at: Option<String>,
    last_used_at: Option<String>,
    last_used_ip: Option<String>,
    last_used_protocol: Option<String>,
}

impl Row for AppPasswordRow {
    const HEADERS: &'static [&'static str] = &[
        "ID",
        "NAME",
        "SCOPES",
        "CREATED",
        "EXPIRES",
        "LAST USED",
        "LAST IP",
        "LAST PROTOCOL",
        "NETWORKS",
    ];
    fn cells(&self) -> Vec<String> {
        let scopes: Vec<&str> = self.scopes.iter().map(|p| p.as_str()).collect();
        vec![
            self.id.to_string(),
            self.name.clone(),
            scopes.join(","),
            self.created_at.clone(),
            or_dash(self.expires_at.as_deref()),
            or_dash(self.last_used_at.as_deref()),
            or_dash(self.last_used_ip.as_deref()),
            or_dash(self.last_used_protocol.as_deref()),
            if self.networks.is_empty() {
                "anywhere".into()
            } else {
                self.networks.join(",")
            },
        ]
    }
}

fn app_password_rows(passwords: &[AppPasswordRecord]) -> anyhow::Result<Vec<AppPasswordRow>> {
    passwords
        .iter()
        .map(|p| {
            Ok(AppPasswordRow {
                id: p.id,
                name: p.name.clone(),
                scopes: p.scopes.protocols().collect(),
                networks: p
                    .networks
                    .networks()
                    .iter()
                    .map(|n| n.to_string())
                    .collect(),
                created_at: rfc3339(p.created_at)?,
                expires_at: rfc3339_opt(p.expires_at)?,
                last_used_at: rfc3339_opt(p.last_used_at)?,
                last_used_ip: p.last_used_ip.clone(),
                last_used_protocol: p.last_used_protocol.clone(),
            })
        })
        .collect()
}

#[derive(Serialize)]
struct SessionListRow {
    id: String,
    user: String,
    protocol: Protocol,
    credential: String,
    client_ip: String,
    node: String,
    started_at: String,
}

impl Row for SessionListRow {
    const HEADERS: &'static [&'static str] = &[
        "ID",
        "USER",
        "PROTOCOL",
        "CREDENTIAL",
        "CLIENT IP",
        "NODE",
        "STARTED",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.user.clone(),
            self.protocol.to_string(),
            self.credential.clone(),
            self.client_ip.clone(),
            self.node.clone(),
            self.started_at.clone(),
        ]
    }
}

fn session_rows(sessions: &[SessionRow]) -> anyhow::Result<Vec<SessionListRow>> {
    sessions
        .iter()
        .map(|s| {
            Ok(SessionListRow {
                id: s.id.clone(),
                user: s.user_address.clone(),
                protocol: s.protocol,
                credential: s.credential.clone(),
                client_ip: s.client_ip.clone(),
                node: s.node.clone(),
                started_at: rfc3339(s.started_at)?,
            })
        })
        .collect()
}

#[derive(Serialize)]
struct AuditRow {
    at: String,
    actor: String,
    action: String,
    target: String,
    detail: String,
    ip: Option<String>,
}

impl Row for AuditRow {
    const HEADERS: &'static [&'static str] = &["AT", "ACTOR", "ACTION", "TARGET", "IP", "DETAIL"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.at.clone(),
            self.actor.clone(),
            self.action.clone(),
            self.target.clone(),
            or_dash(self.ip.as_deref()),
            self.detail.clone(),
        ]
    }
}

fn audit_rows(records: &[AuditRecord]) -> anyhow::Result<Vec<AuditRow>> {
    records
        .iter()
        .map(|r| {
            Ok(AuditRow {
                at: rfc3339(r.at)?,
                actor: r.actor.clone(),
                action: r.action.clone(),
                target: r.target.clone(),
                detail: r.detail.clone(),
                ip: r.ip.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_line_strips_the_line_ending_and_refuses_empty() {
        let mut input = "s3cret pass\r\nsecond\n".as_bytes();
        let password = read_password_line(&mut input).unwrap();
        assert_eq!(password.expose(), "s3cret pass");
        assert!(read_password_line(&mut "\n".as_bytes()).is_err());
        assert!(read_password_line(&mut "".as_bytes()).is_err());
    }

    #[test]
    fn days_are_bounded() {
        assert_eq!(days("7"), Ok(7));
        assert!(days("0").is_err());
        assert!(days("-1").is_err());
        assert!(days("x").is_err());
        assert!(days("36501").is_err());
    }

    #[test]
    fn tables_align_columns_under_the_header() {
        let rows = vec![
            UserRow {
                user: "a@example.org".into(),
                enrolled: true,
                disabled: false,
                domain_admin: false,
                app_passwords: 2,
            },
            UserRow {
                user: "longer.name@example.org".into(),
                enrolled: false,
                disabled: true,
                domain_admin: true,
                app_passwords: 0,
            },
        ];
        let mut out = Vec::new();
        emit(&mut out, false, &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let column = lines[0].find("ENROLLED").unwrap();
        assert_eq!(lines[1].find("yes"), Some(column));
        assert_eq!(lines[2].find("no"), Some(column));
    }

    #[test]
    fn since_takes_times_dates_and_durations() {
        let now = 1_700_000_000;
        assert_eq!(since_at("2024-01-02T03:04:05Z", now), Ok(1_704_164_645));
        assert_eq!(since_at("2024-01-02", now), Ok(1_704_153_600));
        assert_eq!(since_at("24h", now), Ok(now - 86_400));
        assert_eq!(since_at("7d", now), Ok(now - 7 * 86_400));
        assert_eq!(since_at("30m", now), Ok(now - 1_800));
        for bad in ["", "h", "7", "-1d", "7y", "yesterday", "2024-13-01"] {
            assert!(since_at(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_opt(None).unwrap(), None);
    }
}
