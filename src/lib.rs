//! postern: a 2-Step Authentication gateway in front of IMAP, POP3 and SMTP
//! submission servers.
#![forbid(unsafe_code)]

pub mod policy;
pub mod protocol;
pub mod secret;
pub mod store;
