//! The TOML configuration: one file, every key documented in
//! `config/postern.toml`, defaults in code, unknown keys refused by name.
//!
//! This module only parses and validates; it opens no socket and reads no other
//! file (secrets files are read by their owners at start).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::policy::Protocol;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where postern keeps domains, users, app passwords and the event log.
    #[serde(default)]
    pub store: StoreConfig,
    /// Key material for keyed hashes and cookies.
    #[serde(default)]
    pub secrets: SecretsConfig,
    /// The certificate postern presents on TLS listeners and after STARTTLS.
    #[serde(default)]
    pub tls: TlsConfig,
    /// The web UI and JSON API.
    #[serde(default)]
    pub web: WebConfig,
    /// IMAP listeners and upstream; left out: IMAP is off.
    pub imap: Option<ProtocolConfig>,
    /// POP3 listeners and upstream; left out: POP3 is off.
    pub pop3: Option<ProtocolConfig>,
    /// SMTP submission listeners and upstream; left out: submission is off.
    pub smtp: Option<ProtocolConfig>,
    /// How postern logs in upstream for users who present an app password.
    #[serde(default)]
    pub upstream_auth: UpstreamAuthConfig,
    /// Abuse limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// PROXY protocol v1/v2 on the mail listeners.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocolConfig,
    /// The SMTP relay that sends recovery e-mail codes and security notices.
    #[serde(default)]
    pub relay: RelayConfig,
    /// Log output.
    #[serde(default)]
    pub log: LogConfig,
    /// Cluster identity.
    #[serde(default)]
    pub node: NodeConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://data/postern.db` or `postgres://user@host/db`.
    pub url: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://data/postern.db".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    /// 32 random bytes (hex) for keyed hashes and cookies; generated if missing.
    /// Every node of a cluster must share the same file.
    pub key_file: PathBuf,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self {
            key_file: "data/postern.key".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; with `key`, generated self-signed if both are missing.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Seconds a TLS handshake may take.
    pub handshake_timeout_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: "certs/postern.crt".into(),
            key: "certs/postern.key".into(),
            handshake_timeout_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Address of the web UI, JSON API, `/metrics` and `/healthz`.
    pub listen: SocketAddr,
    /// Public base URL used in links; `https://` sets the Secure cookie flag
    /// and `Strict-Transport-Security`.
    pub public_url: Option<String>,
    /// When set, `/metrics` answers only requests carrying
    /// `Authorization: Bearer <metrics_token>` (401 otherwise).
    pub metrics_token: Option<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            metrics_token: None,
        }
    }
}

/// How postern talks to an upstream server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    /// Plain TCP (a trusted network, typically loopback).
    None,
    /// Plain TCP, then STARTTLS / STLS before logging in.
    Starttls,
    /// TLS from the first byte.
    Implicit,
}

/// How the SMTP upstream is told who the user is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpUpstreamLogin {
    /// SASL AUTH as the user (passthrough) or with the master account.
    Auth,
    /// Postfix `XCLIENT LOGIN=... ADDR=...` (needs `smtpd_authorized_xclient_hosts`).
    Xclient,
}

/// One protocol section as written in the file; [`ProtocolConfig::resolve`] fills
/// the per-protocol defaults.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProtocolConfig {
    /// Plain listeners that offer STARTTLS/STLS.
    pub listen: Option<Vec<SocketAddr>>,
    /// Implicit-TLS listeners.
    pub listen_tls: Option<Vec<SocketAddr>>,
    /// `host:port` of the server postern protects.
    pub upstream: Option<String>,
    /// none | starttls | implicit.
    pub upstream_tls: Option<UpstreamTls>,
    /// Name to verify the upstream certificate against; defaults to the upstream host.
    pub upstream_tls_name: Option<String>,
    /// Accept logins before TLS on plain listeners.
    pub allow_plaintext_auth: Option<bool>,
    /// SMTP only: auth | xclient.
    pub upstream_login: Option<SmtpUpstreamLogin>,
    /// Seconds to connect and log in upstream.
    pub upstream_timeout_secs: Option<u64>,
    /// SMTP only: postern's name in its greeting and EHLO reply.
    pub hostname: Option<String>,
}

