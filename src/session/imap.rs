//! IMAP's plug-in for the session driver.

use crate::policy::Protocol;
use crate::protocol::imap::server::{ImapPreAuth, MIN_MESSAGE_CAP};
use crate::protocol::imap::upstream::ImapUpstreamLogin;
use crate::protocol::line::Options;
use crate::protocol::upstream::{UpstreamRequest, UpstreamStep};

use super::{ProtocolHandler, UpstreamCore};

pub struct Imap;

impl UpstreamCore for ImapUpstreamLogin {
    fn feed(&mut self, bytes: &[u8]) {
        ImapUpstreamLogin::feed(self, bytes)
    }
    fn next_step(&mut self) -> Option<UpstreamStep> {
        ImapUpstreamLogin::next_step(self)
    }
}

impl ProtocolHandler for Imap {
    type Client = ImapPreAuth;
    type Upstream = ImapUpstreamLogin;

    fn protocol(&self) -> Protocol {
        Protocol::Imap
    }

    /// The configured line cap, raised to what RFC 2971 lets an ID command
    /// occupy before login ([`MIN_MESSAGE_CAP`]).
    fn client_core(&self, options: Options) -> ImapPreAuth {
        ImapPreAuth::new(Options {
            max_line: options.max_line.max(MIN_MESSAGE_CAP),
            ..options
        })
    }

    fn upstream_core(&self, client: &ImapPreAuth, request: UpstreamRequest) -> ImapUpstreamLogin {
        // The driver asks only after `Action::Login`, when the core holds the
        // client's tag; a tag of postern's own keeps the upstream answer tagged
        // for the client otherwise.
        ImapUpstreamLogin::new(request, client.login_tag().unwrap_or("a1"))
    }

    fn goodbye(&self, reason: &str) -> Vec<u8> {
        format!("* BYE [ALERT] {reason}\r\n").into_bytes()
    }

    fn timeout_goodbye(&self) -> Vec<u8> {
        b"* BYE Autologout; too long without logging in\r\n".to_vec()
    }

    /// RFC 5530 §3: UNAVAILABLE, a temporary failure.
    fn shutdown_goodbye(&self, reason: &str) -> Vec<u8> {
        format!("* BYE [UNAVAILABLE] {reason}\r\n").into_bytes()
    }
}
