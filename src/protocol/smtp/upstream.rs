//! postern's own SMTP submission login to the protected server, without I/O.
//!
//! Greeting `220` (RFC 5321 §4.2, multi-line allowed) → `EHLO postern`
//! (RFC 5321 §4.1.1.1) → optional `STARTTLS` (RFC 3207 §4; whatever arrived in
//! plain text is dropped) and `EHLO` again → then, by [`SmtpLoginMode`]:
//!
//! - [`SmtpLoginMode::Auth`]: if EHLO lists `XCLIENT` with `ADDR` or `PORT`
//!   (Postfix, `smtpd_authorized_xclient_hosts`), `XCLIENT ADDR=.. PORT=..`,
//!   the new `220` greeting and `EHLO` again, so the server sees the real client;
//!   then `AUTH PLAIN` with an initial response (RFC 4954 §4, RFC 4616). The
//!   server's `235` goes to the client verbatim. `5xx` refuses the credentials
//!   (RFC 4954 §6: `535 5.7.8`), `4xx` is temporary.
//! - [`SmtpLoginMode::Xclient`]: `XCLIENT LOGIN=<user> ADDR=.. PORT=..`
//!   (Postfix XCLIENT_README), the new `220` greeting, then `EHLO` with the
//!   client's own HELO name; postern answers the client `235` itself.
//!
//! XCLIENT attribute values are xtext (RFC 3461 §4: bytes outside `!`..`~`, and
//! `+` and `=`, as `+XX`); IPv6 addresses carry Postfix's `IPV6:` prefix.
//!
//! Replies are framed per RFC 5321 §4.2.1: `250-` continues, `250 ` (or a bare
//! code) ends. Nothing is pipelined: EHLO, STARTTLS, XCLIENT and AUTH must each
//! end a group (RFC 2920 §3.1, RFC 4954 §4), and XCLIENT resets the session.

use std::net::{IpAddr, SocketAddr};

use super::reply::{Reply, ReplyReader};
use crate::protocol::upstream::{UpstreamRequest, UpstreamStep};

/// postern's name in its own `EHLO`.
pub const EHLO_NAME: &str = "postern";
/// Cap on one upstream reply line, line ending excluded.
pub const MAX_REPLY_LINE: usize = 64 * 1024;
/// Cap on the number of lines in one multi-line reply.
const MAX_REPLY_LINES: usize = 256;
/// What postern tells the client in [`SmtpLoginMode::Xclient`] (RFC 4954 §6).
const XCLIENT_LOGGED_IN: &[u8] = b"235 2.7.0 Authentication successful\r\n";

/// How postern logs in to the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpLoginMode {
    /// `AUTH PLAIN` with the credentials (after forwarding the client address
    /// with XCLIENT when the server allows it).
    Auth,
    /// No password: Postfix trusts postern's `XCLIENT LOGIN=` (postern must be in
    /// `smtpd_authorized_xclient_hosts`).
    Xclient,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    /// Waiting for the answer to an EHLO named `EHLO_NAME`.
    Ehlo,
    StartTls,
    /// TLS is up: EHLO goes out next.
    AfterTls,
    /// Auth mode: waiting for the answer to `XCLIENT ADDR= PORT=`.
    XclientForward,
    /// Xclient mode: waiting for the answer to `XCLIENT LOGIN=`.
    XclientLogin,
    /// Xclient mode: waiting for the answer to the EHLO with the client's name.
    FinalEhlo,
    Auth {
        continuation_sent: bool,
    },
    Finished,
}

/// The SMTP upstream-login core: feed it the server's bytes, follow its steps.
#[derive(Debug)]
pub struct SmtpUpstreamLogin {
    request: UpstreamRequest,
    mode: SmtpLoginMode,
    client_helo: String,
    replies: ReplyReader,
    state: State,
    extensions: Vec<String>,
    tls_done: bool,
    xclient_done: bool,
    xclient_refused: Option<String>,
}

