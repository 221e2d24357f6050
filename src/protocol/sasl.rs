//! SASL PLAIN (RFC 4616) and LOGIN, as carried by IMAP AUTHENTICATE (RFC 9051
//! §6.2.2), POP3 AUTH (RFC 5034) and SMTP AUTH (RFC 4954).
//!
//! The exchange is a value: [`SaslExchange::start`] and [`SaslExchange::step`]
//! consume it and return the next [`Step`]. Each protocol core wraps the challenge
//! in its own continuation syntax (`+ `, `+ `, `334 `) and feeds back the client's
//! line without its line ending. No I/O here.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::secret::Secret;

/// Longest user name accepted from a client, in bytes.
pub const MAX_USERNAME: usize = 256;
/// Longest password accepted from a client, in bytes.
pub const MAX_PASSWORD: usize = 1024;

/// A SASL mechanism postern offers to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    /// Mechanism names are case-insensitive (RFC 4422 §3.1).
    pub fn parse(name: &[u8]) -> Option<Self> {
        if name.eq_ignore_ascii_case(b"PLAIN") {
            Some(Self::Plain)
        } else if name.eq_ignore_ascii_case(b"LOGIN") {
            Some(Self::Login)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
        }
    }
}

/// What a client presented to log in: a name and a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret<String>,
}

impl Credentials {
    /// Checks the shape every protocol demands of a login before anything is looked up:
    /// UTF-8, not empty, bounded, and no NUL or other control characters (a NUL in a
    /// user name has been seen to truncate the name inside upstream servers).
    pub fn new(username: &[u8], password: &[u8]) -> Result<Self, SaslError> {
        if username.is_empty() || username.len() > MAX_USERNAME {
            return Err(SaslError::Malformed);
        }
        if password.is_empty() || password.len() > MAX_PASSWORD {
            return Err(SaslError::Malformed);
        }
        if username.iter().any(|b| b.is_ascii_control() || *b == b' ') {
            return Err(SaslError::Malformed);
        }
        if password
            .iter()
            .any(|b| *b == 0 || *b == b'\r' || *b == b'\n')
        {
            return Err(SaslError::Malformed);
        }
        let username = std::str::from_utf8(username).map_err(|_| SaslError::Malformed)?;
        let password = std::str::from_utf8(password).map_err(|_| SaslError::Malformed)?;
        Ok(Self {
            username: username.to_owned(),
            password: Secret::from(password),
        })
    }
}

/// Why an exchange ended without credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The client sent `*` (RFC 4422 §3.5).
    #[error("authentication cancelled by the client")]
    Cancelled,
    /// The client's line is not valid base64.
    #[error("invalid base64")]
    BadBase64,
    /// The decoded message is not a valid PLAIN/LOGIN message or breaks a limit.
    #[error("malformed SASL message")]
    Malformed,
    /// PLAIN's authorization identity names somebody else (DESIGN: it must be empty
    /// or equal to the login name).
    #[error("authorization identity differs from the login name")]
    AuthzidMismatch,
}

/// The state of a running exchange. Transitions consume it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslExchange {
    /// PLAIN without an initial response: waiting for the one message.
    Plain,
    /// LOGIN: waiting for the user name.
    LoginUsername,
    /// LOGIN: waiting for the password.
    LoginPassword { username: Vec<u8> },
}

/// What happens next in an exchange.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this challenge (raw bytes; the caller base64-encodes it) and wait for
    /// the client's next line.
    Challenge(SaslExchange, &'static [u8]),
    /// The client is done: these are its credentials.
    Done(Credentials),
    /// The exchange failed; the caller answers with its protocol's error.
    Failed(SaslError),
}

impl SaslExchange {
    /// Starts an exchange. `initial_response` is the still base64-encoded initial
    /// response if the client sent one (`=` stands for an empty one).
    pub fn start(mechanism: Mechanism, initial_response: Option<&[u8]>) -> Step {
        match initial_response {
            None => Self::first(mechanism).challenge(),
            Some(line) => Self::first(mechanism).step(line),
        }
    }

    /// Like [`SaslExchange::start`] for protocols whose parser already decoded the
    /// initial response (IMAP's SASL-IR through imap-codec).
    pub fn start_decoded(mechanism: Mechanism, initial_response: Option<&[u8]>) -> Step {
        match initial_response {
            None => Self::first(mechanism).challenge(),
            Some(raw) => Self::first(mechanism).step_decoded(raw),
        }
    }

    fn first(mechanism: Mechanism) -> Self {
        match mechanism {
            Mechanism::Plain => SaslExchange::Plain,
            Mechanism::Login => SaslExchange::LoginUsername,
        }
    }

    fn challenge(self) -> Step {
        let prompt: &'static [u8] = match self {
            SaslExchange::Plain => b"",
            SaslExchange::LoginUsername => b"Username:",
            SaslExchange::LoginPassword { .. } => b"Password:",
        };
        Step::Challenge(self, prompt)
    }

    /// Feeds the client's next line (without CRLF).
    pub fn step(self, line: &[u8]) -> Step {
        match decode_response(line) {
            Ok(decoded) => self.step_decoded(decoded.expose()),
            Err(err) => Step::Failed(err),
        }
    }

    /// Feeds an already decoded client response.
    pub fn step_decoded(self, decoded: &[u8]) -> Step {
        match self {
            SaslExchange::Plain => match parse_plain(decoded) {
                Ok(credentials) => Step::Done(credentials),
                Err(err) => Step::Failed(err),
            },
            SaslExchange::LoginUsername if decoded.len() > MAX_USERNAME => {
                Step::Failed(SaslError::Malformed)
            }
            SaslExchange::LoginUsername => SaslExchange::LoginPassword {
                username: decoded.to_vec(),
            }
            .challenge(),
            SaslExchange::LoginPassword { username } => {
                match Credentials::new(&username, decoded) {
                    Ok(credentials) => Step::Done(credentials),
                    Err(err) => Step::Failed(err),
                }
            }
        }
    }
}

