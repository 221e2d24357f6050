//! Line framing with a byte cap, and the types the POP3 and SMTP pre-login cores
//! share.
//!
//! [`LineReader`] splits client input into command lines before anything parses
//! it (RFC 1939 §3 and RFC 5321 §2.3.8: commands end with CRLF; a bare LF is
//! accepted too, to be liberal in what we read, RFC 1122 §1.2.2). A line longer
//! than the cap is dropped without being buffered: the reader remembers only that
//! it is discarding until the next LF, so memory stays bounded whatever the client
//! sends. "Need more bytes" is `None`, not an error.
//!
//! The reader never rewrites bytes it has not handed out as a line: what is left
//! after a login command goes upstream exactly as the client sent it
//! ([`LineReader::into_rest`]). No I/O here.

use crate::protocol::sasl::{Credentials, Mechanism};

/// Default cap on a command line, line ending excluded (RFC 5321 §4.5.3.1.4 asks
/// for at least 512; RFC 2449 §4 for 255; postern allows much more for long SASL
/// responses).
pub const DEFAULT_MAX_LINE: usize = 8192;
/// Default number of bad commands after which a pre-login core closes.
pub const DEFAULT_MAX_BAD_COMMANDS: u32 = 3;

/// Connection facts and limits a pre-login core needs; the same for POP3 and SMTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The client connection is already encrypted (implicit TLS, or after STARTTLS).
    pub tls_active: bool,
    /// The listener has a certificate, so STLS/STARTTLS may be offered.
    pub starttls_available: bool,
    /// Accept a password over an unencrypted connection (off by default: the core
    /// then refuses every login command until TLS is active).
    pub allow_plaintext_auth: bool,
    /// Longest command line in bytes, line ending excluded.
    pub max_line: usize,
    /// Bad commands (unknown, not allowed before login, malformed, too long) after
    /// which the connection is closed.
    pub max_bad_commands: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tls_active: false,
            starttls_available: true,
            allow_plaintext_auth: false,
            max_line: DEFAULT_MAX_LINE,
            max_bad_commands: DEFAULT_MAX_BAD_COMMANDS,
        }
    }
}

impl Options {
    /// Whether a password may be accepted on this connection now.
    pub fn auth_allowed(&self) -> bool {
        self.tls_active || self.allow_plaintext_auth
    }
}

/// How the client presented its credentials (for the log and the event record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginMethod {
    /// POP3 `USER` + `PASS` (RFC 1939 §7). Never produced by SMTP.
    User,
    /// IMAP `LOGIN` (RFC 9051 §6.2.3).
    LoginCommand,
    /// A SASL exchange (POP3 `AUTH`, SMTP `AUTH`).
    Sasl(Mechanism),
}

impl LoginMethod {
    /// `USER`, `PLAIN` or `LOGIN`.
    pub fn name(self) -> &'static str {
        match self {
            Self::User => "USER",
            Self::LoginCommand => "LOGIN",
            Self::Sasl(mechanism) => mechanism.name(),
        }
    }
}

/// What the session driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the client.
    Send(Vec<u8>),
    /// Write these bytes, then close the connection.
    Close(Vec<u8>),
    /// Write this reply in clear, then discard all buffered input, start TLS and
    /// build a new core with `tls_active` (RFC 2595 §4, RFC 3207 §4.2). The core
    /// returns nothing after this.
    StartTls(Vec<u8>),
    /// Decide this login (policy, then upstream). On refusal call `login_failed`;
    /// on success call `into_pipelined`.
    Login {
        /// What the client presented, shape-checked (`Credentials::new`).
        credentials: Credentials,
        /// How it presented them.
        method: LoginMethod,
    },
}

/// Why the driver refused a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// The policy or the upstream refused the credentials.
    Refused,
    /// The database or the upstream is unavailable; the client should retry later.
    Temporary,
    /// The credentials were right, but the user already has as many sessions
    /// from this client as allowed (`[limits] max_connections_per_user_ip`).
    TooManySessions,
}

