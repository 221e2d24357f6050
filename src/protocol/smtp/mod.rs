//! SMTP submission (RFC 5321, RFC 6409, RFC 4954, RFC 3207) up to
//! authentication, without I/O.
//!
//! - [`server`]: the client-facing conversation before AUTH (EHLO, STARTTLS,
//!   AUTH).
//! - [`upstream`]: postern's own submission login to the protected server.
//! - [`reply`]: the server replies both of postern's upstream conversations read.

pub mod reply;
pub mod server;
pub mod upstream;
