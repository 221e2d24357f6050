//! postern's own IMAP login to the protected server (RFC 9051 §6.2), without I/O.
//!
//! Greeting → optional STARTTLS → `ID` with the client's address (RFC 2971; Dovecot
//! honours `x-originating-ip` from `login_trusted_networks`) pipelined with
//! `AUTHENTICATE PLAIN` (SASL-IR when the greeting advertises it, else one
//! continuation). The login is sent under the client's own tag, so the server's
//! tagged OK (often carrying `[CAPABILITY ...]`) is handed to the client verbatim.

use imap_codec::fragmentizer::FragmentInfo;

use super::framer::Framer;
use crate::protocol::upstream::{UpstreamRequest, UpstreamStep, log_safe};

/// Cap on one upstream response line during login.
const MAX_RESPONSE: u32 = 64 * 1024;

enum State {
    Greeting,
    StartTls,
    /// TLS is up: the login goes out next.
    AfterTls,
    /// Waiting for the tagged answer to the login (and maybe a `+` first).
    Login {
        continuation_sent: bool,
    },
    Finished,
}

pub struct ImapUpstreamLogin {
    request: UpstreamRequest,
    /// The client's tag, reused for the login command.
    tag: String,
    framer: Framer,
    state: State,
    sasl_ir: bool,
}

