//! POP3's plug-in for the session driver.

use crate::policy::Protocol;
use crate::protocol::line::Options;
use crate::protocol::pop3::server::Pop3PreAuth;
use crate::protocol::pop3::upstream::Pop3UpstreamLogin;
use crate::protocol::upstream::{UpstreamRequest, UpstreamStep};

use super::{ProtocolHandler, UpstreamCore};

pub struct Pop3;

impl UpstreamCore for Pop3UpstreamLogin {
    fn feed(&mut self, bytes: &[u8]) {
        Pop3UpstreamLogin::feed(self, bytes)
    }
    fn next_step(&mut self) -> Option<UpstreamStep> {
        Pop3UpstreamLogin::next_step(self)
    }
}

impl ProtocolHandler for Pop3 {
    type Client = Pop3PreAuth;
    type Upstream = Pop3UpstreamLogin;

    fn protocol(&self) -> Protocol {
        Protocol::Pop3
    }

    fn client_core(&self, options: Options) -> Pop3PreAuth {
        Pop3PreAuth::new(options)
    }

    fn upstream_core(&self, _client: &Pop3PreAuth, request: UpstreamRequest) -> Pop3UpstreamLogin {
        Pop3UpstreamLogin::new(request)
    }

    fn goodbye(&self, reason: &str) -> Vec<u8> {
        format!("-ERR [AUTH] {}\r\n", one_line(reason)).into_bytes()
    }

    fn timeout_goodbye(&self) -> Vec<u8> {
        b"-ERR Autologout; too long without logging in\r\n".to_vec()
    }

    /// RFC 3206 §4: SYS/TEMP, a temporary system failure.
    fn shutdown_goodbye(&self, reason: &str) -> Vec<u8> {
        format!("-ERR [SYS/TEMP] {}\r\n", one_line(reason)).into_bytes()
    }
}

/// A reason as one protocol line: no CR, LF or NUL.
pub(crate) fn one_line(reason: &str) -> String {
    reason
        .chars()
        .map(|c| {
            if matches!(c, '\r' | '\n' | '\0') {
                ' '
            } else {
                c
            }
        })
        .collect()
}
