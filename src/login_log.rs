//! The login log line: one `postern::login` event per login attempt on every
//! channel (IMAP, POP3, SMTP, the web sign-in and its second step, the system
//! administrator's sign-in), always with the same fields in the same order, because
//! operators' tools read it: the fail2ban filter `contrib/fail2ban/postern.conf`
//! bans on it, and `tests/fail2ban/run.sh` runs that filter over what a real
//! `serve` wrote. Every channel logs through [`LoginAttempt`]; nothing else writes
//! to the `postern::login` target.
//!
//! In the text format (the default) a line reads
//!
//! ```text
//! INFO postern::login: protocol=imap method=LOGIN user=bob@example.org client=192.0.2.7 credential=primary result="refused" reason="upstream-refused" upstream="NO [AUTHENTICATIONFAILED] Authentication failed."
//! ```
//!
//! - `protocol`, `method`, `user`, `client` and `credential` are bare words; the user
//!   name is what the client typed, with control characters escaped so it cannot
//!   start a line of its own, and cut after 256 characters. It comes before `client=`, so a name that imitates
//!   the rest of the line cannot move a ban onto another address (the filter takes
//!   the last `client=`).
//! - `result` is one of `ok`, `password-ok` (the web sign-in's first step), `refused`
//!   (the client's fault: what fail2ban counts), `limited` (right credentials,
//!   but too many sessions of that user from that client) and `unavailable` (postern's or the
//!   upstream's fault, at WARN, never counted); `reason` and `upstream` are quoted,
//!   so neither can contain another `result="`.
//!
//! Never a secret: no password, app password or code is ever a field.

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use tracing::{Level, event};

/// How a login attempt ended, as logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoginResult {
    Ok,
    PasswordOk,
    Refused,
    Limited,
    Unavailable,
}

impl LoginResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::PasswordOk => "password-ok",
            Self::Refused => "refused",
            Self::Limited => "limited",
            Self::Unavailable => "unavailable",
        }
    }
}

/// One login attempt, logged by one of the terminal methods ([`LoginAttempt::ok`],
/// [`LoginAttempt::refused`], ...).
#[must_use = "a login attempt is logged by ok(), password_ok(), refused() or unavailable()"]
pub struct LoginAttempt<'a> {
    protocol: &'a str,
    method: &'a str,
    user: &'a str,
    client: IpAddr,
    credential: Option<&'a (dyn fmt::Display + Sync)>,
    upstream: Option<&'a str>,
}

impl<'a> LoginAttempt<'a> {
    /// `protocol` is `imap`, `pop3`, `smtp`, `web` or `admin`; `method` how the
    /// secret was presented (`LOGIN`, `PLAIN`, `USER`, `password`, `second-step`).
    pub fn new(protocol: &'a str, method: &'a str, user: &'a str, client: IpAddr) -> Self {
        Self {
            protocol,
            method,
            user,
            client,
            credential: None,
            upstream: None,
        }
    }

    /// Which credential was presented (`primary`, `app-password:<id>`).
    pub fn credential(mut self, credential: &'a (dyn fmt::Display + Sync)) -> Self {
        self.credential = Some(credential);
        self
    }

    /// What the upstream server answered.
    pub fn upstream(mut self, reply: &'a str) -> Self {
        self.upstream = Some(reply);
        self
    }

    /// The client is logged in.
    pub fn ok(self) {
        self.log(LoginResult::Ok, None);
    }

    /// The web sign-in's password was right; `next` is the step that follows.
    pub fn password_ok(self, next: &str) {
        self.log(LoginResult::PasswordOk, Some(next));
    }

    /// Refused for a reason that is the client's (a wrong password or code, a
    /// credential the policy does not accept, a blocked account).
    pub fn refused(self, reason: &str) {
        self.log(LoginResult::Refused, Some(reason));
    }

    /// The credentials were right, but a limit keeps the session from opening
    /// (too many sessions of this user from this client); not the client's
    /// guess, so never counted by fail2ban.
    pub fn limited(self, reason: &str) {
        self.log(LoginResult::Limited, Some(reason));
    }

    /// Not decided: the database or the upstream server failed.
    pub fn unavailable(self, reason: &str) {
        self.log(LoginResult::Unavailable, Some(reason));
    }

    fn log(self, result: LoginResult, reason: Option<&str>) {
        let user = Escaped(self.user);
        let credential = self.credential.map(tracing::field::display);
        // `event!` needs its level as a constant, hence the two arms; the fields
        // are listed once, in `login_event!`.
        macro_rules! login_event {
            ($level:expr) => {
                event!(
                    target: "postern::login",
                    $level,
                    protocol = %self.protocol,
                    method = %self.method,
                    user = %user,
                    client = %self.client,
                    credential,
                    result = result.as_str(),
                    reason,
                    upstream = self.upstream,
                )
            };
        }
        if result == LoginResult::Unavailable {
            login_event!(Level::WARN);
        } else {
            login_event!(Level::INFO);
        }
    }
}

/// The longest user name a line shows, in characters; longer ones end in `…`.
const MAX_USER_CHARS: usize = 256;

/// A client-typed name with control characters (CR, LF, ...) escaped, so it stays
/// on its line, and cut at [`MAX_USER_CHARS`], so a 60 kB name is not logged whole.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(MAX_USER_CHARS) {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        if chars.next().is_some() {
            f.write_char('…')?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The text the default formatter writes for whatever `f` logs.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                self.0.lock().expect("buffer").extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().expect("buffer").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn every_result_has_the_same_fields_in_the_same_order() {
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let text = logged(|| {
            LoginAttempt::new("imap", "LOGIN", "bob@example.org", ip)
                .credential(&"primary")
                .upstream("NO \"x\" result=\"ok\"")
                .refused("upstream-refused");
            LoginAttempt::new("smtp", "PLAIN", "bob@example.org", ip)
                .credential(&"app-password:8")
                .ok();
            LoginAttempt::new("web", "password", "bob@example.org", ip).password_ok("second-step");
            LoginAttempt::new("pop3", "USER", "bob@example.org", ip).unavailable("store down");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                " INFO postern::login: protocol=imap method=LOGIN user=bob@example.org client=192.0.2.7 credential=primary result=\"refused\" reason=\"upstream-refused\" upstream=\"NO \\\"x\\\" result=\\\"ok\\\"\"",
                " INFO postern::login: protocol=smtp method=PLAIN user=bob@example.org client=192.0.2.7 credential=app-password:8 result=\"ok\"",
                " INFO postern::login: protocol=web method=password user=bob@example.org client=192.0.2.7 result=\"password-ok\" reason=\"second-step\"",
                " WARN postern::login: protocol=pop3 method=USER user=bob@example.org client=192.0.2.7 result=\"unavailable\" reason=\"store down\"",
            ]
        );
    }

    #[test]
    fn a_typed_name_cannot_start_a_line_of_its_own() {
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let text = logged(|| {
            LoginAttempt::new(
                "imap",
                "LOGIN",
                "x\r\n INFO postern::login: protocol=imap client=198.51.100.1",
                ip,
            )
            .refused("unknown");
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("user=x\\r\\n INFO"), "{text}");
    }

    #[test]
    fn a_long_name_is_cut() {
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let name = "a".repeat(60_000);
        let text = logged(|| LoginAttempt::new("web", "password", &name, ip).refused("x"));
        let shown = format!("user={}… client=192.0.2.7", "a".repeat(MAX_USER_CHARS));
        assert!(text.contains(&shown), "{}", text.len());
    }
}
