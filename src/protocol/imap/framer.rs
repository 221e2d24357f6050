//! IMAP framing with byte caps: imap-codec's [`Fragmentizer`] splits input into
//! lines and literals before anything is parsed (RFC 9051 §4.3), so oversized or
//! garbage input is dropped without being buffered.
//!
//! The wrapper adds one thing a proxy needs: it knows which received bytes the
//! fragmentizer has not consumed yet, so that after a login the commands the
//! client pipelined behind it are forwarded upstream exactly once, in order.

use imap_codec::fragmentizer::{FragmentInfo, Fragmentizer};

pub use imap_codec::fragmentizer::{LineEnding, LiteralAnnouncement};

pub struct Framer {
    fragmentizer: Fragmentizer,
    /// Bytes pushed but not yet consumed by the fragmentizer.
    unconsumed: Vec<u8>,
    /// Bytes of the current message consumed so far.
    position: usize,
}

impl Framer {
    /// `max_message` caps what one message (a command with its literals) may
    /// occupy in memory.
    pub fn new(max_message: u32) -> Self {
        Self {
            fragmentizer: Fragmentizer::new(max_message),
            unconsumed: Vec::new(),
            position: 0,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.fragmentizer.enqueue_bytes(bytes);
        self.unconsumed.extend_from_slice(bytes);
    }

    /// The next fragment of the current message, or `None` when more bytes are
    /// needed (then every pushed byte has been consumed).
    pub fn progress(&mut self) -> Option<FragmentInfo> {
        let fragment = self.fragmentizer.progress();
        match fragment {
            None => {
                self.position += self.unconsumed.len();
                self.unconsumed.clear();
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
            }
        }
        fragment
    }

    pub fn is_message_complete(&self) -> bool {
        self.fragmentizer.is_message_complete()
    }

    pub fn is_too_long(&self) -> bool {
        self.fragmentizer.is_max_message_size_exceeded()
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
                Some(_) if framer.is_message_complete() => {
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
                Some(_) => {}
                None => match chunks.next() {
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
    fn oversized_lines_are_not_buffered() {
        let mut framer = Framer::new(64);
        let line = vec![b'x'; 100_000];
        for c in line.chunks(1000) {
            framer.push(c);
            assert!(framer.progress().is_none());
            assert!(framer.message().len() <= 64);
            assert!(framer.unconsumed().is_empty());
        }
        framer.push(b"\r\nz NOOP\r\n");
        assert!(framer.progress().is_some());
        assert!(framer.is_too_long());
        assert!(framer.progress().is_some());
        assert_eq!(framer.message(), b"z NOOP\r\n");
    }
}
