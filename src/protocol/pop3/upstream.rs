//! postern's own POP3 login to the protected server, without I/O.
//!
//! Greeting `+OK` (RFC 1939 §4) → optional `STLS` (RFC 2595 §4; whatever arrived
//! in plain text is dropped) → `CAPA` (RFC 2449 §5) → `XCLIENT ADDR=.. PORT=..`
//! when CAPA lists `XCLIENT` (Dovecot honours it from `login_trusted_networks`, so
//! the server logs the real client) → `AUTH PLAIN` with an initial response
//! (RFC 5034 §4, RFC 4616), or after a `+ ` continuation if the server asks for
//! one. XCLIENT and AUTH go out together when CAPA lists `PIPELINING`
//! (RFC 2449 §6.6).
//!
//! The server's `+OK` to AUTH goes to the client as the answer to its own login
//! command; the bytes after it are handed back untouched for relaying.
//!
//! `-ERR` or `-ERR [AUTH]` (RFC 3206 §4) is a refusal of the credentials; any
//! other response code (`[SYS/TEMP]`, `[SYS/PERM]`, `[IN-USE]`, `[LOGIN-DELAY]`)
//! and anything unexpected is a failure the client should retry later.

use crate::protocol::line::{Frame, LineReader};
use crate::protocol::upstream::{UpstreamRequest, UpstreamStep, log_safe};

/// Cap on one upstream response line, line ending excluded.
pub const MAX_RESPONSE_LINE: usize = 64 * 1024;
/// Cap on the number of lines in the CAPA answer.
const MAX_CAPA_LINES: usize = 256;

#[derive(Debug)]
enum State {
    Greeting,
    /// Waiting for the answer to `STLS`.
    Stls,
    /// TLS is up: `CAPA` goes out next.
    AfterTls,
    /// Reading the CAPA answer; `listing` once its `+OK` was seen.
    Capa {
        listing: bool,
        lines: usize,
    },
    /// Waiting for the answer to XCLIENT; `auth_sent` when AUTH was pipelined
    /// behind it.
    Xclient {
        auth_sent: bool,
    },
    /// Waiting for the answer to AUTH.
    Auth {
        continuation_sent: bool,
    },
    Finished,
}

/// The POP3 upstream-login core: feed it the server's bytes, follow its steps.
#[derive(Debug)]
pub struct Pop3UpstreamLogin {
    request: UpstreamRequest,
    reader: LineReader,
    state: State,
    /// CAPA lists `XCLIENT`.
    xclient: bool,
    /// CAPA lists `PIPELINING`.
    pipelining: bool,
    xclient_refused: Option<String>,
}

impl Pop3UpstreamLogin {
    pub fn new(request: UpstreamRequest) -> Self {
        Self {
            request,
            reader: LineReader::new(MAX_RESPONSE_LINE),
            state: State::Greeting,
            xclient: false,
            pipelining: false,
            xclient_refused: None,
        }
    }

