//! Protocol cores: framing, SASL and the pre-login state machines of IMAP, POP3 and
//! SMTP submission.
//!
//! Nothing in here performs I/O or imports tokio. A core is fed bytes and returns
//! what to write and what to do next; the drivers in `crate::session` own the
//! sockets. That keeps every parser unit-testable at any chunk size and fuzzable.

pub mod imap;
pub mod line;
pub mod pop3;
pub mod sasl;
pub mod smtp;
pub mod upstream;

#[cfg(test)]
mod testing;
