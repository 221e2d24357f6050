//! POP3 before login: the AUTHORIZATION state of RFC 1939 §4, with CAPA (RFC 2449),
//! STLS (RFC 2595 §4), AUTH (RFC 5034) and response codes (RFC 3206).
//!
//! [`Pop3PreAuth`] owns everything a client says until it presents credentials:
//! it answers CAPA, STLS, QUIT and the login commands itself, and hands the
//! credentials to the session driver as [`Action::Login`]. It must not decide a
//! login (the policy does), perform I/O, or look at a clock. After a successful
//! upstream login, [`Pop3PreAuth::into_pipelined`] returns what the client already
//! sent after its login command, for the relay to forward unaltered.
//!
//! Choices the RFCs leave open:
//! - The greeting carries no APOP timestamp, and APOP is refused: postern never
//!   holds the shared secret APOP needs (RFC 1939 §7).
//! - A login command before TLS when plaintext logins are off gets
//!   `-ERR [SYS/PERM]`: RFC 3206 §4 reserves `[AUTH]` for bad credentials, which
//!   would make clients ask the user for another password; `SYS/PERM` tells them
//!   retrying will not help until they change their settings (use STLS). CAPA then
//!   lists neither `USER` nor `SASL` (RFC 2449 §6.3, §6.7).
//! - Every refusal, whatever its reason (wrong password, policy, an authzid naming
//!   somebody else, a malformed exchange), gets the same bytes, so a reply never
//!   tells which part was wrong.

use crate::protocol::line::{Frame, LineReader, PreAuthCore, split_command};
use crate::protocol::sasl::{self, Credentials, Mechanism, SaslError, SaslExchange, Step};

pub use crate::protocol::line::{Action, LoginFailure, LoginMethod, Options};

/// Greeting, without an APOP timestamp (RFC 1939 §4).
pub const GREETING: &[u8] = b"+OK postern ready\r\n";
/// Reply to every refused login (RFC 3206 §4 `AUTH`).
pub const REFUSED: &[u8] =
    b"-ERR [AUTH] Login refused: sign in with an app password from your postern account page, not your regular password\r\n";
/// Reply when the database or the upstream is down (RFC 3206 §4 `SYS/TEMP`).
pub const TEMPORARY: &[u8] =
    b"-ERR [SYS/TEMP] Login temporarily unavailable, please try again later\r\n";
/// Reply to a login command before TLS when plaintext logins are off.
pub const TLS_REQUIRED: &[u8] =
    b"-ERR [SYS/PERM] Logins require TLS: use STLS or the POP3S port first\r\n";
/// RFC 2449 IN-USE: the account is busy (here: too many sessions from this client).
pub const TOO_MANY_SESSIONS: &[u8] =
    b"-ERR [IN-USE] Too many connections for this account from your address\r\n";
const TOO_MANY_BAD: &[u8] = b"-ERR Too many bad commands, closing connection\r\n";

/// The client's side of the AUTHORIZATION state.
#[derive(Debug)]
enum State {
    /// Waiting for a command; `user` is the name given by `USER`, if any
    /// (RFC 1939 §7: `PASS` must follow it directly).
    Authorization { user: Option<Vec<u8>> },
    /// Inside an `AUTH` exchange (RFC 5034 §4), waiting for the client's response.
    Sasl {
        exchange: SaslExchange,
        mechanism: Mechanism,
    },
    /// `Action::Login` was returned; the driver is deciding.
    LoggingIn,
    /// `STLS` was accepted: what the client sent after it goes with this
    /// core, nothing more is read.
    StartTls,
    /// The reply ends the connection (QUIT, too many errors): nothing more is read.
    Closing,
}

/// One POP3 connection before login. Feed it bytes, act on what
/// [`Pop3PreAuth::next_action`] returns.
#[derive(Debug)]
pub struct Pop3PreAuth {
    options: Options,
    reader: LineReader,
    state: State,
    bad_commands: u32,
}

impl Pop3PreAuth {
    /// A core for a new connection (or for the same connection right after TLS
    /// started, with `tls_active` set).
    pub fn new(options: Options) -> Self {
        Self {
            reader: LineReader::new(options.max_line),
            options,
            state: State::Authorization { user: None },
            bad_commands: 0,
        }
    }