/// A client-facing pre-login core (IMAP, POP3, SMTP) as everything that drives it
/// sees it: the session driver, the transcript tests and the fuzz targets.
///
/// The driver sends `greeting`, then feeds what it reads and takes actions until
/// `None`; it answers a `Login` with `login_failed` or, once the upstream accepted
/// it, consumes the core with `into_pipelined`.
pub trait PreAuthCore {
    /// The first reply to send.
    fn greeting(&self) -> Vec<u8>;
    /// Takes bytes read from the client.
    fn feed(&mut self, bytes: &[u8]);
    /// The next thing to do; `None` means more bytes are needed (or, after
    /// `StartTls`, `Close` or `Login`, that the core is waiting for the driver).
    fn next_action(&mut self) -> Option<Action>;
    /// The reply to a login the driver could not complete; the client may retry.
    fn login_failed(&mut self, failure: LoginFailure) -> Vec<u8>;
    /// After a successful upstream login: every byte the client sent after its
    /// login command, unconsumed and unaltered, to forward upstream once.
    fn into_pipelined(self) -> Vec<u8>;
    /// Bytes the core holds between feeds (bounded by the caps plus one read).
    fn buffered(&self) -> usize;
}

/// What [`LineReader::next_frame`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// One line, without its line ending (CRLF or bare LF).
    Line(Vec<u8>),
    /// A line longer than the cap was dropped (reported once per line).
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Splitting lines.
    Lines,
    /// Dropping input up to and including the next LF (the rest of an overlong line).
    Discarding,
    /// Dropping this many more bytes (an SMTP BDAT chunk that was refused).
    Skipping(u64),
    /// Keeping every byte as is, unframed and uncapped: a login is being decided
    /// and what follows belongs to the upstream.
    Raw,
}

/// A capped line splitter over client input.
#[derive(Debug)]
pub struct LineReader {
    buf: Vec<u8>,
    max_line: usize,
    mode: Mode,
    /// An overlong line was cut in `feed` and not reported yet.
    overlong: bool,
}

impl LineReader {
    /// A reader whose lines may hold up to `max_line` bytes, line ending excluded.
    pub fn new(max_line: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_line,
            mode: Mode::Lines,
            overlong: false,
        }
    }

    /// Takes client bytes. In `Discarding`/`Skipping` mode the buffer is empty (both
    /// are entered only once everything before them was consumed), so dropping
    /// from the front of `bytes` keeps the order.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        match self.mode {
            Mode::Skipping(left) => {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                bytes = &bytes[take..];
                let left = left - take as u64;
                if left > 0 {
                    self.mode = Mode::Skipping(left);
                    return;
                }
                self.mode = Mode::Lines;
            }
            Mode::Discarding => match bytes.iter().position(|b| *b == b'\n') {
                None => return,
                Some(end) => {
                    bytes = &bytes[end + 1..];
                    self.mode = Mode::Lines;
                }
            },
            Mode::Lines | Mode::Raw => {}
        }
        self.buf.extend_from_slice(bytes);
        self.cut_overlong();
    }

    /// The next complete line, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        // Reported at once, even while the rest of that line is still being
        // discarded: otherwise when the report comes, and how many overlong lines
        // it stands for, would depend on how the input was split into reads.
        if std::mem::take(&mut self.overlong) {
            return Some(Frame::TooLong);
        }
        if self.mode != Mode::Lines {
            return None;
        }
        let Some(end) = self.buf.iter().position(|b| *b == b'\n') else {
            self.cut_overlong();
            return std::mem::take(&mut self.overlong).then_some(Frame::TooLong);
        };
        let mut line: Vec<u8> = self.buf.drain(..=end).collect();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > self.max_line {
            return Some(Frame::TooLong);
        }
        Some(Frame::Line(line))
    }

    /// Drops the next `count` bytes of input unread (a refused SMTP BDAT chunk,
    /// RFC 3030 §3).
    pub fn skip(&mut self, count: u64) {
        let now = usize::try_from(count)
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        self.buf.drain(..now);
        let left = count - now as u64;
        if left > 0 {
            self.mode = Mode::Skipping(left);
        }
    }

    /// Stops framing: from now on every byte is kept as is (a login is pending).
    pub fn hold_raw(&mut self) {
        self.mode = Mode::Raw;
    }

    /// Resumes framing after a refused login.
    pub fn resume_lines(&mut self) {
        self.mode = Mode::Lines;
    }

    /// Bytes currently held (for tests and metrics).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Every byte received and not yet handed out, unaltered.
    pub fn into_rest(self) -> Vec<u8> {
        self.buf
    }

    /// If the buffer holds only an unfinished line that is already too long, drop it
    /// and discard up to its end. The `+ 1` leaves room for the CR of a line that
    /// is exactly at the cap.
    fn cut_overlong(&mut self) {
        if self.mode == Mode::Lines
            && self.buf.len() > self.max_line + 1
            && !self.buf.contains(&b'\n')
        {
            self.buf = Vec::new();
            self.mode = Mode::Discarding;
            self.overlong = true;
        }
    }
}

