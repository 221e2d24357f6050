//! SMTP replies read from a server (RFC 5321 §4.2), without I/O: the one
//! parser for postern's upstream login and its extension probe.
//!
//! `250-` continues a reply, `250 ` (or a bare code) ends it; every line of one
//! reply carries the same code. Line and line-count caps keep a hostile server
//! from making postern buffer without bound.

use crate::protocol::line::{Frame, LineReader};
use crate::protocol::upstream::log_safe;

/// One complete reply: its code and its lines without line endings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<Vec<u8>>,
}

impl Reply {
    /// The first digit: 2 success, 3 go on, 4 temporary, 5 permanent.
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    /// Every line, for a log.
    pub fn detail(&self) -> String {
        log_safe(&self.lines.join(&b' '))
    }

    /// The text of every line after the first, without `250-`: the extension
    /// lines of an EHLO reply (RFC 5321 §4.1.1.1), e.g. `SIZE 10240000`.
    pub fn extensions(&self) -> Vec<String> {
        self.lines
            .iter()
            .skip(1)
            .map(|line| String::from_utf8_lossy(line.get(4..).unwrap_or_default()).into())
            .collect()
    }
}

/// Feed it a server's bytes; [`ReplyReader::next_reply`] hands out complete replies.
#[derive(Debug)]
pub struct ReplyReader {
    reader: LineReader,
    max_line: usize,
    max_lines: usize,
    /// Lines of the reply being read.
    pending: Vec<Vec<u8>>,
}

impl ReplyReader {
    /// `max_line`: bytes per line, line ending excluded; `max_lines`: lines per reply.
    pub fn new(max_line: usize, max_lines: usize) -> Self {
        Self {
            reader: LineReader::new(max_line),
            max_line,
            max_lines,
            pending: Vec::new(),
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.reader.feed(bytes);
    }

    /// Forgets every byte received so far (RFC 3207 §4.2: nothing received in
    /// plain text may be read as if it came through TLS).
    pub fn discard(&mut self) {
        self.reader = LineReader::new(self.max_line);
        self.pending.clear();
    }

    /// The bytes received after the last reply handed out.
    pub fn into_rest(self) -> Vec<u8> {
        self.reader.into_rest()
    }

    /// The next complete reply, an error for a malformed one, `None` for more bytes.
    pub fn next_reply(&mut self) -> Option<Result<Reply, String>> {
        loop {
            let line = match self.reader.next_frame()? {
                Frame::Line(line) => line,
                Frame::TooLong => return Some(Err("reply line too long".into())),
            };
            let code = match line.get(..3) {
                Some(digits) if digits.iter().all(u8::is_ascii_digit) => digits,
                _ => return Some(Err(format!("malformed reply: {}", log_safe(&line)))),
            };
            if self
                .pending
                .first()
                .is_some_and(|first| first[..3] != *code)
            {
                return Some(Err(format!(
                    "reply code changed within a reply: {}",
                    log_safe(&line)
                )));
            }
            let code = code
                .iter()
                .fold(0u16, |n, digit| n * 10 + u16::from(digit - b'0'));
            let more = line.get(3) == Some(&b'-');
            self.pending.push(line);
            if !more {
                return Some(Ok(Reply {
                    code,
                    lines: std::mem::take(&mut self.pending),
                }));
            }
            if self.pending.len() > self.max_lines {
                return Some(Err("reply has too many lines".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_line_reply_is_read_at_every_split() {
        let input = b"250-mx.test\r\n250-SIZE 100\r\n250 AUTH PLAIN\r\n220 ready\r\n";
        for chunk in 1..=input.len() {
            let mut reader = ReplyReader::new(64, 8);
            let mut replies = Vec::new();
            for part in input.chunks(chunk) {
                reader.feed(part);
                while let Some(reply) = reader.next_reply() {
                    replies.push(reply.unwrap());
                }
            }
            assert_eq!(replies.len(), 2, "chunk {chunk}");
            assert_eq!(replies[0].code, 250);
            assert_eq!(replies[0].extensions(), vec!["SIZE 100", "AUTH PLAIN"]);
            assert_eq!(replies[1].code, 220);
        }
    }

    #[test]
    fn malformed_and_oversized_replies_are_errors() {
        let mut reader = ReplyReader::new(64, 2);
        reader.feed(b"250-a\r\n251 b\r\n");
        assert!(reader.next_reply().unwrap().is_err());
        let mut reader = ReplyReader::new(64, 2);
        reader.feed(b"ok\r\n");
        assert!(reader.next_reply().unwrap().is_err());
        let mut reader = ReplyReader::new(64, 2);
        reader.feed(b"250-a\r\n250-b\r\n250-c\r\n250 d\r\n");
        assert!(reader.next_reply().unwrap().is_err());
    }
}
