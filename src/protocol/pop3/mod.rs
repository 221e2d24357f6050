//! POP3 (RFC 1939, RFC 2449, RFC 5034) up to authentication, without I/O.
//!
//! - [`server`]: the client-facing AUTHORIZATION state (CAPA, STLS, USER/PASS,
//!   AUTH).
//! - [`upstream`]: postern's own login to the protected server.

pub mod server;
pub mod upstream;
