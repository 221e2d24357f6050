//! The client side of an IMAP connection before login (RFC 9051 §6.1, §6.2).
//!
//! postern answers everything itself until the client presents credentials; then
//! the driver decides (policy, upstream login) and either reports a failure back
//! here or takes the bytes pipelined behind the login with
//! [`ImapPreAuth::into_pipelined`] and starts relaying. Nothing here does I/O.

use imap_codec::CommandCodec;
use imap_codec::fragmentizer::FragmentInfo;
use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::LiteralMode;

use super::framer::{Framed, Framer};
pub use crate::protocol::line::{Action, LoginFailure, LoginMethod, Options, PreAuthCore};
use crate::protocol::sasl::{self, Credentials, Mechanism, SaslError, SaslExchange, Step};

/// The smallest cap on one pre-login message (a command with its literals)
/// postern runs with, whatever `limits.max_line_bytes` says; the session's IMAP
/// plug-in raises `Options::max_line` to it. RFC 2971 §3.3 lets a client send,
/// before login, an ID of 30 pairs with fields up to 30 octets and values up to
/// 1024: 31,808 bytes as plain quoted strings (Dovecot's imaptest sends that),
/// nearly twice as much if every octet is an escaped `"` or `\`. 64 KiB holds
/// the largest with room for a long tag; it is also Dovecot's own
/// `imap_max_line_length`.
pub const MIN_MESSAGE_CAP: usize = 64 * 1024;

/// The wording of every refusal, whatever its cause (no oracle).
pub const REFUSAL_TEXT: &str = "Authentication failed. If 2-Step Authentication is on for your account, sign in with an application password.";

enum State {
    Commands,
    /// An AUTHENTICATE exchange waits for the client's next line.
    Sasl {
        tag: String,
        mechanism: Mechanism,
        exchange: SaslExchange,
    },
    /// A login (LOGIN or a finished AUTHENTICATE) was handed to the driver,
    /// which answers with [`PreAuthCore::login_failed`] or takes the pipelined
    /// bytes; `tag` is the client's, reused upstream and in the reply.
    LoginPending {
        tag: String,
    },
    /// STARTTLS was accepted: what the client sent after it is discarded with
    /// this core (RFC 9051 §6.2.1), nothing more is read.
    StartTls,
    /// LOGOUT, too many bad commands or an oversized message: the connection
    /// closes after the reply, nothing more is read.
    Closing,
}

pub struct ImapPreAuth {
    options: Options,
    framer: Framer,
    state: State,
    bad_commands: u32,
}

impl ImapPreAuth {
    pub fn new(options: Options) -> Self {
        Self {
            framer: Framer::new(u32::try_from(options.max_line).unwrap_or(u32::MAX)),
            options,
            state: State::Commands,
            bad_commands: 0,
        }
    }

    fn auth_allowed(&self) -> bool {
        self.options.auth_allowed()
    }

    /// The client's tag of the pending login; postern reuses it upstream.
    /// `None` unless [`PreAuthCore::next_action`] returned `Action::Login`.
    pub fn login_tag(&self) -> Option<&str> {
        match &self.state {
            State::LoginPending { tag } => Some(tag),
            _ => None,
        }
    }

    /// Whether the core reads no more client bytes until the driver acts.
    fn handed_over(&self) -> bool {
        matches!(
            self.state,
            State::LoginPending { .. } | State::StartTls | State::Closing
        )
    }

    /// The capability list for the current state (RFC 9051 §7.2.2).
    pub fn capabilities(&self) -> String {
        let mut caps = String::from("IMAP4rev1 SASL-IR ID LITERAL+");
        if !self.options.tls_active && self.options.starttls_available {
            caps.push_str(" STARTTLS");
        }
        if self.auth_allowed() {
            caps.push_str(" AUTH=PLAIN AUTH=LOGIN");
        } else {
            caps.push_str(" LOGINDISABLED");
        }
        caps
    }

    fn tag_or_star(&self) -> String {
        self.framer
            .fragmentizer()
            .decode_tag()
            .map_or_else(|| "*".to_owned(), |t| t.inner().to_owned())
    }