/// Splits a command line into its verb and the rest (RFC 1939 §3, RFC 5321
/// §4.1.1: a keyword, then arguments separated by a space). The rest has the one
/// separating space removed and is otherwise untouched.
pub fn split_command(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|b| *b == b' ') {
        Some(space) => (&line[..space], &line[space + 1..]),
        None => (line, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(reader: &mut LineReader) -> Vec<Frame> {
        std::iter::from_fn(|| reader.next_frame()).collect()
    }

    #[test]
    fn crlf_and_bare_lf_end_lines() {
        let mut reader = LineReader::new(100);
        reader.feed(b"A\r\nB\nC");
        assert_eq!(
            frames(&mut reader),
            vec![Frame::Line(b"A".to_vec()), Frame::Line(b"B".to_vec())]
        );
        assert_eq!(reader.into_rest(), b"C");
    }

    #[test]
    fn overlong_line_is_reported_once_and_dropped_at_every_split() {
        let mut input = b"OK1\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 50));
        input.extend_from_slice(b"\r\nOK2\r\n");
        for chunk in 1..=input.len() {
            let mut reader = LineReader::new(10);
            let mut got = Vec::new();
            for part in input.chunks(chunk) {
                reader.feed(part);
                got.extend(frames(&mut reader));
                assert!(reader.buffered() <= 11 + chunk);
            }
            assert_eq!(
                got,
                vec![
                    Frame::Line(b"OK1".to_vec()),
                    Frame::TooLong,
                    Frame::Line(b"OK2".to_vec())
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn unfinished_overlong_lines_are_each_reported_at_every_split() {
        let mut input = vec![b'x'; 50];
        input.extend_from_slice(b"\r\n");
        input.extend(std::iter::repeat_n(b'y', 50));
        for chunk in 1..=input.len() {
            let mut reader = LineReader::new(10);
            let mut got = Vec::new();
            for part in input.chunks(chunk) {
                reader.feed(part);
                got.extend(frames(&mut reader));
            }
            assert_eq!(got, vec![Frame::TooLong, Frame::TooLong], "chunk {chunk}");
        }
    }

    #[test]
    fn line_exactly_at_the_cap_passes() {
        for ending in [&b"\r\n"[..], b"\n"] {
            let mut input = vec![b'y'; 10];
            input.extend_from_slice(ending);
            for chunk in 1..=input.len() {
                let mut reader = LineReader::new(10);
                let mut got = Vec::new();
                for part in input.chunks(chunk) {
                    reader.feed(part);
                    got.extend(frames(&mut reader));
                }
                assert_eq!(got, vec![Frame::Line(vec![b'y'; 10])]);
            }
        }
    }

    #[test]
    fn skip_spans_buffer_and_later_feeds() {
        let mut reader = LineReader::new(100);
        reader.feed(b"abc");
        reader.skip(6);
        reader.feed(b"de");
        reader.feed(b"fNEXT\r\n");
        assert_eq!(frames(&mut reader), vec![Frame::Line(b"NEXT".to_vec())]);
    }

    #[test]
    fn raw_mode_keeps_long_lines() {
        let mut reader = LineReader::new(4);
        reader.hold_raw();
        reader.feed(&[b'z'; 100]);
        assert_eq!(reader.next_frame(), None);
        assert_eq!(reader.into_rest(), vec![b'z'; 100]);
    }
}
