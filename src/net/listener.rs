//! Mail listeners with a deep accept queue.
//!
//! `TcpListener::bind` asks the kernel for a queue of 1,024 connections. After a
//! restart every device reconnects within the same second: connections beyond
//! the queue have their handshake dropped and the client retries only after a
//! second or more (SYN retransmission), so a storm's slowest logins wait on the
//! kernel, not on postern. The kernel caps the queue at `net.core.somaxconn`.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel may hold for `accept` (capped by `net.core.somaxconn`).
pub const ACCEPT_BACKLOG: u32 = 16_384;

/// Binds a listening socket like `TcpListener::bind` (with `SO_REUSEADDR`), with
/// an accept queue of [`ACCEPT_BACKLOG`].
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepts_connections_on_the_bound_port() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        assert_eq!(
            connected.unwrap().local_addr().unwrap(),
            accepted.unwrap().1
        );
    }

    #[tokio::test]
    async fn a_port_in_use_is_an_error() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(bind(addr).is_err());
    }
}
