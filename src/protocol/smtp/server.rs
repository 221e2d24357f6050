//! SMTP submission before authentication: RFC 5321 §4.1 commands, message
//! submission (RFC 6409), AUTH (RFC 4954), STARTTLS (RFC 3207) and enhanced status
//! codes (RFC 2034, RFC 3463, registered in RFC 5248).
//!
//! [`SmtpPreAuth`] owns the conversation until the client authenticates: greeting,
//! EHLO/HELO, STARTTLS, RSET, NOOP, HELP, QUIT and AUTH are answered here; mail
//! transaction commands are refused with `530 5.7.0` (RFC 4954 §6) and nothing
//! is relayed. It must not decide a login (the policy does), perform I/O, or look
//! at a clock. After a successful upstream login,
//! [`SmtpPreAuth::into_pipelined`] returns what the client already sent after its
//! AUTH exchange, for the relay to forward unaltered.
//!
//! Choices the RFCs leave open:
//! - The EHLO reply passes on the upstream's extensions except those postern
//!   handles or must hide (`AUTH`, `STARTTLS`, `XCLIENT`), adds `STARTTLS` and
//!   `AUTH PLAIN LOGIN` where they apply (RFC 3207 §4, RFC 4954 §3: AUTH is not
//!   offered before TLS when plaintext logins are off), and always
//!   `ENHANCEDSTATUSCODES`, since postern's own replies carry them.
//! - A refused `BDAT <size>` chunk is skipped byte for byte (RFC 3030 §3), so its
//!   contents are never read as commands.
//! - Every refusal, whatever its reason, gets the same bytes.

use crate::protocol::line::{Frame, LineReader, PreAuthCore, split_command};
use crate::protocol::sasl::{self, Mechanism, SaslError, SaslExchange, Step};

pub use crate::protocol::line::{Action, LoginFailure, LoginMethod, Options};

/// Reply to every refused login (RFC 4954 §6).
pub const REFUSED: &[u8] =
    b"535 5.7.8 Authentication credentials invalid: sign in with an app password from your postern account page, not your regular password\r\n";
/// Reply when the database or the upstream is down (RFC 4954 §6).
pub const TEMPORARY: &[u8] =
    b"454 4.7.0 Temporary authentication failure, please try again later\r\n";
/// Reply to AUTH before STARTTLS when plaintext logins are off (RFC 3207 §4).
/// RFC 4954 §6 temporary authentication failure, saying why.
pub const TOO_MANY_SESSIONS: &[u8] =
    b"454 4.7.0 Too many connections for this account from your address\r\n";
pub const TLS_REQUIRED: &[u8] = b"530 5.7.0 Must issue a STARTTLS command first\r\n";
/// Reply to mail transaction commands before AUTH (RFC 4954 §6).
pub const AUTH_REQUIRED: &[u8] = b"530 5.7.0 Authentication required\r\n";

/// Upstream extensions never passed on: postern answers AUTH and STARTTLS itself,
/// XCLIENT is for postern's own use, ENHANCEDSTATUSCODES it adds once itself.
const HIDDEN_EXTENSIONS: [&str; 4] = ["AUTH", "STARTTLS", "XCLIENT", "ENHANCEDSTATUSCODES"];

#[derive(Debug)]
enum State {
    /// Waiting for a command (RFC 5321 §4.1).
    Command,
    /// Inside an AUTH exchange, waiting for the client's response (RFC 4954 §4).
    Sasl {
        exchange: SaslExchange,
        mechanism: Mechanism,
    },
    /// `Action::Login` was returned; the driver is deciding.
    LoggingIn,
    /// `STARTTLS` was accepted: what the client sent after it goes with this
    /// core, nothing more is read.
    StartTls,
    /// The reply ends the connection (QUIT, too many errors): nothing more is read.
    Closing,
}

/// How the client introduced itself (RFC 5321 §4.1.1.1).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hello {
    None,
    Helo(String),
    Ehlo(String),
}

/// One SMTP submission connection before AUTH. Feed it bytes, act on what
/// [`SmtpPreAuth::next_action`] returns.
#[derive(Debug)]
pub struct SmtpPreAuth {
    options: Options,
    hostname: String,
    extensions: Vec<String>,
    reader: LineReader,
    state: State,
    hello: Hello,
    bad_commands: u32,
}

