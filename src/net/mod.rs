//! Sockets: listeners, the TLS acceptor and connector, and the client stream type
//! that changes from plain to TLS on STARTTLS.

mod client_key;
pub mod limiter;
pub mod listener;
pub mod proxy;
pub mod stream;
pub mod tls;

pub use client_key::ClientKey;