impl SmtpUpstreamLogin {
    /// `client_helo` is the name the client gave in its EHLO; a name that cannot
    /// go on a command line is replaced by the client's address literal.
    pub fn new(request: UpstreamRequest, mode: SmtpLoginMode, client_helo: String) -> Self {
        let client_helo = if is_helo_name(&client_helo) {
            client_helo
        } else {
            address_literal(request.client)
        };
        Self {
            request,
            mode,
            client_helo,
            replies: ReplyReader::new(MAX_REPLY_LINE, MAX_REPLY_LINES),
            state: State::Greeting,
            extensions: Vec::new(),
            tls_done: false,
            xclient_done: false,
            xclient_refused: None,
        }
    }

    /// Takes bytes read from the upstream.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.replies.feed(bytes);
    }

    /// The next step; `None` when the core needs more upstream bytes (or is done).
    pub fn next_step(&mut self) -> Option<UpstreamStep> {
        if self.state == State::AfterTls {
            return Some(self.ehlo());
        }
        loop {
            if self.state == State::Finished {
                return None;
            }
            let reply = match self.replies.next_reply()? {
                Ok(reply) => reply,
                Err(detail) => return Some(self.fail(detail)),
            };
            if let Some(step) = self.on_reply(reply) {
                return Some(step);
            }
        }
    }

    /// The extension lines of the latest EHLO reply (keyword and parameters,
    /// without `250-`), e.g. `SIZE 10240000`. After a login in Xclient mode, those
    /// the server offers the client's session.
    pub fn extensions(&self) -> &[String] {
        &self.extensions
    }

    /// The server's refusal of `XCLIENT ADDR=` in Auth mode, if any (worth a log
    /// line: the upstream then sees postern's address). The login goes on.
    pub fn xclient_refused(&self) -> Option<&str> {
        self.xclient_refused.as_deref()
    }

    fn fail(&mut self, detail: String) -> UpstreamStep {
        self.state = State::Finished;
        UpstreamStep::Failed { detail }
    }

    fn ehlo(&mut self) -> UpstreamStep {
        self.state = State::Ehlo;
        UpstreamStep::Send(format!("EHLO {EHLO_NAME}\r\n").into_bytes())
    }

    fn auth(&mut self) -> UpstreamStep {
        self.state = State::Auth {
            continuation_sent: false,
        };
        let mut out = b"AUTH PLAIN ".to_vec();
        out.extend_from_slice(
            self.request
                .credentials
                .plain_response()
                .expose()
                .as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
        UpstreamStep::Send(out)
    }

    /// The attributes the server's `XCLIENT` extension line lists.
    fn xclient_attributes(&self) -> Option<Vec<String>> {
        self.extensions.iter().find_map(|line| {
            let mut words = line.split(' ');
            words
                .next()
                .is_some_and(|word| word.eq_ignore_ascii_case("XCLIENT"))
                .then(|| words.map(str::to_ascii_uppercase).collect())
        })
    }

    fn address_attributes(&self) -> Vec<(&'static str, String)> {
        let client = self.request.client;
        let addr = match client.ip().to_canonical() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("IPV6:{ip}"),
        };
        vec![("ADDR", addr), ("PORT", client.port().to_string())]
    }

    /// After an EHLO by postern: STARTTLS, XCLIENT or the login.
    fn after_ehlo(&mut self) -> UpstreamStep {
        if self.request.starttls && !self.tls_done {
            self.state = State::StartTls;
            return UpstreamStep::Send(b"STARTTLS\r\n".to_vec());
        }
        let listed = self.xclient_attributes();
        match self.mode {
            SmtpLoginMode::Auth => {
                if let Some(listed) = listed.filter(|_| !self.xclient_done)
                    && let Some(command) = xclient_command(&self.address_attributes(), &listed)
                {
                    self.xclient_done = true;
                    self.state = State::XclientForward;
                    return UpstreamStep::Send(command);
                }
                self.auth()
            }
            SmtpLoginMode::Xclient => {
                let Some(listed) = listed else {
                    return self.fail(
                        "upstream EHLO does not offer XCLIENT to postern: add postern to \
                         Postfix's smtpd_authorized_xclient_hosts or use the auth login mode"
                            .into(),
                    );
                };
                if !listed.iter().any(|name| name == "LOGIN") {
                    return self.fail("upstream XCLIENT does not take LOGIN".into());
                }
                let mut attributes = vec![("LOGIN", self.request.credentials.user().to_owned())];
                attributes.extend(self.address_attributes());
                let Some(command) = xclient_command(&attributes, &listed) else {
                    return self.fail("upstream XCLIENT does not take LOGIN".into());
                };
                self.state = State::XclientLogin;
                UpstreamStep::Send(command)
            }
        }
    }

    fn take_leftover(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.replies, ReplyReader::new(0, 0)).into_rest()
    }

    fn on_reply(&mut self, reply: Reply) -> Option<UpstreamStep> {
        match self.state {
            State::Greeting => {
                if reply.code != 220 {
                    return Some(self.fail(format!("unexpected greeting: {}", reply.detail())));
                }
                Some(self.ehlo())
            }
            State::Ehlo | State::FinalEhlo => {
                if reply.code != 250 {
                    return Some(self.fail(format!("EHLO refused: {}", reply.detail())));
                }
                self.extensions = reply.extensions();
                if self.state == State::FinalEhlo {
                    self.state = State::Finished;
                    return Some(UpstreamStep::LoggedIn {
                        client_reply: XCLIENT_LOGGED_IN.to_vec(),
                        leftover: self.take_leftover(),
                    });
                }
                Some(self.after_ehlo())
            }
            State::StartTls => {
                if reply.code != 220 {
                    return Some(self.fail(format!("STARTTLS refused: {}", reply.detail())));
                }
                // Nothing received in plain text may be read as if it came
                // through TLS (RFC 3207 §4.2).
                self.replies.discard();
                self.tls_done = true;
                self.state = State::AfterTls;
                Some(UpstreamStep::StartTls)
            }
            State::XclientForward => match reply.class() {
                2 if reply.code == 220 => Some(self.ehlo()),
                5 => {
                    self.xclient_refused = Some(reply.detail());
                    Some(self.auth())
                }
                _ => Some(self.fail(format!("XCLIENT failed: {}", reply.detail()))),
            },
            State::XclientLogin => {
                if reply.code == 220 {
                    self.state = State::FinalEhlo;
                    return Some(UpstreamStep::Send(
                        format!("EHLO {}\r\n", self.client_helo).into_bytes(),
                    ));
                }
                let hint = if reply.class() == 5 {
                    " (is postern in Postfix's smtpd_authorized_xclient_hosts?)"
                } else {
                    ""
                };
                Some(self.fail(format!("XCLIENT refused: {}{hint}", reply.detail())))
            }
            State::Auth { continuation_sent } => {
                if reply.code == 334 && !continuation_sent {
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
                match reply.code {
                    235 => {
                        let mut client_reply = Vec::new();
                        for line in &reply.lines {
                            client_reply.extend_from_slice(line);
                            client_reply.extend_from_slice(b"\r\n");
                        }
                        Some(UpstreamStep::LoggedIn {
                            client_reply,
                            leftover: self.take_leftover(),
                        })
                    }
                    500..=599 => Some(UpstreamStep::Refused {
                        detail: reply.detail(),
                    }),
                    _ => Some(UpstreamStep::Failed {
                        detail: reply.detail(),
                    }),
                }
            }
            State::AfterTls | State::Finished => None,
        }
    }
}