    /// Handles one command line in the AUTHORIZATION state (RFC 1939 §4, §7).
    fn command(&mut self, line: &[u8], user: Option<Vec<u8>>) -> Action {
        self.state = State::Authorization { user: None };
        if line.contains(&0) {
            return self.bad(b"-ERR NUL byte in command\r\n");
        }
        let (verb, arg) = split_command(line);
        let verb = verb.to_ascii_uppercase();
        match verb.as_slice() {
            b"CAPA" => Action::Send(self.capabilities()),
            b"QUIT" => Action::Close(b"+OK postern signing off\r\n".to_vec()),
            b"STLS" => self.stls(),
            b"USER" => {
                if !self.options.auth_allowed() {
                    return self.bad(TLS_REQUIRED);
                }
                let name = arg.trim_ascii();
                if name.is_empty() {
                    return self.bad(b"-ERR Syntax: USER name\r\n");
                }
                self.state = State::Authorization {
                    user: Some(name.to_vec()),
                };
                Action::Send(b"+OK Send your password with PASS\r\n".to_vec())
            }
            b"PASS" => {
                if !self.options.auth_allowed() {
                    return self.bad(TLS_REQUIRED);
                }
                let Some(user) = user else {
                    return self.bad(b"-ERR Send USER first\r\n");
                };
                // RFC 1939 §7: the password is the rest of the line, spaces included.
                match Credentials::new(&user, arg) {
                    Ok(credentials) => Action::Login {
                        credentials,
                        method: LoginMethod::User,
                    },
                    Err(_) => self.bad(REFUSED),
                }
            }
            b"AUTH" => self.auth(arg),
            b"APOP" => self.bad(b"-ERR APOP is not supported, use USER/PASS or AUTH\r\n"),
            b"STAT" | b"LIST" | b"RETR" | b"DELE" | b"NOOP" | b"RSET" | b"TOP" | b"UIDL" => {
                self.bad(b"-ERR Not allowed before login\r\n")
            }
            _ => self.bad(b"-ERR Unknown command\r\n"),
        }
    }

    /// RFC 2449 §5: the capability list. `TOP`, `UIDL`, `RESP-CODES`,
    /// `AUTH-RESP-CODE` and `PIPELINING` are what the upstream offers after login
    /// and what postern honours before it; login capabilities appear only where a
    /// login would be accepted.
    fn capabilities(&self) -> Vec<u8> {
        let mut reply = b"+OK Capability list follows\r\n".to_vec();
        for capability in ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"] {
            reply.extend_from_slice(capability.as_bytes());
            reply.extend_from_slice(b"\r\n");
        }
        if self.options.starttls_available && !self.options.tls_active {
            reply.extend_from_slice(b"STLS\r\n");
        }
        if self.options.auth_allowed() {
            reply.extend_from_slice(b"USER\r\nSASL PLAIN LOGIN\r\n");
        }
        reply.extend_from_slice(b".\r\n");
        reply
    }

    /// RFC 2595 §4.
    fn stls(&mut self) -> Action {
        if self.options.tls_active {
            self.bad(b"-ERR TLS is already active\r\n")
        } else if !self.options.starttls_available {
            self.bad(b"-ERR STLS is not available\r\n")
        } else {
            Action::StartTls(b"+OK Begin TLS negotiation\r\n".to_vec())
        }
    }

    /// RFC 5034 §4: `AUTH` alone lists the mechanisms; `AUTH mech [initial-response]`
    /// starts an exchange.
    fn auth(&mut self, arg: &[u8]) -> Action {
        if !self.options.auth_allowed() {
            return self.bad(TLS_REQUIRED);
        }
        let mut words = arg.split(|b| *b == b' ').filter(|w| !w.is_empty());
        let Some(name) = words.next() else {
            return Action::Send(b"+OK Supported mechanisms\r\nPLAIN\r\nLOGIN\r\n.\r\n".to_vec());
        };
        let initial_response = words.next();
        if words.next().is_some() {
            return self.bad(b"-ERR Syntax: AUTH mechanism [initial-response]\r\n");
        }
        let Some(mechanism) = Mechanism::parse(name) else {
            return self.bad(b"-ERR Unsupported mechanism\r\n");
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
                Action::Send(format!("+ {}\r\n", sasl::encode(prompt)).into_bytes())
            }
            Step::Done(credentials) => Action::Login {
                credentials,
                method: LoginMethod::Sasl(mechanism),
            },
            Step::Failed(SaslError::Cancelled) => {
                Action::Send(b"-ERR Authentication cancelled\r\n".to_vec())
            }
            Step::Failed(SaslError::BadBase64) => self.bad(b"-ERR Invalid base64\r\n"),
            Step::Failed(SaslError::Malformed | SaslError::AuthzidMismatch) => self.bad(REFUSED),
        }
    }

    /// Counts a bad command; the last one allowed closes the connection.
    fn bad(&mut self, reply: &[u8]) -> Action {
        self.bad_commands += 1;
        if self.bad_commands >= self.options.max_bad_commands {
            Action::Close(TOO_MANY_BAD.to_vec())
        } else {
            Action::Send(reply.to_vec())
        }
    }
}

