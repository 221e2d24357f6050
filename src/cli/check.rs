//! `postern check-config [--connect]`: every problem of a configuration file, one
//! line each, naming the key, so an operator can check a file before a reload or a
//! restart. Without `--connect` nothing leaves the machine and nothing is written
//! but a probe file that is removed at once; with it, each upstream, the relay and
//! the store are reached (and the store's schema compared with this binary's).
//!
//! This module reports; it never starts listeners or changes the database.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::net::tls::{self, ServerTls};
use crate::policy::Protocol;
use crate::store::{Backend, Store};

/// One problem: the key it concerns and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// A dotted key (`imap.upstream`), or `config` for the file as a whole.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

fn problem(key: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        message: message.into(),
    }
}

/// Every problem of the file at `path`; empty when it is fit for `serve`.
pub async fn check(path: &Path, connect: bool) -> Vec<Problem> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            return vec![problem(
                "config",
                format!("cannot read {}: {err}", path.display()),
            )];
        }
    };
    let config: Config = match toml::from_str(&text) {
        Ok(config) => config,
        Err(err) => return vec![parse_problem(&text, &err)],
    };
    let mut problems: Vec<Problem> = config.problems().into_iter().map(invalid).collect();
    check_listeners(&config, &mut problems);
    check_files(&config, &mut problems);
    check_store_url(&config, &mut problems);
    check_addresses(&config, &mut problems);
    if connect {
        check_reachable(&config, &mut problems).await;
    }
    problems
}

/// A validation error of [`Config`]: its text starts with the key.
fn invalid(err: ConfigError) -> Problem {
    let text = match err {
        ConfigError::Invalid(text) => text,
        other => other.to_string(),
    };
    match text.split_once(": ") {
        Some((key, message)) if !key.contains(' ') => problem(key, message),
        _ => problem("config", text),
    }
}