impl SmtpPreAuth {
    /// A core for a new connection (or right after STARTTLS, with `tls_active`;
    /// the client must then say EHLO again, RFC 3207 §4.2). `hostname` is postern's
    /// name in the greeting and EHLO reply; `upstream_extensions` are the EHLO
    /// lines of the upstream without the `250-` prefix (e.g. `SIZE 35882577`).
    pub fn new(options: Options, hostname: String, upstream_extensions: Vec<String>) -> Self {
        let extensions = upstream_extensions
            .into_iter()
            .map(|line| line.trim().to_owned())
            .filter(|line| {
                let keyword = line.split([' ', '=']).next().unwrap_or_default();
                !line.is_empty()
                    && !line.contains(['\r', '\n', '\0'])
                    && !HIDDEN_EXTENSIONS
                        .iter()
                        .any(|hidden| keyword.eq_ignore_ascii_case(hidden))
            })
            .collect();
        Self {
            reader: LineReader::new(options.max_line),
            options,
            hostname,
            extensions,
            state: State::Command,
            hello: Hello::None,
            bad_commands: 0,
        }
    }

    /// The name the client gave in its last EHLO or HELO, for the upstream session.
    pub fn client_helo(&self) -> Option<&str> {
        match &self.hello {
            Hello::None => None,
            Hello::Helo(name) | Hello::Ehlo(name) => Some(name),
        }
    }

    /// Handles one command line (RFC 5321 §4.1).
    fn command(&mut self, line: &[u8]) -> Action {
        if line.contains(&0) {
            return self.bad(b"500 5.5.2 NUL byte in command\r\n");
        }
        let (verb, arg) = split_command(line);
        let verb = verb.to_ascii_uppercase();
        match verb.as_slice() {
            b"EHLO" | b"HELO" => self.hello(verb == b"EHLO", arg),
            b"STARTTLS" => self.starttls(arg),
            b"AUTH" => self.auth(arg),
            b"RSET" | b"NOOP" => Action::Send(b"250 2.0.0 OK\r\n".to_vec()),
            b"HELP" => Action::Send(
                b"214 2.0.0 postern: EHLO, STARTTLS, AUTH, then submit as usual\r\n".to_vec(),
            ),
            b"QUIT" => Action::Close(b"221 2.0.0 Bye\r\n".to_vec()),
            b"MAIL" | b"RCPT" | b"DATA" | b"VRFY" | b"EXPN" => self.bad(AUTH_REQUIRED),
            b"BDAT" => self.bdat(arg),
            _ => self.bad(b"500 5.5.2 Command unrecognized\r\n"),
        }
    }