/// A protocol section with every default applied.
#[derive(Debug, Clone)]
pub struct ProtocolSettings {
    pub protocol: Protocol,
    pub listen: Vec<SocketAddr>,
    pub listen_tls: Vec<SocketAddr>,
    pub upstream: String,
    pub upstream_tls: UpstreamTls,
    pub upstream_tls_name: String,
    pub allow_plaintext_auth: bool,
    pub upstream_login: SmtpUpstreamLogin,
    pub upstream_timeout_secs: u64,
    /// Name in the SMTP greeting and EHLO reply (the machine's name by default).
    pub hostname: String,
}

impl ProtocolConfig {
    fn resolve(&self, protocol: Protocol) -> Result<ProtocolSettings, ConfigError> {
        let (plain, tls, upstream) = match protocol {
            Protocol::Imap => (1143, 1993, "127.0.0.1:143"),
            Protocol::Pop3 => (1110, 1995, "127.0.0.1:110"),
            Protocol::Smtp => (1587, 1465, "127.0.0.1:587"),
        };
        let section = protocol.as_str();
        if protocol != Protocol::Smtp && self.upstream_login.is_some() {
            return Err(ConfigError::Invalid(format!(
                "{section}.upstream_login: only the [smtp] section has this key"
            )));
        }
        if protocol != Protocol::Smtp && self.hostname.is_some() {
            return Err(ConfigError::Invalid(format!(
                "{section}.hostname: only the [smtp] section has this key"
            )));
        }
        if let Some(name) = &self.hostname
            && (name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b)))
        {
            return Err(ConfigError::Invalid(format!(
                "{section}.hostname: {name:?} is not a host name"
            )));
        }
        let upstream = self.upstream.clone().unwrap_or_else(|| upstream.into());
        let host = upstream_host(&upstream).ok_or_else(|| {
            ConfigError::Invalid(format!("{section}.upstream: {upstream:?} is not host:port"))
        })?;
        Ok(ProtocolSettings {
            protocol,
            listen: self
                .listen
                .clone()
                .unwrap_or_else(|| vec![SocketAddr::from(([127, 0, 0, 1], plain))]),
            listen_tls: self
                .listen_tls
                .clone()
                .unwrap_or_else(|| vec![SocketAddr::from(([127, 0, 0, 1], tls))]),
            upstream_tls_name: self.upstream_tls_name.clone().unwrap_or(host),
            upstream,
            upstream_tls: self.upstream_tls.unwrap_or(UpstreamTls::None),
            allow_plaintext_auth: self.allow_plaintext_auth.unwrap_or(false),
            upstream_login: self.upstream_login.unwrap_or(SmtpUpstreamLogin::Auth),
            upstream_timeout_secs: self.upstream_timeout_secs.unwrap_or(10),
            hostname: self.hostname.clone().unwrap_or_else(machine_name),
        })
    }
}

/// This machine's name (from the kernel), or `postern` if it has none usable.
pub fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
        })
        .unwrap_or_else(|| "postern".into())
}

/// The host part of `host:port` or `[v6]:port`, if the port is a number.
fn upstream_host(upstream: &str) -> Option<String> {
    let (host, port) = upstream.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| host.to_owned())
}

impl WebConfig {
    /// `public_url` parsed: an `https://` or `http://` URL with a host. The
    /// error says what is wrong with it (`check-config` shows it).
    pub fn public_url(&self) -> Result<Option<url::Url>, String> {
        let Some(text) = &self.public_url else {
            return Ok(None);
        };
        let expected = || format!("{text:?}: expected https://HOST or http://HOST");
        let url = url::Url::parse(text.trim()).map_err(|_| expected())?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err(expected());
        }
        Ok(Some(url))
    }
}