/// A TOML or type error, with the dotted key found from its position in the text.
fn parse_problem(text: &str, err: &toml::de::Error) -> Problem {
    let message = err.message().trim().replace('\n', " ");
    let Some(span) = err.span() else {
        return problem("config", message);
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    // The section is the last `[header]` before the error; the key is the
    // word the error points at (or starts its line).
    let mut section = String::new();
    for line in text[..start].lines() {
        let line = line.trim();
        if line.starts_with('[')
            && !line.starts_with("[[")
            && let Some(end) = line.find(']')
        {
            section = line[1..end].trim().to_owned();
        }
    }
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    let pointed = text[start..span.end.min(text.len())].trim();
    let key_name = if line.starts_with('[') {
        String::new()
    } else {
        line.split('=').next().unwrap_or("").trim().to_owned()
    };
    let key_name = if key_name.is_empty() && !pointed.starts_with('[') {
        pointed.split('=').next().unwrap_or("").trim().to_owned()
    } else {
        key_name
    };
    let key = match (section.is_empty(), key_name.is_empty()) {
        (true, true) => "config".to_owned(),
        (true, false) => key_name,
        (false, true) => section,
        (false, false) => format!("{section}.{key_name}"),
    };
    problem(key, format!("{message} (line {line_no})"))
}

/// Listeners: no address given twice (the second bind would fail at start).
fn check_listeners(config: &Config, problems: &mut Vec<Problem>) {
    let mut seen: HashMap<SocketAddr, String> = HashMap::new();
    seen.insert(config.web.listen, "web.listen".into());
    for protocol in Protocol::ALL {
        let Some(Ok(settings)) = config.protocol(protocol) else {
            continue;
        };
        let section = protocol.as_str();
        let plain = settings.listen.iter().map(|a| (*a, "listen"));
        let tls = settings.listen_tls.iter().map(|a| (*a, "listen_tls"));
        for (addr, name) in plain.chain(tls) {
            let key = format!("{section}.{name}");
            if addr.port() != 0
                && let Some(first) = seen.get(&addr)
            {
                problems.push(problem(
                    key.clone(),
                    format!("{addr} is already used by {first}"),
                ));
            }
            seen.entry(addr).or_insert(key);
        }
    }
}

/// The files: readable when present, creatable when missing; the TLS pair and
/// the CA file must load, the instance key must hold 64 hex digits.
fn check_files(config: &Config, problems: &mut Vec<Problem>) {
    tls::install_provider();
    let key_file = &config.secrets.key_file;
    if key_file.exists() {
        match std::fs::read_to_string(key_file) {
            Ok(text) => {
                let text = text.trim();
                if text.len() != 64 || hex::decode(text).is_err() {
                    problems.push(problem(
                        "secrets.key_file",
                        format!("{} does not hold 64 hex digits", key_file.display()),
                    ));
                }
            }
            Err(err) => problems.push(problem(
                "secrets.key_file",
                format!("cannot read {}: {err}", key_file.display()),
            )),
        }
    } else if let Err(message) = creatable(key_file) {
        problems.push(problem("secrets.key_file", message));
    }

    let (cert, key) = (&config.tls.cert, &config.tls.key);
    match (cert.exists(), key.exists()) {
        (true, true) => {
            for (name, path) in [("tls.cert", cert), ("tls.key", key)] {
                if let Err(err) = std::fs::File::open(path) {
                    problems.push(problem(
                        name,
                        format!("cannot read {}: {err}", path.display()),
                    ));
                }
            }
            if let Err(err) = ServerTls::load(cert, key) {
                problems.push(problem("tls.cert", err.to_string()));
            }
        }
        (false, false) => {
            // Generated self-signed at the first start.
            for (name, path) in [("tls.cert", cert), ("tls.key", key)] {
                if let Err(message) = creatable(path) {
                    problems.push(problem(name, message));
                }
            }
        }
        (true, false) => problems.push(problem(
            "tls.key",
            format!(
                "{} is missing while {} exists (a pair is generated only when both are)",
                key.display(),
                cert.display()
            ),
        )),
        (false, true) => problems.push(problem(
            "tls.cert",
            format!(
                "{} is missing while {} exists (a pair is generated only when both are)",
                cert.display(),
                key.display()
            ),
        )),
    }

    if !config.upstream_auth.ca_file.is_empty()
        && let Err(err) = tls::upstream_connector(&config.upstream_auth.ca_file)
    {
        problems.push(problem("upstream_auth.ca_file", err.to_string()));
    }
    if let Some(path) = &config.upstream_auth.master_password_file {
        match std::fs::read_to_string(path) {
            Ok(text) if text.lines().next().unwrap_or("").trim_end().is_empty() => {
                problems.push(problem(
                    "upstream_auth.master_password_file",
                    format!("{}: the first line is empty", path.display()),
                ))
            }
            Ok(_) => {}
            Err(err) => problems.push(problem(
                "upstream_auth.master_password_file",
                format!("cannot read {}: {err}", path.display()),
            )),
        }
    }
}

/// Whether a missing file could be created: its nearest existing ancestor must be
/// a folder this process can write in (tried with a probe file, removed at once).
fn creatable(path: &Path) -> Result<(), String> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut ancestor = parent.as_path();
    while !ancestor.exists() {
        match ancestor.parent() {
            Some(p) if !p.as_os_str().is_empty() => ancestor = p,
            _ => {
                ancestor = Path::new(".");
                break;
            }
        }
    }
    if !ancestor.is_dir() {
        return Err(format!(
            "cannot create {}: {} is not a folder",
            path.display(),
            ancestor.display()
        ));
    }
    tempfile::Builder::new()
        .prefix(".postern-check-")
        .tempfile_in(ancestor)
        .map(drop)
        .map_err(|err| {
            format!(
                "cannot create {}: {} is not writable: {err}",
                path.display(),
                ancestor.display()
            )
        })
}

