//! postern's own IMAP login to the protected server (RFC 9051 §6.2), without I/O.
//!
//! Greeting → optional STARTTLS → `ID` with the client's address (RFC 2971; Dovecot
//! honours `x-originating-ip` from `login_trusted_networks`) pipelined with
//! `AUTHENTICATE PLAIN` (SASL-IR when the greeting advertises it, else one
//! continuation). The login is sent under the client's own tag, so the server's
//! tagged OK (often carrying `[CAPABILITY ...]`) is handed to the client verbatim.

use crate::protocol::upstream::{UpstreamRequest, UpstreamStep, log_safe};

/// Cap on one upstream response (a line with its literals) during login.
const MAX_RESPONSE: usize = 64 * 1024;

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
    responses: Responses,
    state: State,
    sasl_ir: bool,
}

impl ImapUpstreamLogin {
    pub fn new(request: UpstreamRequest, client_tag: &str) -> Self {
        Self {
            request,
            tag: client_tag.to_owned(),
            responses: Responses::default(),
            state: State::Greeting,
            sasl_ir: false,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.responses.push(bytes);
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
            let Ok(line) = self.responses.next()? else {
                return Some(self.fail("response line too long".into()));
            };
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
                    self.responses = Responses::default();
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
                    let leftover = std::mem::take(&mut self.responses).into_unconsumed();
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

/// The server's responses, one whole message at a time: a line, or a line
/// ending in a literal announcement (`{N}`, RFC 9051 §4.3) with its N bytes and
/// the line after them, and so on. A message may take [`MAX_RESPONSE`] bytes.
///
/// The client's commands go through imap-codec's fragmentizer; this side only
/// reads a handful of short responses from the configured server per login, so
/// it is framed here without copying each byte twice.
#[derive(Default)]
struct Responses {
    buf: Vec<u8>,
    /// Where the current message's next line starts in `buf` (past its literals
    /// so far); may lie beyond `buf` while a literal is still arriving.
    scan: usize,
}

/// A response exceeded [`MAX_RESPONSE`].
struct TooLong;

impl Responses {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message; `None` until more bytes arrive.
    fn next(&mut self) -> Option<Result<Vec<u8>, TooLong>> {
        loop {
            if self.scan > MAX_RESPONSE {
                return Some(Err(TooLong));
            }
            let rest = self.buf.get(self.scan..)?;
            let Some(newline) = rest.iter().position(|b| *b == b'\n') else {
                return (self.buf.len() > MAX_RESPONSE).then_some(Err(TooLong));
            };
            let end = self.scan + newline + 1;
            if end > MAX_RESPONSE {
                return Some(Err(TooLong));
            }
            match literal_announced(&self.buf[self.scan..end]) {
                Some(size) => self.scan = end.saturating_add(size),
                None => {
                    self.scan = 0;
                    return Some(Ok(self.buf.drain(..end).collect()));
                }
            }
        }
    }

    /// What arrived after the last message handed out.
    fn into_unconsumed(self) -> Vec<u8> {
        self.buf
    }
}

/// The size N of a literal a line announces at its end (`{N}` or `{N+}` before
/// CRLF).
fn literal_announced(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|b| *b == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
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
    fn responses_with_literals_arrive_whole_in_any_chunks() {
        let input: &[u8] = b"* OK [CAPABILITY IMAP4rev1 SASL-IR] hi\r\n\
            * ID (\"name\" {7}\r\nDove\ncot \"os\" {3+}\r\nx}\n)\r\n\
            p1 OK ID completed.\r\n\
            a1 OK [CAPABILITY IMAP4rev1] Logged in\r\n* 1 EXISTS";
        for chunk in 1..=input.len() {
            let mut responses = Responses::default();
            let mut got = Vec::new();
            for piece in input.chunks(chunk) {
                responses.push(piece);
                while let Some(message) = responses.next() {
                    got.push(message.ok().expect("within the cap"));
                }
            }
            let got: Vec<&[u8]> = got.iter().map(Vec::as_slice).collect();
            assert_eq!(
                got,
                [
                    &b"* OK [CAPABILITY IMAP4rev1 SASL-IR] hi\r\n"[..],
                    b"* ID (\"name\" {7}\r\nDove\ncot \"os\" {3+}\r\nx}\n)\r\n",
                    b"p1 OK ID completed.\r\n",
                    b"a1 OK [CAPABILITY IMAP4rev1] Logged in\r\n",
                ],
                "chunk size {chunk}"
            );
            assert_eq!(responses.into_unconsumed(), b"* 1 EXISTS");
        }
    }

    #[test]
    fn an_endless_line_or_literal_is_too_long_without_buffering_more() {
        let mut responses = Responses::default();
        responses.push(&vec![b'x'; MAX_RESPONSE + 1]);
        assert!(matches!(responses.next(), Some(Err(TooLong))));

        let mut responses = Responses::default();
        responses.push(b"* ID (\"name\" {4294967295}\r\n");
        assert!(matches!(responses.next(), Some(Err(TooLong))));

        let mut core = ImapUpstreamLogin::new(request(false), "a");
        core.feed(b"* OK [CAPABILITY SASL-IR] x\r\n");
        sent(core.next_step());
        core.feed(b"* ID ({99999999}\r\n");
        assert!(matches!(
            core.next_step(),
            Some(UpstreamStep::Failed { .. })
        ));
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
