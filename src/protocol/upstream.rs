//! Types shared by the upstream-login cores: postern logging in to the protected
//! server on the client's behalf, without I/O.
//!
//! Each protocol's core (`imap::upstream`, `pop3::upstream`, `smtp::upstream`) is
//! fed the server's bytes and returns [`UpstreamStep`]s; the driver writes,
//! upgrades to TLS, and finally relays.

use std::net::SocketAddr;

use crate::protocol::sasl;
use crate::secret::Secret;

/// Who postern logs in as, and how.
#[derive(Debug, Clone)]
pub struct UpstreamCredentials {
    /// The user to act as: empty for a login as oneself (passthrough), the user's
    /// address for a master login.
    pub authzid: String,
    /// The account whose password is given: the user (passthrough) or the master.
    pub authcid: String,
    pub password: Secret<String>,
}

impl UpstreamCredentials {
    /// The SASL PLAIN initial response, base64 (RFC 4616).
    pub fn plain_response(&self) -> Secret<String> {
        sasl::encode_plain(&self.authzid, &self.authcid, self.password.expose())
    }

    /// The user the session belongs to.
    pub fn user(&self) -> &str {
        if self.authzid.is_empty() {
            &self.authcid
        } else {
            &self.authzid
        }
    }
}

/// What an upstream-login core needs to know.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub credentials: UpstreamCredentials,
    /// The real client, forwarded where the protocol allows (IMAP ID, XCLIENT).
    pub client: SocketAddr,
    /// Issue STARTTLS/STLS before logging in.
    pub starttls: bool,
}

/// The next thing the driver does with the upstream connection.
#[derive(Debug, PartialEq, Eq)]
pub enum UpstreamStep {
    /// Write these bytes to the upstream.
    Send(Vec<u8>),
    /// Upgrade the upstream connection to TLS now, then keep feeding the core.
    StartTls,
    /// Logged in. `client_reply` goes to the client as the answer to its login
    /// command; `leftover` are upstream bytes received after it, to relay first.
    LoggedIn {
        client_reply: Vec<u8>,
        leftover: Vec<u8>,
    },
    /// The upstream refused the credentials. `detail` is for the log only
    /// (sanitised, bounded), never for the client.
    Refused { detail: String },
    /// The upstream misbehaved or is unavailable: a temporary error for the client.
    Failed { detail: String },
}

/// Upstream text made safe for a log line: printable ASCII, at most 200 chars.
pub fn log_safe(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(200)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect::<String>()
        .trim_end_matches('?')
        .to_owned()
}

/// Shared test fixtures for the upstream-login cores.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{UpstreamCredentials, UpstreamRequest, UpstreamStep};
    use crate::secret::Secret;

    /// A master login for alice, from 192.0.2.7:50000.
    pub fn master_request(starttls: bool) -> UpstreamRequest {
        UpstreamRequest {
            credentials: UpstreamCredentials {
                authzid: "alice@example.test".into(),
                authcid: "proxy".into(),
                password: Secret::from("masterpw"),
            },
            client: "192.0.2.7:50000".parse().expect("address"),
            starttls,
        }
    }

    /// base64("alice@example.test\0proxy\0masterpw")
    pub const MASTER_PLAIN: &str = "YWxpY2VAZXhhbXBsZS50ZXN0AHByb3h5AG1hc3RlcnB3";

    /// The bytes of a `Send` step, as text.
    pub fn sent(step: Option<UpstreamStep>) -> String {
        match step {
            Some(UpstreamStep::Send(bytes)) => String::from_utf8(bytes).expect("utf-8"),
            other => panic!("{other:?}"),
        }
    }
}