fn check_store_url(config: &Config, problems: &mut Vec<Problem>) {
    let url = &config.store.url;
    match Backend::from_url(url) {
        None => problems.push(problem(
            "store.url",
            format!("{url:?}: expected sqlite://PATH or postgres://..."),
        )),
        Some(Backend::Sqlite) => {
            if let Some(path) = sqlite_path(url) {
                let path = Path::new(path);
                let result = if path.exists() {
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(path)
                        .map(drop)
                        .map_err(|err| format!("cannot open {} for writing: {err}", path.display()))
                } else {
                    creatable(path)
                };
                if let Err(message) = result {
                    problems.push(problem("store.url", message));
                }
            }
        }
        Some(Backend::Postgres) => {
            if url
                .split_once("://")
                .is_none_or(|(_, rest)| rest.is_empty())
            {
                problems.push(problem("store.url", format!("{url:?} names no server")));
            }
        }
    }
}

/// The file of a `sqlite:` URL; `None` for an in-memory database.
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or("");
    (!path.is_empty() && path != ":memory:" && !rest.contains("mode=memory")).then_some(path)
}

/// Addresses that are only checked at first use otherwise.
fn check_addresses(config: &Config, problems: &mut Vec<Problem>) {
    if let Err(message) = config.web.public_url() {
        problems.push(problem("web.public_url", message));
    }
    if host_port(&config.relay.smtp).is_none() {
        problems.push(problem(
            "relay.smtp",
            format!("{:?} is not host:port", config.relay.smtp),
        ));
    }
    if !config.relay.from.contains('@') {
        problems.push(problem(
            "relay.from",
            format!("{:?} is not an e-mail address", config.relay.from),
        ));
    }
}

fn host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

/// `--connect`: each upstream and the relay accept a TCP connection, and the
/// store opens with a schema this binary can serve.
async fn check_reachable(config: &Config, problems: &mut Vec<Problem>) {
    for protocol in Protocol::ALL {
        let Some(Ok(settings)) = config.protocol(protocol) else {
            continue;
        };
        let timeout = Duration::from_secs(settings.upstream_timeout_secs.clamp(1, 10));
        if let Err(message) = reach(&settings.upstream, timeout).await {
            problems.push(problem(format!("{}.upstream", protocol.as_str()), message));
        }
    }
    if let Err(message) = reach(&config.relay.smtp, Duration::from_secs(5)).await {
        problems.push(problem("relay.smtp", message));
    }
    if Backend::from_url(&config.store.url).is_none() {
        return;
    }
    let opened =
        tokio::time::timeout(Duration::from_secs(10), Store::open(&config.store.url)).await;
    match opened {
        Err(_) => problems.push(problem("store.url", "no answer within 10 s")),
        Ok(Err(err)) => problems.push(problem("store.url", err.to_string())),
        Ok(Ok(store)) => {
            match store.schema_status().await {
                Ok(status) if status.needs_newer_binary() => problems.push(problem(
                    "store.url",
                    crate::store::SchemaMismatch(status).to_string(),
                )),
                Ok(_) => {}
                Err(err) => problems.push(problem("store.url", err.to_string())),
            }
            store.close().await;
        }
    }
}

async fn reach(address: &str, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(format!("cannot connect to {address}: {err}")),
        Err(_) => Err(format!(
            "cannot connect to {address}: no answer within {} s",
            timeout.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parse_error_names_its_section_and_key() {
        let text = "[store]\nurl = \"sqlite://x.db\"\n\n[imap]\nlisten = []\nupstrem = \"x:1\"\n";
        let err = toml::from_str::<Config>(text).unwrap_err();
        let p = parse_problem(text, &err);
        assert_eq!(p.key, "imap.upstrem", "{p}");
        assert!(p.message.contains("line 6"), "{p}");
        let text = "[imap]\nlisten = [\"nonsense\"]\n";
        let err = toml::from_str::<Config>(text).unwrap_err();
        assert_eq!(parse_problem(text, &err).key, "imap.listen");
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(sqlite_path("sqlite:///var/lib/p.db"), Some("/var/lib/p.db"));
        assert_eq!(
            sqlite_path("sqlite://data/p.db?mode=rwc"),
            Some("data/p.db")
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }
}