    /// Takes bytes read from the upstream.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.reader.feed(bytes);
    }

    /// The next step; `None` when the core needs more upstream bytes (or is done).
    pub fn next_step(&mut self) -> Option<UpstreamStep> {
        if matches!(self.state, State::AfterTls) {
            self.state = State::Capa {
                listing: false,
                lines: 0,
            };
            return Some(UpstreamStep::Send(b"CAPA\r\n".to_vec()));
        }
        loop {
            if matches!(self.state, State::Finished) {
                return None;
            }
            let line = match self.reader.next_frame()? {
                Frame::Line(line) => line,
                Frame::TooLong => return Some(self.fail("response line too long".into())),
            };
            if let Some(step) = self.on_line(&line) {
                return Some(step);
            }
        }
    }

    /// The server's `-ERR` to XCLIENT, if it refused it (worth a log line: the
    /// upstream then sees postern's address, not the client's). The login goes on.
    pub fn xclient_refused(&self) -> Option<&str> {
        self.xclient_refused.as_deref()
    }

    fn fail(&mut self, detail: String) -> UpstreamStep {
        self.state = State::Finished;
        UpstreamStep::Failed { detail }
    }

    fn auth_command(&self) -> Vec<u8> {
        let mut out = b"AUTH PLAIN ".to_vec();
        out.extend_from_slice(
            self.request
                .credentials
                .plain_response()
                .expose()
                .as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
        out
    }

    /// After CAPA: XCLIENT (with AUTH behind it if pipelining) or AUTH alone.
    fn login_commands(&mut self) -> UpstreamStep {
        if !self.xclient {
            self.state = State::Auth {
                continuation_sent: false,
            };
            return UpstreamStep::Send(self.auth_command());
        }
        let client = self.request.client;
        let mut out = format!(
            "XCLIENT ADDR={} PORT={}\r\n",
            client.ip().to_canonical(),
            client.port()
        )
        .into_bytes();
        if self.pipelining {
            out.extend(self.auth_command());
        }
        self.state = State::Xclient {
            auth_sent: self.pipelining,
        };
        UpstreamStep::Send(out)
    }

    fn on_line(&mut self, line: &[u8]) -> Option<UpstreamStep> {
        match self.state {
            State::Greeting => {
                if !is_ok(line) {
                    return Some(self.fail(format!("unexpected greeting: {}", log_safe(line))));
                }
                if self.request.starttls {
                    self.state = State::Stls;
                    return Some(UpstreamStep::Send(b"STLS\r\n".to_vec()));
                }
                self.state = State::Capa {
                    listing: false,
                    lines: 0,
                };
                Some(UpstreamStep::Send(b"CAPA\r\n".to_vec()))
            }
            State::Stls => {
                if !is_ok(line) {
                    return Some(self.fail(format!("STLS refused: {}", log_safe(line))));
                }
                // Nothing received in plain text may be read as if it came
                // through TLS (RFC 2595 §4).
                self.reader = LineReader::new(MAX_RESPONSE_LINE);
                self.state = State::AfterTls;
                Some(UpstreamStep::StartTls)
            }
            State::Capa { listing, lines } => {
                if !listing {
                    if is_ok(line) {
                        self.state = State::Capa {
                            listing: true,
                            lines: 0,
                        };
                        return None;
                    }
                    if is_err(line) {
                        // No CAPA (RFC 1939-only server): no XCLIENT either.
                        return Some(self.login_commands());
                    }
                    return Some(self.fail(format!("unexpected CAPA answer: {}", log_safe(line))));
                }
                if line == b"." {
                    return Some(self.login_commands());
                }
                if lines >= MAX_CAPA_LINES {
                    return Some(self.fail("CAPA answer too long".into()));
                }
                self.state = State::Capa {
                    listing: true,
                    lines: lines + 1,
                };
                let name = line.split(|b| *b == b' ').next().unwrap_or_default();
                if name.eq_ignore_ascii_case(b"XCLIENT") {
                    self.xclient = true;
                } else if name.eq_ignore_ascii_case(b"PIPELINING") {
                    self.pipelining = true;
                }
                None
            }
            State::Xclient { auth_sent } => {
                if is_err(line) {
                    self.xclient_refused = Some(log_safe(line));
                } else if !is_ok(line) {
                    return Some(
                        self.fail(format!("unexpected XCLIENT answer: {}", log_safe(line))),
                    );
                }
                self.state = State::Auth {
                    continuation_sent: false,
                };
                (!auth_sent).then(|| UpstreamStep::Send(self.auth_command()))
            }
            State::Auth { continuation_sent } => {
                if is_ok(line) {
                    self.state = State::Finished;
                    let leftover =
                        std::mem::replace(&mut self.reader, LineReader::new(0)).into_rest();
                    let mut client_reply = line.to_vec();
                    client_reply.extend_from_slice(b"\r\n");
                    return Some(UpstreamStep::LoggedIn {
                        client_reply,
                        leftover,
                    });
                }
                if line == b"+" || line.starts_with(b"+ ") {
                    if continuation_sent {
                        return Some(self.fail("unexpected continuation".into()));
                    }
                    self.state = State::Auth {
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
                self.state = State::Finished;
                if is_err(line) && is_refusal(&line[4..]) {
                    Some(UpstreamStep::Refused {
                        detail: log_safe(line),
                    })
                } else {
                    Some(UpstreamStep::Failed {
                        detail: log_safe(line),
                    })
                }
            }
            State::AfterTls | State::Finished => None,
        }
    }
}

/// `+OK`, alone or followed by a space (case-insensitive, to be liberal).
fn is_ok(line: &[u8]) -> bool {
    status_is(line, b"+OK")
}

/// `-ERR`, alone or followed by a space.
fn is_err(line: &[u8]) -> bool {
    status_is(line, b"-ERR")
}

fn status_is(line: &[u8], status: &[u8]) -> bool {
    line.get(..status.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(status))
        && matches!(line.get(status.len()), None | Some(b' '))
}

/// Whether the text after `-ERR` refuses the credentials: no response code, or
/// `[AUTH]` (RFC 3206 §4). Other codes are temporary or server-side.
fn is_refusal(text: &[u8]) -> bool {
    let text = text.trim_ascii_start();
    let Some(code) = text.strip_prefix(b"[") else {
        return true;
    };
    let end = code.iter().position(|b| *b == b']').unwrap_or(code.len());
    code[..end].eq_ignore_ascii_case(b"AUTH")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::upstream::fixtures::{
        MASTER_PLAIN as PLAIN, master_request as request, sent,
    };

    const DOVECOT_CAPA: &[u8] = b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nUSER\r\nSASL PLAIN\r\nXCLIENT\r\n.\r\n";

    /// Feeds `bytes` in chunks of `chunk`, collecting every step.
    fn drive(core: &mut Pop3UpstreamLogin, bytes: &[u8], chunk: usize) -> Vec<UpstreamStep> {
        let mut steps = Vec::new();
        for part in bytes.chunks(chunk) {
            core.feed(part);
            steps.extend(std::iter::from_fn(|| core.next_step()));
        }
        steps
    }

    #[test]
    fn dovecot_transcript_at_every_split() {
        let mut server = b"+OK Dovecot ready.\r\n".to_vec();
        let greeting_len = server.len();
        server.extend_from_slice(DOVECOT_CAPA);
        let capa_end = server.len();
        server.extend_from_slice(b"+OK Updated\r\n+OK Logged in.\r\n");
        for chunk in 1..=server.len() {
            let mut core = Pop3UpstreamLogin::new(request(false));
            // The greeting alone, split at every position.
            let mut steps = drive(&mut core, &server[..greeting_len], chunk);
            assert_eq!(steps, vec![UpstreamStep::Send(b"CAPA\r\n".to_vec())]);
            steps = drive(&mut core, &server[greeting_len..capa_end], chunk);
            assert_eq!(
                steps,
                vec![UpstreamStep::Send(
                    format!("XCLIENT ADDR=192.0.2.7 PORT=50000\r\nAUTH PLAIN {PLAIN}\r\n")
                        .into_bytes()
                )],
                "chunk {chunk}"
            );
            steps = drive(&mut core, &server[capa_end..], chunk);
            assert_eq!(
                steps,
                vec![UpstreamStep::LoggedIn {
                    client_reply: b"+OK Logged in.\r\n".to_vec(),
                    leftover: Vec::new(),
                }],
                "chunk {chunk}"
            );
            assert_eq!(core.xclient_refused(), None);
        }
    }

    #[test]
    fn leftover_is_exact() {
        let mut core = Pop3UpstreamLogin::new(request(false));
        core.feed(b"+OK hi\r\n+OK\r\nSASL PLAIN\r\n.\r\n");
        assert_eq!(sent(core.next_step()), "CAPA\r\n");
        assert_eq!(sent(core.next_step()), format!("AUTH PLAIN {PLAIN}\r\n"));
        core.feed(b"+OK Logged in.\r\n+OK 2 messages\r\n\x00 partial\nline");
        assert_eq!(
            core.next_step(),
            Some(UpstreamStep::LoggedIn {
                client_reply: b"+OK Logged in.\r\n".to_vec(),
                leftover: b"+OK 2 messages\r\n\x00 partial\nline".to_vec(),
            })
        );
        assert_eq!(core.next_step(), None);
    }

    #[test]
    fn xclient_without_pipelining_waits_and_err_is_noted() {
        let mut core = Pop3UpstreamLogin::new(request(false));
        core.feed(b"+OK\r\n");
        sent(core.next_step());
        core.feed(b"+OK\r\nXCLIENT\r\n.\r\n");
        assert_eq!(
            sent(core.next_step()),
            "XCLIENT ADDR=192.0.2.7 PORT=50000\r\n"
        );
        core.feed(b"-ERR You aren't allowed to use XCLIENT\r\n");
        assert_eq!(sent(core.next_step()), format!("AUTH PLAIN {PLAIN}\r\n"));
        assert_eq!(
            core.xclient_refused(),
            Some("-ERR You aren't allowed to use XCLIENT")
        );
    }

    #[test]
    fn ipv4_mapped_client_is_sent_as_ipv4() {
        let mut request = request(false);
        request.client = "[::ffff:192.0.2.9]:1234".parse().unwrap();
        let mut core = Pop3UpstreamLogin::new(request);
        core.feed(b"+OK\r\n+OK\r\nXCLIENT\r\n.\r\n");
        sent(core.next_step());
        assert_eq!(
            sent(core.next_step()),
            "XCLIENT ADDR=192.0.2.9 PORT=1234\r\n"
        );
    }

    #[test]
    fn stls_discards_injected_plaintext() {
        let mut core = Pop3UpstreamLogin::new(request(true));
        core.feed(b"+OK ready\r\n");
        assert_eq!(sent(core.next_step()), "STLS\r\n");
        core.feed(b"+OK Begin TLS negotiation now.\r\n+OK\r\nXCLIENT\r\n.\r\n+OK injected\r\n");
        assert_eq!(core.next_step(), Some(UpstreamStep::StartTls));
        assert_eq!(sent(core.next_step()), "CAPA\r\n");
        assert_eq!(core.next_step(), None);
        core.feed(b"+OK\r\nSASL PLAIN\r\n.\r\n");
        assert_eq!(sent(core.next_step()), format!("AUTH PLAIN {PLAIN}\r\n"));
        core.feed(b"+OK Logged in.\r\n");
        assert!(matches!(
            core.next_step(),
            Some(UpstreamStep::LoggedIn { .. })
        ));
    }

    #[test]
    fn stls_refused_and_bad_greeting_fail() {
        let mut core = Pop3UpstreamLogin::new(request(true));
        core.feed(b"+OK\r\n");
        sent(core.next_step());
        core.feed(b"-ERR TLS unavailable\r\n");
        assert!(matches!(
            core.next_step(),
            Some(UpstreamStep::Failed { .. })
        ));
        assert_eq!(core.next_step(), None);
        for greeting in [&b"-ERR busy\r\n"[..], b"+OKAY\r\n", b"* OK imap\r\n"] {
            let mut core = Pop3UpstreamLogin::new(request(false));
            core.feed(greeting);
            assert!(matches!(
                core.next_step(),
                Some(UpstreamStep::Failed { .. })
            ));
        }
    }

    #[test]
    fn continuation_when_initial_response_not_taken() {
        let mut core = Pop3UpstreamLogin::new(request(false));
        core.feed(b"+OK\r\n-ERR unknown command\r\n");
        assert_eq!(sent(core.next_step()), "CAPA\r\n");
        assert_eq!(sent(core.next_step()), format!("AUTH PLAIN {PLAIN}\r\n"));
        core.feed(b"+ \r\n");
        assert_eq!(sent(core.next_step()), format!("{PLAIN}\r\n"));
        core.feed(b"+ \r\n");
        assert!(matches!(
            core.next_step(),
            Some(UpstreamStep::Failed { .. })
        ));
    }

    fn answer_to_auth(answer: &[u8]) -> UpstreamStep {
        let mut core = Pop3UpstreamLogin::new(request(false));
        core.feed(b"+OK\r\n+OK\r\n.\r\n");
        sent(core.next_step());
        sent(core.next_step());
        core.feed(answer);
        core.next_step().unwrap()
    }

    #[test]
    fn refusals_versus_temporary_failures() {
        for refusal in [
            &b"-ERR [AUTH] Authentication failed.\r\n"[..],
            b"-ERR Authentication failed.\r\n",
            b"-ERR\r\n",
        ] {
            assert!(
                matches!(answer_to_auth(refusal), UpstreamStep::Refused { .. }),
                "{refusal:?}"
            );
        }
        for failure in [
            &b"-ERR [SYS/TEMP] Temporary authentication failure.\r\n"[..],
            b"-ERR [IN-USE] Mailbox locked\r\n",
            b"-ERR [SYS/PERM] broken\r\n",
            b"* BYE\r\n",
        ] {
            assert!(
                matches!(answer_to_auth(failure), UpstreamStep::Failed { .. }),
                "{failure:?}"
            );
        }
    }

    #[test]
    fn overlong_line_fails() {
        let mut core = Pop3UpstreamLogin::new(request(false));
        core.feed(&vec![b'+'; MAX_RESPONSE_LINE + 10]);
        // Dropped without being buffered, and reported at once (not only when
        // the line ends, which would depend on how the reads were split).
        assert!(matches!(
            core.next_step(),
            Some(UpstreamStep::Failed { .. })
        ));
    }
}