/// How postern logs in upstream on behalf of an app-password user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MasterMode {
    /// SASL PLAIN with authorization identity = the user, master credentials.
    Master,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamAuthConfig {
    /// Only `master` for now.
    pub mode: MasterMode,
    /// The upstream's master account.
    pub master_user: String,
    /// Its password (prefer `master_password_file`).
    pub master_password: Option<String>,
    /// A file holding the master password (first line).
    pub master_password_file: Option<PathBuf>,
    /// PEM CA bundle to verify upstream TLS; system roots if empty.
    pub ca_file: String,
}

impl Default for UpstreamAuthConfig {
    fn default() -> Self {
        Self {
            mode: MasterMode::Master,
            master_user: "proxy".into(),
            master_password: None,
            master_password_file: None,
            ca_file: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// CIDRs exempt from login penalties (e.g. webmail hosts).
    pub trusted_networks: Vec<IpNet>,
    /// Longest command line or literal accepted before login, in bytes. IMAP
    /// never goes below 64 KiB: the largest ID command RFC 2971 allows must fit.
    pub max_line_bytes: usize,
    /// Invalid commands before login before the connection is closed.
    pub max_bad_commands: u32,
    /// Seconds a client may take to log in.
    pub prelogin_timeout_secs: u64,
    /// Idle seconds after login before the session is closed (0: never).
    pub idle_timeout_secs: u64,
    /// Open connections from one client network (an IPv4 address, an IPv6
    /// /64): a ceiling for a whole office behind one NAT address.
    pub max_connections_per_ip: usize,
    /// Logged-in sessions of one user from one client network, on this node,
    /// all protocols together (Dovecot's `mail_max_userip_connections`).
    pub max_connections_per_user_ip: usize,
    /// Open connections in all.
    pub max_connections: usize,
    /// System administrators' password checks (Argon2id) running at once;
    /// others queue. App passwords need none.
    pub argon2_parallelism: usize,
    /// Threads that serve connections (sessions, TLS, the relay); defaults to
    /// the CPU count. Fewer leave cores to a mail server on the same machine
    /// and cost less CPU per login; Argon2 runs on threads of its own.
    pub worker_threads: usize,
    /// Seconds SIGTERM lets live sessions (and web requests in flight) finish
    /// before saying goodbye; clients not logged in are told at once.
    pub drain_secs: u64,
    /// No refused mail login is answered sooner than this many milliseconds
    /// after its command, so a refusal postern decides and one the upstream
    /// decides (with its own failure delay) take the same time (0: off).
    pub refusal_floor_ms: u64,
    /// Seconds a device's successful login is remembered, so its next
    /// connections skip the database (0: off; every login reads the store).
    pub login_cache_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            trusted_networks: Vec::new(),
            max_line_bytes: 8192,
            max_bad_commands: 3,
            prelogin_timeout_secs: 60,
            idle_timeout_secs: 1800,
            max_connections_per_ip: 1000,
            max_connections_per_user_ip: 20,
            max_connections: 20_000,
            argon2_parallelism: cpu_count(),
            worker_threads: cpu_count(),
            drain_secs: 30,
            // Dovecot's `auth_failure_delay` default, the upstream most deployments have.
            refusal_floor_ms: 2000,
            login_cache_secs: 30,
        }
    }
}