    fn bad(&mut self, tag: &str, text: &str) -> Action {
        self.bad_commands += 1;
        if self.bad_commands >= self.options.max_bad_commands {
            self.state = State::Closing;
            return Action::Close(
                format!("{tag} BAD {text}\r\n* BYE Too many invalid commands\r\n").into_bytes(),
            );
        }
        Action::Send(format!("{tag} BAD {text}\r\n").into_bytes())
    }

    fn complete_message(&mut self) -> Action {
        match std::mem::replace(&mut self.state, State::Commands) {
            State::Sasl {
                tag,
                mechanism,
                exchange,
            } => {
                let line = strip_line_ending(self.framer.message()).to_vec();
                self.sasl_step(tag, mechanism, exchange.step(&line))
            }
            _ => self.command(),
        }
    }

    fn sasl_step(&mut self, tag: String, mechanism: Mechanism, step: Step) -> Action {
        match step {
            Step::Challenge(exchange, prompt) => {
                self.state = State::Sasl {
                    tag,
                    mechanism,
                    exchange,
                };
                Action::Send(format!("+ {}\r\n", sasl::encode(prompt)).into_bytes())
            }
            Step::Done(credentials) => {
                self.state = State::LoginPending { tag };
                Action::Login {
                    credentials,
                    method: LoginMethod::Sasl(mechanism),
                }
            }
            Step::Failed(SaslError::Cancelled) => {
                Action::Send(format!("{tag} BAD Authentication cancelled\r\n").into_bytes())
            }
            Step::Failed(SaslError::BadBase64) => self.bad(&tag, "Invalid base64"),
            Step::Failed(SaslError::AuthzidMismatch) => Action::Send(
                format!("{tag} NO [AUTHENTICATIONFAILED] {REFUSAL_TEXT}\r\n").into_bytes(),
            ),
            Step::Failed(SaslError::Malformed) => self.bad(&tag, "Malformed authentication data"),
        }
    }

    /// A message passed the cap (RFC 9051 §7.1.5: BYE, the server is closing).
    /// Nothing of it is echoed, not even its tag: an overlong line is as likely
    /// another protocol's request as an IMAP command. The tag of an AUTHENTICATE
    /// whose response is too long was parsed from a whole command, so that
    /// command gets its tagged answer.
    fn too_long(&mut self) -> Action {
        let reply = match std::mem::replace(&mut self.state, State::Closing) {
            State::Sasl { tag, .. } => {
                format!(
                    "{tag} BAD Authentication line too long\r\n* BYE [TOOBIG] Line too long\r\n"
                )
            }
            _ => "* BYE [TOOBIG] Command line too long\r\n".to_owned(),
        };
        Action::Close(reply.into_bytes())
    }

    fn command(&mut self) -> Action {
        let tag = self.tag_or_star();
        let command = match self
            .framer
            .fragmentizer()
            .decode_message(&CommandCodec::default())
        {
            Ok(command) => command,
            Err(_) => return self.bad(&tag, "Invalid command"),
        };
        let tag = command.tag.inner().to_owned();
        match command.body {
            CommandBody::Capability => Action::Send(
                format!(
                    "* CAPABILITY {}\r\n{tag} OK CAPABILITY completed\r\n",
                    self.capabilities()
                )
                .into_bytes(),
            ),
            CommandBody::Noop => Action::Send(format!("{tag} OK NOOP completed\r\n").into_bytes()),
            CommandBody::Logout => {
                self.state = State::Closing;
                Action::Close(
                    format!("* BYE postern logging out\r\n{tag} OK LOGOUT completed\r\n")
                        .into_bytes(),
                )
            }
            CommandBody::Id { .. } => Action::Send(
                format!("* ID (\"name\" \"postern\")\r\n{tag} OK ID completed\r\n").into_bytes(),
            ),
            CommandBody::StartTLS if self.options.tls_active => {
                self.bad(&tag, "TLS is already active")
            }
            CommandBody::StartTLS if !self.options.starttls_available => {
                self.bad(&tag, "STARTTLS is not available")
            }
            CommandBody::StartTLS => {
                self.state = State::StartTls;
                Action::StartTls(format!("{tag} OK Begin TLS negotiation now\r\n").into_bytes())
            }
            CommandBody::Login { .. } | CommandBody::Authenticate { .. }
                if !self.auth_allowed() =>
            {
                Action::Send(
                    format!("{tag} NO [PRIVACYREQUIRED] Use STARTTLS or the TLS port first\r\n")
                        .into_bytes(),
                )
            }
            CommandBody::Login { username, password } => {
                match Credentials::new(username.as_ref(), password.declassify().as_ref()) {
                    Ok(credentials) => {
                        self.state = State::LoginPending { tag };
                        Action::Login {
                            credentials,
                            method: LoginMethod::LoginCommand,
                        }
                    }
                    Err(_) => self.bad(&tag, "Invalid user name or password syntax"),
                }
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                let mechanism = match mechanism {
                    AuthMechanism::Plain => Mechanism::Plain,
                    AuthMechanism::Login => Mechanism::Login,
                    _ => {
                        return Action::Send(
                            format!("{tag} NO Unsupported authentication mechanism\r\n")
                                .into_bytes(),
                        );
                    }
                };
                let step = SaslExchange::start_decoded(
                    mechanism,
                    initial_response.as_ref().map(|ir| ir.declassify().as_ref()),
                );
                self.sasl_step(tag, mechanism, step)
            }
            _ => self.bad(&tag, "Log in first"),
        }
    }
}