/// `XCLIENT` with those of `attributes` that the server lists, if any.
fn xclient_command(attributes: &[(&str, String)], listed: &[String]) -> Option<Vec<u8>> {
    let mut out = String::from("XCLIENT");
    for (name, value) in attributes {
        if listed.iter().any(|l| l == name) {
            out.push(' ');
            out.push_str(name);
            out.push('=');
            out.push_str(&xtext(value.as_bytes()));
        }
    }
    (out.len() > "XCLIENT".len()).then(|| {
        out.push_str("\r\n");
        out.into_bytes()
    })
}

/// xtext (RFC 3461 §4, used by Postfix XCLIENT): `+XX` for bytes outside
/// `!`..`~` and for `+` and `=`.
pub fn xtext(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for &byte in value {
        if (b'!'..=b'~').contains(&byte) && byte != b'+' && byte != b'=' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("+{byte:02X}"));
        }
    }
    out
}

/// A name that can follow `EHLO ` on a command line as is.
fn is_helo_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| (b'!'..=b'~').contains(&b))
}

/// The client's address as an RFC 5321 §4.1.3 address literal.
fn address_literal(client: SocketAddr) -> String {
    match client.ip().to_canonical() {
        IpAddr::V4(ip) => format!("[{ip}]"),
        IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::upstream::UpstreamCredentials;
    use crate::secret::Secret;

    fn request(starttls: bool) -> UpstreamRequest {
        UpstreamRequest {
            credentials: UpstreamCredentials {
                authzid: String::new(),
                authcid: "a+b@x".into(),
                password: Secret::from("pw"),
            },
            client: "192.0.2.7:50000".parse().unwrap(),
            starttls,
        }
    }

    /// base64("\0a+b@x\0pw")
    const PLAIN: &str = "AGErYkB4AHB3";

    const GREETING: &[u8] = b"220-mail.example.test ESMTP Postfix\r\n220 second line\r\n";
    const POSTFIX_EHLO: &[u8] = b"250-mail.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-ETRN\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n";
    const POSTFIX_EHLO_XCLIENT: &[u8] = b"250-mail.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-ETRN\r\n250-AUTH PLAIN LOGIN\r\n250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n";

    fn sent(step: Option<UpstreamStep>) -> String {
        match step {
            Some(UpstreamStep::Send(bytes)) => String::from_utf8(bytes).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn drive(core: &mut SmtpUpstreamLogin, bytes: &[u8], chunk: usize) -> Vec<UpstreamStep> {
        let mut steps = Vec::new();
        for part in bytes.chunks(chunk) {
            core.feed(part);
            steps.extend(std::iter::from_fn(|| core.next_step()));
        }
        steps
    }

    fn send(text: &str) -> UpstreamStep {
        UpstreamStep::Send(text.as_bytes().to_vec())
    }

    #[test]
    fn postfix_auth_transcript_at_every_split() {
        let auth_ok = b"235 2.7.0 Authentication successful\r\n";
        let total = GREETING.len() + POSTFIX_EHLO.len() + auth_ok.len();
        for chunk in 1..=total {
            let mut core = SmtpUpstreamLogin::new(request(false), SmtpLoginMode::Auth, "c".into());
            assert_eq!(
                drive(&mut core, GREETING, chunk),
                vec![send("EHLO postern\r\n")]
            );
            assert_eq!(
                drive(&mut core, POSTFIX_EHLO, chunk),
                vec![send(&format!("AUTH PLAIN {PLAIN}\r\n"))],
                "chunk {chunk}"
            );
            assert_eq!(core.extensions().len(), 10);
            assert_eq!(core.extensions()[1], "SIZE 10240000");
            assert_eq!(
                drive(&mut core, auth_ok, chunk),
                vec![UpstreamStep::LoggedIn {
                    client_reply: auth_ok.to_vec(),
                    leftover: Vec::new(),
                }]
            );
        }
    }

    #[test]
    fn greeting_split_at_every_byte_position() {
        for split in 0..=GREETING.len() {
            let mut core = SmtpUpstreamLogin::new(request(false), SmtpLoginMode::Auth, "c".into());
            core.feed(&GREETING[..split]);
            let first = core.next_step();
            core.feed(&GREETING[split..]);
            let steps: Vec<_> = first
                .into_iter()
                .chain(std::iter::from_fn(|| core.next_step()))
                .collect();
            assert_eq!(steps, vec![send("EHLO postern\r\n")], "split {split}");
        }
    }

    #[test]
    fn auth_mode_forwards_client_with_xclient_first() {
        let mut core = SmtpUpstreamLogin::new(request(false), SmtpLoginMode::Auth, "c".into());
        core.feed(GREETING);
        sent(core.next_step());
        core.feed(POSTFIX_EHLO_XCLIENT);
        assert_eq!(
            sent(core.next_step()),
            "XCLIENT ADDR=192.0.2.7 PORT=50000\r\n"
        );
        core.feed(b"220 mail.example.test ESMTP Postfix\r\n");
        assert_eq!(sent(core.next_step()), "EHLO postern\r\n");
        // The XCLIENT line is still listed: it is not sent twice.
        core.feed(POSTFIX_EHLO_XCLIENT);
        assert_eq!(sent(core.next_step()), format!("AUTH PLAIN {PLAIN}\r\n"));
        core.feed(b"235-2.7.0 first\r\n235 2.7.0 Authentication successful\r\nleft");
        assert_eq!(
            core.next_step(),
            Some(UpstreamStep::LoggedIn {
                client_reply: b"235-2.7.0 first\r\n235 2.7.0 Authentication successful\r\n"
                    .to_vec(),
                leftover: b"left".to_vec(),
            })
        );
        assert_eq!(core.xclient_refused(), None);
    }

    #[test]
    fn auth_mode_xclient_refusal_is_noted_and_login_goes_on() {
        let mut core = SmtpUpstreamLogin::new(request(false), SmtpLoginMode::Auth, "c".into());
        core.feed(GREETING);
        sent(core.next_step());
        core.feed(POSTFIX_EHLO_XCLIENT);
        sent(core.next_step());
        core.feed(b"550 5.7.0 Error: insufficient authorization\r\n");
        assert_eq!(sent(core.next_step()), format!("AUTH PLAIN {PLAIN}\r\n"));
        assert_eq!(
            core.xclient_refused(),
            Some("550 5.7.0 Error: insufficient authorization")
        );
    }

    #[test]
    fn xclient_mode_transcript_with_encoding_and_exact_leftover() {
        let mut core = SmtpUpstreamLogin::new(
            request(false),
            SmtpLoginMode::Xclient,
            "client.example".into(),
        );
        core.feed(GREETING);
        sent(core.next_step());
        core.feed(POSTFIX_EHLO_XCLIENT);
        assert_eq!(
            sent(core.next_step()),
            "XCLIENT LOGIN=a+2Bb@x ADDR=192.0.2.7 PORT=50000\r\n"
        );
        core.feed(b"220 mail.example.test ESMTP Postfix\r\n");
        assert_eq!(sent(core.next_step()), "EHLO client.example\r\n");
        core.feed(
            b"250-mail.example.test\r\n250-SIZE 1000\r\n250 DSN\r\n421 4.4.2 timeout\r\n\x00",
        );
        assert_eq!(
            core.next_step(),
            Some(UpstreamStep::LoggedIn {
                client_reply: b"235 2.7.0 Authentication successful\r\n".to_vec(),
                leftover: b"421 4.4.2 timeout\r\n\x00".to_vec(),
            })
        );
        assert_eq!(core.extensions(), ["SIZE 1000", "DSN"]);
        assert_eq!(core.next_step(), None);
    }

    #[test]
    fn xclient_mode_misconfiguration_fails() {
        let mut core = SmtpUpstreamLogin::new(request(false), SmtpLoginMode::Xclient, "c".into());
        core.feed(GREETING);
        sent(core.next_step());
        core.feed(POSTFIX_EHLO);
        match core.next_step() {
            Some(UpstreamStep::Failed { detail }) => {
                assert!(detail.contains("smtpd_authorized_xclient_hosts"))
            }
            other => panic!("{other:?}"),
        }
        let mut core = SmtpUpstreamLogin::new(request(false), SmtpLoginMode::Xclient, "c".into());
        core.feed(GREETING);
        sent(core.next_step());
        core.feed(POSTFIX_EHLO_XCLIENT);
        sent(core.next_step());
        core.feed(b"550 5.7.0 Error: insufficient authorization\r\n");
        match core.next_step() {
            Some(UpstreamStep::Failed { detail }) => {
                assert!(detail.contains("smtpd_authorized_xclient_hosts"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn xclient_mode_bad_helo_becomes_address_literal_and_ipv6_is_prefixed() {
        let mut request = request(false);
        request.client = "[2001:db8::1]:25".parse().unwrap();
        let mut core = SmtpUpstreamLogin::new(request, SmtpLoginMode::Xclient, "bad name".into());
        core.feed(GREETING);
        sent(core.next_step());
        core.feed(POSTFIX_EHLO_XCLIENT);
        assert_eq!(
            sent(core.next_step()),
            "XCLIENT LOGIN=a+2Bb@x ADDR=IPV6:2001:db8::1 PORT=25\r\n"
        );
        core.feed(b"220 hi\r\n");
        assert_eq!(sent(core.next_step()), "EHLO [IPv6:2001:db8::1]\r\n");
    }

    #[test]
    fn starttls_discards_injected_plaintext_then_ehlo_again() {
        let mut core = SmtpUpstreamLogin::new(request(true), SmtpLoginMode::Auth, "c".into());
        core.feed(GREETING);
        assert_eq!(sent(core.next_step()), "EHLO postern\r\n");
        core.feed(POSTFIX_EHLO);
        assert_eq!(sent(core.next_step()), "STARTTLS\r\n");
        core.feed(b"220 2.0.0 Ready to start TLS\r\n235 2.7.0 injected\r\n");
        assert_eq!(core.next_step(), Some(UpstreamStep::StartTls));
        assert_eq!(sent(core.next_step()), "EHLO postern\r\n");
        assert_eq!(core.next_step(), None);
        core.feed(POSTFIX_EHLO_XCLIENT);
        assert_eq!(
            sent(core.next_step()),
            "XCLIENT ADDR=192.0.2.7 PORT=50000\r\n"
        );
    }

    #[test]
    fn starttls_refused_fails() {
        let mut core = SmtpUpstreamLogin::new(request(true), SmtpLoginMode::Auth, "c".into());
        core.feed(GREETING);
        sent(core.next_step());
        core.feed(POSTFIX_EHLO);
        sent(core.next_step());
        core.feed(b"454 4.7.0 TLS not available\r\n");
        assert!(matches!(
            core.next_step(),
            Some(UpstreamStep::Failed { .. })
        ));
    }

    fn answer_to_auth(answer: &[u8]) -> (SmtpUpstreamLogin, Option<UpstreamStep>) {
        let mut core = SmtpUpstreamLogin::new(request(false), SmtpLoginMode::Auth, "c".into());
        core.feed(GREETING);
        sent(core.next_step());
        core.feed(POSTFIX_EHLO);
        sent(core.next_step());
        core.feed(answer);
        let step = core.next_step();
        (core, step)
    }

    #[test]
    fn refusals_versus_temporary_failures() {
        for refusal in [
            &b"535 5.7.8 Error: authentication failed: authentication failure\r\n"[..],
            b"554 5.7.0 no\r\n",
        ] {
            assert!(matches!(
                answer_to_auth(refusal).1,
                Some(UpstreamStep::Refused { .. })
            ));
        }
        for failure in [
            &b"454 4.7.0 Temporary authentication failure\r\n"[..],
            b"421 4.3.2 shutting down\r\n",
            b"250 what\r\n",
            b"hello\r\n",
            b"235-2.7.0 a\r\n250 b\r\n",
        ] {
            assert!(matches!(
                answer_to_auth(failure).1,
                Some(UpstreamStep::Failed { .. })
            ));
        }
    }

    #[test]
    fn continuation_sends_the_response_once() {
        let (mut core, step) = answer_to_auth(b"334 \r\n");
        assert_eq!(sent(step), format!("{PLAIN}\r\n"));
        core.feed(b"334 \r\n");
        assert!(matches!(
            core.next_step(),
            Some(UpstreamStep::Failed { .. })
        ));
    }

    #[test]
    fn bad_greetings_fail() {
        for greeting in [&b"554 5.3.2 go away\r\n"[..], b"421 busy\r\n", b"+OK\r\n"] {
            let mut core = SmtpUpstreamLogin::new(request(false), SmtpLoginMode::Auth, "c".into());
            core.feed(greeting);
            assert!(matches!(
                core.next_step(),
                Some(UpstreamStep::Failed { .. })
            ));
        }
    }

    #[test]
    fn xtext_encoding() {
        assert_eq!(xtext(b"a+b@x"), "a+2Bb@x");
        assert_eq!(xtext(b"k=v w\x7f\xc3"), "k+3Dv+20w+7F+C3");
    }
}
