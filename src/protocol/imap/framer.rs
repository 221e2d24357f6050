//! IMAP framing with byte caps: imap-codec's [`Fragmentizer`] splits input into
//! lines and literals before anything is parsed (RFC 9051 §4.3), so oversized or
//! garbage input is dropped without being buffered.
//!
//! The wrapper adds two things a proxy needs:
//! - it says the moment a message passes its cap ([`Framed::TooLong`]), not only
//!   once the line ends: a client that never sends CRLF would otherwise be
//!   read forever without an answer. Past the cap the framer takes no more
//!   input, so what it holds stays within the cap.
//! - it knows which received bytes the fragmentizer has not consumed yet, so that
//!   after a login the commands the client pipelined behind it are forwarded
//!   upstream exactly once, in order.

use imap_codec::fragmentizer::{FragmentInfo, Fragmentizer};

pub use imap_codec::fragmentizer::{LineEnding, LiteralAnnouncement};

/// What [`Framer::progress`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed {
    /// The next fragment of the current message; the message is whole when
    /// [`Framer::is_message_complete`] says so.
    Fragment(FragmentInfo),
    /// More bytes are needed; every byte pushed so far has been consumed.
    Incomplete,
    /// The current message passed the cap. Nothing after this point is framed:
    /// the stream cannot be resynchronised without reading the rest of an
    /// unbounded line, so the caller answers and closes.
    TooLong,
}

pub struct Framer {
    fragmentizer: Fragmentizer,
    /// Bytes pushed but not yet consumed by the fragmentizer.
    unconsumed: Vec<u8>,
    /// Bytes of the current message consumed so far.
    position: usize,
    /// A message passed the cap: input is refused from then on.
    too_long: bool,
}

impl Framer {
    /// `max_message` caps what one message (a command with its literals, line
    /// endings included) may occupy in memory.
    pub fn new(max_message: u32) -> Self {
        Self {
            fragmentizer: Fragmentizer::new(max_message),
            unconsumed: Vec::new(),
            position: 0,
            too_long: false,
        }
    }

    /// Takes bytes read from the client (dropped once a message was too long).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.too_long {
            return;
        }
        self.fragmentizer.enqueue_bytes(bytes);
        self.unconsumed.extend_from_slice(bytes);
    }

    /// The next fragment of the current message, "need more bytes", or "too
    /// long" as soon as the message has passed the cap, wherever its line ends.
    pub fn progress(&mut self) -> Framed {
        if self.too_long {
            return Framed::TooLong;
        }
        let fragment = self.fragmentizer.progress();
        if self.fragmentizer.is_max_message_size_exceeded() {
            // The fragmentizer would go on reading up to the next LF, however
            // far away; stop here and hold nothing more.
            self.too_long = true;
            self.unconsumed = Vec::new();
            return Framed::TooLong;
        }
        match fragment {
            None => {
                self.position += self.unconsumed.len();
                self.unconsumed.clear();
                Framed::Incomplete
            }
            Some(info) => {
                let end = info.range().end;
                let consumed = end.saturating_sub(self.position).min(self.unconsumed.len());
                self.unconsumed.drain(..consumed);
                self.position = if self.fragmentizer.is_message_complete() {
                    0
                } else {
                    end
                };
                Framed::Fragment(info)
            }
        }
    }

    pub fn is_message_complete(&self) -> bool {
        self.fragmentizer.is_message_complete()
    }

    pub fn message(&self) -> &[u8] {
        self.fragmentizer.message_bytes()
    }

    pub fn fragmentizer(&self) -> &Fragmentizer {
        &self.fragmentizer
    }

    /// Drops the current message (only safe before a synchronizing literal was
    /// acknowledged: the client then never sends it).
    pub fn skip_message(&mut self) {
        self.fragmentizer.skip_message();
        self.position = 0;
    }

    /// Bytes received after the last fragment handed out, untouched.
    pub fn unconsumed(&self) -> &[u8] {
        &self.unconsumed
    }

    pub fn into_unconsumed(self) -> Vec<u8> {
        self.unconsumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads whole messages; returns them and what is left unconsumed.
    fn messages(input: &[u8], chunk: usize, stop_after: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut framer = Framer::new(1024);
        let mut out = Vec::new();
        let mut chunks = input.chunks(chunk);
        loop {
            match framer.progress() {
                Framed::Fragment(_) if framer.is_message_complete() => {
                    out.push(framer.message().to_vec());
                    if out.len() == stop_after {
                        // Whatever the fragmentizer has not seen stays in `chunks`.
                        let mut rest = framer.into_unconsumed();
                        for c in chunks {
                            rest.extend_from_slice(c);
                        }
                        return (out, rest);
                    }
                }
                Framed::Fragment(_) => {}
                Framed::TooLong => panic!("no message here is too long"),
                Framed::Incomplete => match chunks.next() {
                    Some(c) => framer.push(c),
                    None => return (out, framer.into_unconsumed()),
                },
            }
        }
    }

    #[test]
    fn pipelined_bytes_after_a_message_are_kept_at_every_split() {
        let input = b"a LOGIN {5}\r\nalice {2+}\r\npw\r\nb SELECT INBOX\r\nc NOOP\r\n";
        for chunk in 1..=input.len() {
            let (msgs, rest) = messages(input, chunk, 1);
            assert_eq!(msgs, vec![b"a LOGIN {5}\r\nalice {2+}\r\npw\r\n".to_vec()]);
            assert_eq!(rest, b"b SELECT INBOX\r\nc NOOP\r\n", "chunk {chunk}");
        }
    }

    #[test]
    fn a_message_past_the_cap_is_reported_at_once_at_every_split() {
        let mut input = b"a NOOP\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 300));
        for chunk in 1..=input.len() {
            let mut framer = Framer::new(64);
            let mut found = Vec::new();
            let mut fed = 0;
            for c in input.chunks(chunk) {
                framer.push(c);
                fed += c.len();
                loop {
                    match framer.progress() {
                        Framed::Fragment(_) => found.push(framer.message().to_vec()),
                        Framed::Incomplete => break,
                        Framed::TooLong => {
                            // No later than the chunk that carried byte 65 of
                            // the second message, with no line end in sight.
                            assert!(fed >= 8 + 65 && fed < 8 + 65 + chunk, "chunk {chunk}");
                            assert_eq!(found, vec![b"a NOOP\r\n".to_vec()], "chunk {chunk}");
                            assert!(framer.message().len() <= 64);
                            assert!(framer.unconsumed().is_empty());
                            // Nothing more is taken in or framed.
                            framer.push(b"\r\nb NOOP\r\n");
                            assert_eq!(framer.progress(), Framed::TooLong);
                            assert!(framer.unconsumed().is_empty());
                            break;
                        }
                    }
                }
                if framer.progress() == Framed::TooLong {
                    break;
                }
            }
            assert_eq!(framer.progress(), Framed::TooLong, "chunk {chunk}");
        }
    }

    #[test]
    fn a_message_of_exactly_the_cap_is_framed() {
        let line = format!("a ID ({})\r\n", "x".repeat(55));
        assert_eq!(line.len(), 64);
        let mut framer = Framer::new(64);
        framer.push(line.as_bytes());
        assert!(matches!(framer.progress(), Framed::Fragment(_)));
        assert!(framer.is_message_complete());
        assert_eq!(framer.message(), line.as_bytes());
    }
}