impl PreAuthCore for ImapPreAuth {
    fn greeting(&self) -> Vec<u8> {
        format!(
            "* OK [CAPABILITY {}] postern ready\r\n",
            self.capabilities()
        )
        .into_bytes()
    }

    fn feed(&mut self, bytes: &[u8]) {
        if !self.handed_over() {
            self.framer.push(bytes);
        }
    }

    fn next_action(&mut self) -> Option<Action> {
        if self.handed_over() {
            return None;
        }
        loop {
            let fragment = match self.framer.progress() {
                Framed::Fragment(fragment) => fragment,
                Framed::Incomplete => return None,
                Framed::TooLong => return Some(self.too_long()),
            };
            if let FragmentInfo::Line {
                announcement: Some(announcement),
                end,
                ..
            } = fragment
            {
                let room = self.options.max_line.saturating_sub(end);
                let fits = (announcement.length as usize) <= room;
                match (announcement.mode, fits) {
                    (LiteralMode::Sync, true) => {
                        return Some(Action::Send(b"+ Ready for literal data\r\n".to_vec()));
                    }
                    (LiteralMode::Sync, false) => {
                        // The client waits for "+": refusing now keeps us in sync.
                        let tag = self.tag_or_star();
                        self.framer.skip_message();
                        return Some(self.bad(&tag, "Literal too large"));
                    }
                    (LiteralMode::NonSync, false) => {
                        // RFC 7888 §4: the bytes are already on their way.
                        self.state = State::Closing;
                        return Some(Action::Close(
                            b"* BYE [TOOBIG] Literal too large\r\n".to_vec(),
                        ));
                    }
                    (LiteralMode::NonSync, true) => {}
                }
            }
            if self.framer.is_message_complete() {
                return Some(self.complete_message());
            }
        }
    }

    /// The reply for a login the driver could not complete; the client may retry.
    fn login_failed(&mut self, failure: LoginFailure) -> Vec<u8> {
        // Called only for a pending login; a stray call answers untagged.
        let tag = match std::mem::replace(&mut self.state, State::Commands) {
            State::LoginPending { tag } => tag,
            _ => "*".to_owned(),
        };
        match failure {
            LoginFailure::Refused => {
                format!("{tag} NO [AUTHENTICATIONFAILED] {REFUSAL_TEXT}\r\n").into_bytes()
            }
            LoginFailure::Temporary => {
                format!("{tag} NO [UNAVAILABLE] Temporary failure, please try again later.\r\n")
                    .into_bytes()
            }
            // RFC 5530 LIMIT: an operational limit, not a refusal.
            LoginFailure::TooManySessions => format!(
                "{tag} NO [LIMIT] Too many connections for this account from your address; \
                 close some and try again.\r\n"
            )
            .into_bytes(),
        }
    }

    /// Every byte the client sent after the login command, to forward upstream.
    fn into_pipelined(self) -> Vec<u8> {
        self.framer.into_unconsumed()
    }

    /// Bytes the core holds: the current message (capped at `max_line`) and
    /// what the framer has not consumed yet (nothing once `next_action` returned
    /// `None`, except while a login is pending).
    fn buffered(&self) -> usize {
        self.framer.message().len() + self.framer.unconsumed().len()
    }
}

fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests;