/// The default of `argon2_parallelism` and `worker_threads`.
fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}
/// More threads than this serve no machine postern runs on; a typo (an extra
/// zero) is refused instead of starting thousands of threads.
const MAX_WORKER_THREADS: usize = 1024;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolConfig {
    /// CIDRs allowed to send a PROXY v1/v2 header; empty: none.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// `host:port` of an SMTP server that accepts mail from postern; spoken to in
    /// plain SMTP without authentication (a loopback or private-network relay).
    pub smtp: String,
    /// Sender address of recovery codes and security notices.
    pub from: String,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            smtp: "127.0.0.1:25".into(),
            from: "postern@localhost".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// text | json.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter such as `info` or `postern=debug`; `RUST_LOG` wins.
    #[serde(default)]
    pub level: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's name in `session list`; defaults to the host name.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(&text).map_err(|err| match err {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates a configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: PathBuf::new(),
            message: err.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Every value that cannot be served, each naming its key (`check-config`
    /// prints them all; [`Config::parse`] refuses the first).
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        for protocol in Protocol::ALL {
            if let Some(Err(err)) = self.protocol(protocol) {
                problems.push(err);
            }
        }
        if self.upstream_auth.master_password.is_some()
            && self.upstream_auth.master_password_file.is_some()
        {
            problems.push(ConfigError::Invalid(
                "upstream_auth: set master_password or master_password_file, not both".into(),
            ));
        }
        if self.limits.max_line_bytes < 512 {
            problems.push(ConfigError::Invalid(
                "limits.max_line_bytes: at least 512".into(),
            ));
        }
        if self.limits.argon2_parallelism == 0 {
            problems.push(ConfigError::Invalid(
                "limits.argon2_parallelism: at least 1".into(),
            ));
        }
        if !(1..=MAX_WORKER_THREADS).contains(&self.limits.worker_threads) {
            problems.push(ConfigError::Invalid(format!(
                "limits.worker_threads: 1 to {MAX_WORKER_THREADS}"
            )));
        }
        problems
    }

    /// The settings of one protocol, or `None` when its section is left out.
    pub fn protocol(&self, protocol: Protocol) -> Option<Result<ProtocolSettings, ConfigError>> {
        let section = match protocol {
            Protocol::Imap => self.imap.as_ref(),
            Protocol::Pop3 => self.pop3.as_ref(),
            Protocol::Smtp => self.smtp.as_ref(),
        }?;
        Some(section.resolve(protocol))
    }

    /// The master password, from the file if one is named.
    pub fn master_password(&self) -> Result<Option<crate::secret::Secret<String>>, ConfigError> {
        if let Some(path) = &self.upstream_auth.master_password_file {
            let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                path: path.clone(),
                error,
            })?;
            let first = text.lines().next().unwrap_or_default().trim_end();
            return Ok(Some(crate::secret::Secret::from(first)));
        }
        Ok(self
            .upstream_auth
            .master_password
            .as_deref()
            .map(crate::secret::Secret::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_with_every_section() {
        let text = include_str!("../config/postern.toml");
        let config = Config::parse(text).expect("example config");
        let imap = config.protocol(Protocol::Imap).unwrap().unwrap();
        assert_eq!(imap.listen, vec!["127.0.0.1:1143".parse().unwrap()]);
        assert_eq!(imap.upstream_tls, UpstreamTls::None);
        assert!(config.protocol(Protocol::Pop3).is_some());
        assert!(config.protocol(Protocol::Smtp).is_some());
    }

    /// The example file shows every key with its default (or an example
    /// value, for the keys that have none): the defaults are written once, in
    /// the code, and this keeps the example from telling another story.
    #[test]
    fn the_example_file_states_the_defaults_of_the_code() {
        let example = Config::parse(include_str!("../config/postern.toml")).expect("example");
        let defaults = Config::parse("[imap]\n[pop3]\n[smtp]\n").expect("defaults");
        let show = |value: &dyn std::fmt::Debug| format!("{value:?}");
        assert_eq!(show(&example.store), show(&defaults.store));
        assert_eq!(show(&example.secrets), show(&defaults.secrets));
        assert_eq!(show(&example.tls), show(&defaults.tls));
        assert_eq!(show(&example.web), show(&defaults.web));
        assert_eq!(show(&example.limits), show(&defaults.limits));
        assert_eq!(show(&example.relay), show(&defaults.relay));
        assert_eq!(show(&example.log), show(&defaults.log));
        let (auth, default_auth) = (&example.upstream_auth, &defaults.upstream_auth);
        assert_eq!(auth.mode, default_auth.mode);
        assert_eq!(auth.master_user, default_auth.master_user);
        assert_eq!(auth.ca_file, default_auth.ca_file);
        for protocol in [Protocol::Imap, Protocol::Pop3, Protocol::Smtp] {
            let resolved = |config: &Config| show(&config.protocol(protocol).unwrap().unwrap());
            assert_eq!(resolved(&example), resolved(&defaults), "{protocol}");
        }
    }

    #[test]
    fn public_url_is_an_http_url_with_a_host() {
        let web = |url: &str| WebConfig {
            public_url: Some(url.into()),
            ..WebConfig::default()
        };
        let url = web("HTTPS://Mail.Example.org/postern/")
            .public_url()
            .unwrap();
        let url = url.expect("set");
        assert_eq!(url.scheme(), "https");
        assert_eq!(url.host_str(), Some("mail.example.org"));
        for bad in [
            "mail.example.org",
            "ftp://mail.example.org",
            "https://",
            "https:/x y",
        ] {
            let err = web(bad).public_url().unwrap_err();
            assert!(err.contains("expected https://HOST"), "{bad}: {err}");
        }
        assert_eq!(WebConfig::default().public_url(), Ok(None));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse("[imap]\nlisten = []\nupstrem = \"x:1\"\n").unwrap_err();
        assert!(err.to_string().contains("upstrem"), "{err}");
        let err = Config::parse("[nonsense]\n").unwrap_err();
        assert!(err.to_string().contains("nonsense"), "{err}");
    }

    #[test]
    fn a_left_out_protocol_is_off_and_defaults_apply() {
        let config = Config::parse("[pop3]\n").unwrap();
        assert!(config.protocol(Protocol::Imap).is_none());
        let pop3 = config.protocol(Protocol::Pop3).unwrap().unwrap();
        assert_eq!(pop3.listen_tls, vec!["127.0.0.1:1995".parse().unwrap()]);
        assert_eq!(pop3.upstream, "127.0.0.1:110");
        assert_eq!(pop3.upstream_tls_name, "127.0.0.1");
        assert_eq!(config.store.url, "sqlite://data/postern.db");
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        let err = Config::parse("[pop3]\nhostname = \"mx\"\n").unwrap_err();
        assert!(err.to_string().contains("pop3.hostname"), "{err}");
        let config = Config::parse("[smtp]\nhostname = \"mail.example.org\"\n").unwrap();
        let smtp = config.protocol(Protocol::Smtp).unwrap().unwrap();
        assert_eq!(smtp.hostname, "mail.example.org");
        let err = Config::parse("[imap]\nupstream_login = \"xclient\"\n").unwrap_err();
        assert!(err.to_string().contains("imap.upstream_login"), "{err}");
        let err = Config::parse("[imap]\nupstream = \"nohost\"\n").unwrap_err();
        assert!(err.to_string().contains("imap.upstream"), "{err}");
        let err = Config::parse("[imap]\nupstream_tls = \"sometimes\"\n").unwrap_err();
        assert!(err.to_string().contains("upstream_tls"), "{err}");
    }

    #[test]
    fn worker_threads_default_to_the_cpu_count_and_stay_in_range() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.limits.worker_threads, cpu_count());
        let config = Config::parse("[limits]\nworker_threads = 1\n").unwrap();
        assert_eq!(config.limits.worker_threads, 1);
        for bad in ["0", "1025"] {
            let err = Config::parse(&format!("[limits]\nworker_threads = {bad}\n")).unwrap_err();
            assert!(err.to_string().contains("limits.worker_threads"), "{err}");
        }
    }
}
