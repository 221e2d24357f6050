//! Sockets: listeners, the TLS acceptor and connector, and the client stream type
//! that changes from plain to TLS on STARTTLS.

pub mod limiter;
pub mod proxy;
pub mod stream;
pub mod tls;