impl ImapUpstreamLogin {
    pub fn new(request: UpstreamRequest, client_tag: &str) -> Self {
        Self {
            request,
            tag: client_tag.to_owned(),
            framer: Framer::new(MAX_RESPONSE),
            state: State::Greeting,
            sasl_ir: false,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.framer.push(bytes);
    }

    /// The next step; `None` when the core needs more upstream bytes.
    pub fn next_step(&mut self) -> Option<UpstreamStep> {
        if matches!(self.state, State::AfterTls) {
            self.state = State::Login {
                continuation_sent: false,
            };
            return Some(UpstreamStep::Send(self.login_commands()));
        }
        loop {
            if matches!(self.state, State::Finished) {
                return None;
            }
            let fragment = self.framer.progress()?;
            if !matches!(fragment, FragmentInfo::Line { .. }) || !self.framer.is_message_complete()
            {
                continue;
            }
            if self.framer.is_too_long() {
                return Some(self.fail("response line too long".into()));
            }
            let line = self.framer.message().to_vec();
            if let Some(step) = self.on_line(&line) {
                return Some(step);
            }
        }
    }

    fn fail(&mut self, detail: String) -> UpstreamStep {
        self.state = State::Finished;
        UpstreamStep::Failed { detail }
    }

    fn login_commands(&self) -> Vec<u8> {
        let client = self.request.client;
        let mut out = format!(
            "p1 ID (\"x-originating-ip\" \"{}\" \"x-originating-port\" \"{}\" \"name\" \"postern\")\r\n",
            client.ip(),
            client.port()
        )
        .into_bytes();
        out.extend_from_slice(self.tag.as_bytes());
        out.extend_from_slice(b" AUTHENTICATE PLAIN");
        if self.sasl_ir {
            out.push(b' ');
            out.extend_from_slice(
                self.request
                    .credentials
                    .plain_response()
                    .expose()
                    .as_bytes(),
            );
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    fn on_line(&mut self, line: &[u8]) -> Option<UpstreamStep> {
        match self.state {
            State::Greeting => {
                if line.starts_with(b"* OK") || line.starts_with(b"* ok") {
                    self.sasl_ir = has_capability(line, b"SASL-IR");
                    if self.request.starttls {
                        self.state = State::StartTls;
                        return Some(UpstreamStep::Send(b"p0 STARTTLS\r\n".to_vec()));
                    }
                    self.state = State::Login {
                        continuation_sent: false,
                    };
                    Some(UpstreamStep::Send(self.login_commands()))
                } else {
                    Some(self.fail(format!("unexpected greeting: {}", log_safe(line))))
                }
            }
            State::StartTls => {
                if line.starts_with(b"* ") {
                    return None;
                }
                if starts_with_tagged(line, b"p0", b"OK") {
                    // Capabilities may change under TLS and were not re-read:
                    // use the form without an initial response.
                    self.sasl_ir = false;
                    self.state = State::AfterTls;
                    // Nothing received in plain text may be read as if it came
                    // through TLS.
                    self.framer = Framer::new(MAX_RESPONSE);
                    return Some(UpstreamStep::StartTls);
                }
                Some(self.fail(format!("STARTTLS refused: {}", log_safe(line))))
            }
            State::Login { continuation_sent } => {
                if line.starts_with(b"+") {
                    if continuation_sent || self.sasl_ir {
                        return Some(self.fail("unexpected continuation".into()));
                    }
                    self.state = State::Login {
                        continuation_sent: true,
                    };
                    let mut out = self
                        .request
                        .credentials
                        .plain_response()
                        .expose()
                        .as_bytes()
                        .to_vec();
                    out.extend_from_slice(b"\r\n");
                    return Some(UpstreamStep::Send(out));
                }
                if !starts_with_tagged(line, self.tag.as_bytes(), b"") {
                    // Untagged data and the ID exchange are postern's business only.
                    return None;
                }
                self.state = State::Finished;
                let status = &line[self.tag.len() + 1..];
                if status.len() >= 2 && status[..2].eq_ignore_ascii_case(b"OK") {
                    let leftover =
                        std::mem::replace(&mut self.framer, Framer::new(0)).into_unconsumed();
                    Some(UpstreamStep::LoggedIn {
                        client_reply: line.to_vec(),
                        leftover,
                    })
                } else if status.len() >= 2
                    && status[..2].eq_ignore_ascii_case(b"NO")
                    && !contains(status, b"[UNAVAILABLE]")
                    && !contains(status, b"[SERVERBUG]")
                {
                    Some(UpstreamStep::Refused {
                        detail: log_safe(status),
                    })
                } else {
                    Some(UpstreamStep::Failed {
                        detail: log_safe(status),
                    })
                }
            }
            State::AfterTls | State::Finished => None,
        }
    }
}

/// `TAG SP STATUS` at the start of a line (case-insensitive status).
fn starts_with_tagged(line: &[u8], tag: &[u8], status: &[u8]) -> bool {
    line.len() > tag.len()
        && line.starts_with(tag)
        && line[tag.len()] == b' '
        && line[tag.len() + 1..]
            .get(..status.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(status))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Whether a greeting's `[CAPABILITY ...]` code lists `name`.
fn has_capability(greeting: &[u8], name: &[u8]) -> bool {
    let Some(start) = greeting
        .windows(12)
        .position(|w| w.eq_ignore_ascii_case(b"[CAPABILITY "))
    else {
        return false;
    };
    let rest = &greeting[start + 12..];
    let end = rest.iter().position(|b| *b == b']').unwrap_or(rest.len());
    rest[..end]
        .split(|b| *b == b' ')
        .any(|cap| cap.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::upstream::fixtures::{
        MASTER_PLAIN as PLAIN, master_request as request, sent,
    };

    #[test]
    fn sasl_ir_login_with_id_in_one_round_trip() {
        let mut core = ImapUpstreamLogin::new(request(false), "a1");
        assert_eq!(core.next_step(), None);
        core.feed(b"* OK [CAPABILITY IMAP4rev1 SASL-IR ID AUTH=PLAIN] Dovecot ready.\r\n");
        let out = sent(core.next_step());
        assert_eq!(
            out,
            format!(
                "p1 ID (\"x-originating-ip\" \"192.0.2.7\" \"x-originating-port\" \"50000\" \"name\" \"postern\")\r\na1 AUTHENTICATE PLAIN {PLAIN}\r\n"
            )
        );
        core.feed(b"* ID NIL\r\np1 OK ID completed.\r\na1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n* 3 EXISTS");
        assert_eq!(
            core.next_step(),
            Some(UpstreamStep::LoggedIn {
                client_reply: b"a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n".to_vec(),
                leftover: b"* 3 EXISTS".to_vec(),
            })
        );
    }

    #[test]
    fn continuation_when_no_sasl_ir_and_refusal() {
        let mut core = ImapUpstreamLogin::new(request(false), "x");
        core.feed(b"* OK ready\r\n");
        assert!(sent(core.next_step()).ends_with("x AUTHENTICATE PLAIN\r\n"));
        core.feed(b"p1 OK\r\n+ \r\n");
        assert_eq!(sent(core.next_step()), format!("{PLAIN}\r\n"));
        core.feed(b"x NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
        assert!(matches!(
            core.next_step(),
            Some(UpstreamStep::Refused { .. })
        ));
    }

    #[test]
    fn starttls_then_login_and_plaintext_leftovers_are_dropped() {
        let mut core = ImapUpstreamLogin::new(request(true), "a");
        core.feed(b"* OK [CAPABILITY IMAP4rev1 SASL-IR STARTTLS] hi\r\n");
        assert_eq!(sent(core.next_step()), "p0 STARTTLS\r\n");
        core.feed(b"p0 OK Begin TLS\r\na OK injected\r\n");
        assert_eq!(core.next_step(), Some(UpstreamStep::StartTls));
        assert!(sent(core.next_step()).ends_with("a AUTHENTICATE PLAIN\r\n"));
        assert_eq!(core.next_step(), None);
    }

    #[test]
    fn unavailable_and_bad_greetings_are_temporary() {
        let mut core = ImapUpstreamLogin::new(request(false), "a");
        core.feed(b"* BYE too busy\r\n");
        assert!(matches!(
            core.next_step(),
            Some(UpstreamStep::Failed { .. })
        ));
        let mut core = ImapUpstreamLogin::new(request(false), "a");
        core.feed(b"* OK [CAPABILITY SASL-IR] x\r\n");
        sent(core.next_step());
        core.feed(b"a NO [UNAVAILABLE] backend down\r\n");
        assert!(matches!(
            core.next_step(),
            Some(UpstreamStep::Failed { .. })
        ));
    }
}