    /// RFC 5321 §4.1.1.1; the EHLO reply format is §4.2.1.
    fn hello(&mut self, extended: bool, arg: &[u8]) -> Action {
        let name = match std::str::from_utf8(arg.trim_ascii()) {
            // The name is passed on upstream (XCLIENT HELO=): no spaces or controls.
            Ok(name)
                if !name.is_empty()
                    && !name.contains(|c: char| c.is_whitespace() || c.is_control()) =>
            {
                name
            }
            _ => {
                let verb = if extended { "EHLO" } else { "HELO" };
                return self.bad(format!("501 5.5.4 Syntax: {verb} hostname\r\n").as_bytes());
            }
        };
        if !extended {
            self.hello = Hello::Helo(name.to_owned());
            return Action::Send(format!("250 {}\r\n", self.hostname).into_bytes());
        }
        self.hello = Hello::Ehlo(name.to_owned());
        let mut lines = vec![self.hostname.clone()];
        lines.extend(self.extensions.iter().cloned());
        if self.options.starttls_available && !self.options.tls_active {
            lines.push("STARTTLS".to_owned());
        }
        if self.options.auth_allowed() {
            lines.push("AUTH PLAIN LOGIN".to_owned());
        }
        lines.push("ENHANCEDSTATUSCODES".to_owned());
        let mut reply = Vec::new();
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let separator = if i == last { ' ' } else { '-' };
            reply.extend_from_slice(format!("250{separator}{line}\r\n").as_bytes());
        }
        Action::Send(reply)
    }

    /// RFC 3207 §4.
    fn starttls(&mut self, arg: &[u8]) -> Action {
        if self.options.tls_active {
            self.bad(b"503 5.5.1 TLS already active\r\n")
        } else if !self.options.starttls_available {
            self.bad(b"502 5.5.1 STARTTLS not available\r\n")
        } else if !arg.trim_ascii().is_empty() {
            self.bad(b"501 5.5.4 Syntax: STARTTLS\r\n")
        } else {
            Action::StartTls(b"220 2.0.0 Ready to start TLS\r\n".to_vec())
        }
    }

    /// RFC 4954 §4: `AUTH mechanism [initial-response]`.
    fn auth(&mut self, arg: &[u8]) -> Action {
        if !matches!(self.hello, Hello::Ehlo(_)) {
            return self.bad(b"503 5.5.1 Send EHLO first\r\n");
        }
        if !self.options.auth_allowed() {
            return self.bad(TLS_REQUIRED);
        }
        let mut words = arg.split(|b| *b == b' ').filter(|w| !w.is_empty());
        let (Some(name), initial_response, None) = (words.next(), words.next(), words.next())
        else {
            return self.bad(b"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n");
        };
        let Some(mechanism) = Mechanism::parse(name) else {
            return self.bad(b"504 5.5.4 Unrecognized authentication type\r\n");
        };
        self.sasl_step(SaslExchange::start(mechanism, initial_response), mechanism)
    }

    fn sasl_step(&mut self, step: Step, mechanism: Mechanism) -> Action {
        match step {
            Step::Challenge(exchange, prompt) => {
                self.state = State::Sasl {
                    exchange,
                    mechanism,
                };
                Action::Send(format!("334 {}\r\n", sasl::encode(prompt)).into_bytes())
            }
            Step::Done(credentials) => Action::Login {
                credentials,
                method: LoginMethod::Sasl(mechanism),
            },
            Step::Failed(SaslError::Cancelled) => {
                Action::Send(b"501 5.7.0 Authentication cancelled\r\n".to_vec())
            }
            Step::Failed(SaslError::BadBase64) => self.bad(b"501 5.5.2 Invalid base64\r\n"),
            Step::Failed(SaslError::Malformed | SaslError::AuthzidMismatch) => self.bad(REFUSED),
        }
    }

    /// RFC 3030 §2: `BDAT <size> [LAST]`. Refused before AUTH; the chunk that
    /// follows is skipped so that none of it is read as a command.
    fn bdat(&mut self, arg: &[u8]) -> Action {
        let mut words = arg.split(|b| *b == b' ').filter(|w| !w.is_empty());
        let size = words
            .next()
            .filter(|size| !size.is_empty() && size.iter().all(u8::is_ascii_digit))
            .and_then(|size| std::str::from_utf8(size).ok()?.parse::<u64>().ok());
        let last_ok = match words.next() {
            None => true,
            Some(last) => last.eq_ignore_ascii_case(b"LAST") && words.next().is_none(),
        };
        match size {
            Some(size) if last_ok => {
                self.reader.skip(size);
                self.bad(AUTH_REQUIRED)
            }
            _ => self.bad(b"501 5.5.4 Syntax: BDAT size [LAST]\r\n"),
        }
    }

    /// Counts a bad command; the last one allowed closes the connection with
    /// `421` (RFC 5321 §3.8).
    fn bad(&mut self, reply: &[u8]) -> Action {
        self.bad_commands += 1;
        if self.bad_commands >= self.options.max_bad_commands {
            Action::Close(
                format!(
                    "421 4.7.0 {} Too many bad commands, closing connection\r\n",
                    self.hostname
                )
                .into_bytes(),
            )
        } else {
            Action::Send(reply.to_vec())
        }
    }
}

impl PreAuthCore for SmtpPreAuth {
    /// The first reply to send (RFC 5321 §4.2, §4.3.1).
    fn greeting(&self) -> Vec<u8> {
        format!("220 {} ESMTP postern\r\n", self.hostname).into_bytes()
    }

    /// Takes bytes read from the client.
    fn feed(&mut self, bytes: &[u8]) {
        self.reader.feed(bytes);
    }

    /// The next thing to do; `None` means more bytes are needed (or, after
    /// `StartTls`, `Close` or `Login`, that the core is waiting for the driver).
    fn next_action(&mut self) -> Option<Action> {
        if matches!(
            self.state,
            State::LoggingIn | State::StartTls | State::Closing
        ) {
            return None;
        }
        let action = match self.reader.next_frame()? {
            Frame::TooLong => match std::mem::replace(&mut self.state, State::Command) {
                // RFC 4954 §4: a response line over the limit ends the exchange.
                State::Sasl { .. } => {
                    self.bad(b"500 5.5.6 Authentication Exchange line is too long\r\n")
                }
                _ => self.bad(b"500 5.5.2 Line too long\r\n"),
            },
            Frame::Line(line) => match std::mem::replace(&mut self.state, State::Command) {
                State::Sasl {
                    exchange,
                    mechanism,
                } => self.sasl_step(exchange.step(&line), mechanism),
                _ => self.command(&line),
            },
        };
        match &action {
            Action::Close(_) => self.state = State::Closing,
            Action::StartTls(_) => self.state = State::StartTls,
            Action::Login { .. } => {
                self.state = State::LoggingIn;
                self.reader.hold_raw();
            }
            Action::Send(_) => {}
        }
        Some(action)
    }