impl PreAuthCore for Pop3PreAuth {
    /// The first line to send (RFC 1939 §4).
    fn greeting(&self) -> Vec<u8> {
        GREETING.to_vec()
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
            Frame::TooLong => {
                self.state = State::Authorization { user: None };
                self.bad(b"-ERR Line too long\r\n")
            }
            Frame::Line(line) => {
                match std::mem::replace(&mut self.state, State::Authorization { user: None }) {
                    State::Sasl {
                        exchange,
                        mechanism,
                    } => self.sasl_step(exchange.step(&line), mechanism),
                    State::Authorization { user } => self.command(&line, user),
                    state @ (State::LoggingIn | State::StartTls | State::Closing) => {
                        self.state = state;
                        return None;
                    }
                }
            }
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

    /// The reply to a login the driver refused; the core is back in the
    /// AUTHORIZATION state and the client may try again.
    fn login_failed(&mut self, failure: LoginFailure) -> Vec<u8> {
        self.state = State::Authorization { user: None };
        self.reader.resume_lines();
        match failure {
            LoginFailure::Refused => REFUSED.to_vec(),
            LoginFailure::Temporary => TEMPORARY.to_vec(),
            LoginFailure::TooManySessions => TOO_MANY_SESSIONS.to_vec(),
        }
    }

    /// After a successful upstream login: every byte the client sent after its
    /// login command, unconsumed and unaltered, to forward upstream once.
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
            let core = Pop3PreAuth::new(transcript.options.clone());
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
                        "/tests/transcripts/pop3/",
                        stringify!($name),
                        ".txt"
                    )),
                );
            }
        )*};
    }

    transcripts!(
        capa_before_tls,
        capa_after_tls,
        capa_plaintext_allowed,
        user_pass,
        user_pass_refused_then_retry,
        auth_plain_initial_response,
        auth_plain_without_initial_response,
        auth_login,
        auth_list_and_cancel,
        auth_bad_base64,
        auth_before_tls_refused,
        auth_authzid_other_user,
        apop_refused,
        nul_in_line,
        three_bad_commands_close,
        pipelined_after_auth,
        stls_discards_following_bytes,
        stls_when_tls_active,
        temporary_failure,
        quit,
        oversized_line,
    );

    #[test]
    fn ten_megabyte_line_keeps_memory_bounded() {
        let options = Options {
            tls_active: true,
            ..Options::default()
        };
        let mut core = Pop3PreAuth::new(options.clone());
        let mut actions = Vec::new();
        let chunk = vec![b'A'; 4096];
        for _ in 0..(10 * 1024 * 1024 / chunk.len()) {
            core.feed(&chunk);
            actions.extend(std::iter::from_fn(|| core.next_action()));
            assert!(core.buffered() <= options.max_line + 2);
        }
        core.feed(b"\r\nCAPA\r\n");
        actions.extend(std::iter::from_fn(|| core.next_action()));
        assert_eq!(actions.len(), 2, "{actions:?}");
        assert_eq!(actions[0], Action::Send(b"-ERR Line too long\r\n".to_vec()));
        let Action::Send(capa) = &actions[1] else {
            panic!("{actions:?}")
        };
        assert!(capa.starts_with(b"+OK Capability list follows\r\n"));
    }

    #[test]
    fn refusal_bytes_are_the_same_for_every_reason() {
        let options = Options {
            tls_active: true,
            ..Options::default()
        };
        let mut malformed = Pop3PreAuth::new(options.clone());
        // authzid names somebody else: refused by the core itself.
        malformed.feed(b"AUTH PLAIN Ym9iAGFsaWNlAHB3\r\n");
        let Some(Action::Send(by_core)) = malformed.next_action() else {
            panic!()
        };
        let mut refused = Pop3PreAuth::new(options);
        refused.feed(b"USER alice\r\nPASS pw\r\n");
        assert!(refused.next_action().is_some());
        assert!(matches!(refused.next_action(), Some(Action::Login { .. })));
        assert_eq!(by_core, refused.login_failed(LoginFailure::Refused));
    }
}
