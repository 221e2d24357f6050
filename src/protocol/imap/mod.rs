//! IMAP (RFC 9051, RFC 3501) up to authentication, without I/O.
//!
//! - [`framer`]: lines and literals with byte caps (imap-codec's fragmentizer).
//! - [`server`]: the client-facing pre-login state machine (greeting,
//!   CAPABILITY, STARTTLS, ID, LOGIN, AUTHENTICATE).
//! - [`upstream`]: postern's own login to the protected server.

pub mod framer;
pub mod server;
pub mod upstream;