/// Decodes one client response line: `*` cancels, `=` is an empty response
/// (RFC 4954 §4, RFC 9051 §6.2.2), anything else must be base64.
pub fn decode_response(line: &[u8]) -> Result<Secret<Vec<u8>>, SaslError> {
    let line = line.trim_ascii();
    if line == b"*" {
        return Err(SaslError::Cancelled);
    }
    if line == b"=" {
        return Ok(Secret::new(Vec::new()));
    }
    // A PLAIN message is at most authzid + authcid + password + 2 NULs.
    if line.len() > (2 * MAX_USERNAME + MAX_PASSWORD + 2).div_ceil(3) * 4 {
        return Err(SaslError::Malformed);
    }
    STANDARD
        .decode(line)
        .map(Secret::new)
        .map_err(|_| SaslError::BadBase64)
}

/// Parses a decoded PLAIN message: `[authzid] NUL authcid NUL passwd` (RFC 4616 §2).
pub fn parse_plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.split(|b| *b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let credentials = Credentials::new(authcid, password)?;
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::AuthzidMismatch);
    }
    Ok(credentials)
}

/// Encodes a PLAIN message for an upstream login. `authzid` is the user to act as
/// when logging in with a master account; empty for a login as oneself.
pub fn encode_plain(authzid: &str, authcid: &str, password: &str) -> Secret<String> {
    let mut raw = Vec::with_capacity(authzid.len() + authcid.len() + password.len() + 2);
    raw.extend_from_slice(authzid.as_bytes());
    raw.push(0);
    raw.extend_from_slice(authcid.as_bytes());
    raw.push(0);
    raw.extend_from_slice(password.as_bytes());
    let encoded = STANDARD.encode(&raw);
    zeroize::Zeroize::zeroize(&mut raw);
    Secret::new(encoded)
}

/// Base64 for a challenge or a short value (`334 VXNlcm5hbWU6`).
pub fn encode(raw: &[u8]) -> String {
    STANDARD.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(raw: &[u8]) -> Vec<u8> {
        STANDARD.encode(raw).into_bytes()
    }

    #[test]
    fn plain_with_initial_response() {
        let step = SaslExchange::start(Mechanism::Plain, Some(&b64(b"\0alice@x.org\0pw")));
        let Step::Done(c) = step else {
            panic!("{step:?}")
        };
        assert_eq!(c.username, "alice@x.org");
        assert_eq!(c.password.expose(), "pw");
    }

    #[test]
    fn plain_without_initial_response_asks_with_empty_challenge() {
        let Step::Challenge(next, prompt) = SaslExchange::start(Mechanism::Plain, None) else {
            panic!()
        };
        assert_eq!(prompt, b"");
        assert!(matches!(next.step(&b64(b"u\0u\0p")), Step::Done(_)));
    }

    #[test]
    fn plain_authzid_must_be_empty_or_the_user() {
        assert_eq!(
            parse_plain(b"bob\0alice\0pw"),
            Err(SaslError::AuthzidMismatch)
        );
        assert!(parse_plain(b"alice\0alice\0pw").is_ok());
    }

    #[test]
    fn plain_rejects_wrong_shapes() {
        for bad in [
            &b"alice\0pw"[..],
            b"\0\0pw",
            b"\0alice\0",
            b"\0a\0b\0c",
            b"\0al ice\0pw",
            b"\0\xff\0pw",
        ] {
            assert_eq!(parse_plain(bad), Err(SaslError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn login_two_steps() {
        let Step::Challenge(next, prompt) = SaslExchange::start(Mechanism::Login, None) else {
            panic!()
        };
        assert_eq!(prompt, b"Username:");
        let Step::Challenge(next, prompt) = next.step(&b64(b"alice")) else {
            panic!()
        };
        assert_eq!(prompt, b"Password:");
        let Step::Done(c) = next.step(&b64(b"secret")) else {
            panic!()
        };
        assert_eq!(c.username, "alice");
        assert_eq!(c.password.expose(), "secret");
    }

    #[test]
    fn login_initial_response_is_the_user_name() {
        let Step::Challenge(_, prompt) = SaslExchange::start(Mechanism::Login, Some(&b64(b"al")))
        else {
            panic!()
        };
        assert_eq!(prompt, b"Password:");
    }

    #[test]
    fn star_cancels_and_garbage_is_bad_base64() {
        assert_eq!(
            SaslExchange::Plain.step(b"*"),
            Step::Failed(SaslError::Cancelled)
        );
        assert_eq!(
            SaslExchange::Plain.step(b"!!!"),
            Step::Failed(SaslError::BadBase64)
        );
        assert_eq!(
            SaslExchange::Plain.step(&vec![b'A'; 10_000]),
            Step::Failed(SaslError::Malformed)
        );
    }

    #[test]
    fn encode_plain_round_trips() {
        let encoded = encode_plain("alice", "proxy", "m");
        let raw = STANDARD.decode(encoded.expose()).unwrap();
        assert_eq!(raw, b"alice\0proxy\0m");
    }
}