    /// The reply to a login the driver refused; the core is back to waiting for
    /// commands and the client may try again.
    fn login_failed(&mut self, failure: LoginFailure) -> Vec<u8> {
        self.state = State::Command;
        self.reader.resume_lines();
        match failure {
            LoginFailure::Refused => REFUSED.to_vec(),
            LoginFailure::Temporary => TEMPORARY.to_vec(),
            LoginFailure::TooManySessions => TOO_MANY_SESSIONS.to_vec(),
        }
    }

    /// After a successful upstream login: every byte the client sent after its
    /// AUTH exchange, unconsumed and unaltered, to forward upstream once.
    fn into_pipelined(self) -> Vec<u8> {
        self.reader.into_rest()
    }

    /// Bytes the core holds (memory is bounded by `max_line` plus one read).
    fn buffered(&self) -> usize {
        self.reader.buffered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::testing::run_transcript;

    fn run(name: &str, text: &str) {
        run_transcript(name, text, |transcript| {
            let core = SmtpPreAuth::new(
                transcript.options.clone(),
                "mx.example.org".to_owned(),
                transcript.extensions.clone(),
            );
            let greeting = core.greeting();
            (core, greeting)
        });
    }

    macro_rules! transcripts {
        ($($name:ident),* $(,)?) => {$(
            #[test]
            fn $name() {
                run(
                    stringify!($name),
                    include_str!(concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/tests/transcripts/smtp/",
                        stringify!($name),
                        ".txt"
                    )),
                );
            }
        )*};
    }

    transcripts!(
        ehlo_before_tls,
        ehlo_after_tls,
        ehlo_plaintext_allowed,
        helo_then_auth_refused,
        auth_plain_initial_response,
        auth_plain_without_initial_response,
        auth_plain_empty_initial_response,
        auth_login,
        auth_cancel,
        auth_bad_base64,
        auth_before_tls_refused,
        auth_authzid_other_user,
        refused_then_retry,
        temporary_failure,
        nul_in_line,
        three_bad_commands_close,
        pipelined_after_auth,
        starttls_discards_following_bytes,
        starttls_when_tls_active,
        mail_rcpt_data_bdat_before_auth,
        noop_rset_help_quit,
        oversized_line,
    );

    #[test]
    fn ten_megabyte_line_keeps_memory_bounded() {
        let options = Options::default();
        let mut core = SmtpPreAuth::new(options.clone(), "mx".to_owned(), Vec::new());
        let mut actions = Vec::new();
        let chunk = vec![b'A'; 4096];
        for _ in 0..(10 * 1024 * 1024 / chunk.len()) {
            core.feed(&chunk);
            actions.extend(std::iter::from_fn(|| core.next_action()));
            assert!(core.buffered() <= options.max_line + 2);
        }
        core.feed(b"\r\nNOOP\r\n");
        actions.extend(std::iter::from_fn(|| core.next_action()));
        assert_eq!(
            actions,
            vec![
                Action::Send(b"500 5.5.2 Line too long\r\n".to_vec()),
                Action::Send(b"250 2.0.0 OK\r\n".to_vec()),
            ]
        );
    }

    #[test]
    fn huge_bdat_chunk_is_skipped_without_buffering() {
        let options = Options {
            max_bad_commands: 10,
            ..Options::default()
        };
        let mut core = SmtpPreAuth::new(options, "mx".to_owned(), Vec::new());
        core.feed(b"EHLO c\r\nBDAT 1000000 LAST\r\n");
        assert!(matches!(core.next_action(), Some(Action::Send(_))));
        assert_eq!(
            core.next_action(),
            Some(Action::Send(AUTH_REQUIRED.to_vec()))
        );
        // A chunk full of commands: none is executed.
        let fake = b"QUIT\r\n".repeat(1000);
        let mut fed = 0;
        while fed < 1_000_000 {
            let part = &fake[..fake.len().min(1_000_000 - fed)];
            core.feed(part);
            fed += part.len();
            assert_eq!(core.next_action(), None);
            assert_eq!(core.buffered(), 0);
        }
        core.feed(b"NOOP\r\n");
        assert_eq!(
            core.next_action(),
            Some(Action::Send(b"250 2.0.0 OK\r\n".to_vec()))
        );
    }

    #[test]
    fn client_helo_is_the_last_name_given() {
        let mut core = SmtpPreAuth::new(Options::default(), "mx".to_owned(), Vec::new());
        assert_eq!(core.client_helo(), None);
        core.feed(b"HELO one.example\r\nEHLO two.example\r\n");
        while core.next_action().is_some() {}
        assert_eq!(core.client_helo(), Some("two.example"));
    }
}
