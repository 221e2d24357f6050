//! The byte relay after login: both directions in one future, with buffers only
//! while bytes flow.
//!
//! An idle authenticated session (the common case: a phone in IMAP IDLE) holds
//! no relay buffer at all. Each direction waits for its source socket to become
//! readable, then reads into its thread's scratch buffer and writes on at once
//! until the source would block; only bytes the destination cannot take yet are
//! kept, in a buffer of their own, until written. A burst moves in 64 KiB reads,
//! so large FETCHes cost few system calls. Bytes are never inspected or
//! rewritten.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::net::stream::MaybeTls;
use crate::registry::Traffic;

/// Read size while a direction is busy.
pub const BURST: usize = 64 * 1024;

thread_local! {
    /// Each runtime thread's read buffer, shared by every relay it polls: bytes
    /// are read into it and written on at once, so a burst costs no allocation
    /// and no zeroing. Only what a destination does not take at once is copied
    /// into a buffer of the direction's own.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; BURST].into_boxed_slice());
}

enum Direction {
    /// Waiting for the source to become readable; no buffer held.
    Idle,
    /// The source is readable: reading into the thread's scratch buffer.
    Reading,
    /// The destination would block: `buf[start..]` is still to be written.
    Writing {
        buf: Vec<u8>,
        start: usize,
    },
    /// The source ended; shutting down the destination's write side.
    ShuttingDown,
    Done,
}

/// Relays between `client` and `upstream` until both directions have ended or
/// one fails. Resolves to the bytes moved (client→upstream, upstream→client).
pub struct Relay<'a> {
    client: &'a mut MaybeTls,
    upstream: &'a mut MaybeTls,
    up: Direction,
    down: Direction,
    traffic: Arc<Traffic>,
    last_activity: Instant,
}

impl<'a> Relay<'a> {
    /// `traffic` is updated as bytes move (the registry lists it live).
    pub fn new(
        client: &'a mut MaybeTls,
        upstream: &'a mut MaybeTls,
        traffic: Arc<Traffic>,
    ) -> Self {
        Self {
            client,
            upstream,
            up: Direction::Idle,
            down: Direction::Idle,
            traffic,
            last_activity: Instant::now(),
        }
    }

    /// When bytes last moved in either direction.
    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }
}

/// Waits until the socket under `stream` has data (or an error/EOF) to read.
fn poll_read_ready(stream: &MaybeTls, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    match stream {
        MaybeTls::Plain(tcp) => tcp.poll_read_ready(cx),
        MaybeTls::ServerTls(tls) => tls.get_ref().0.poll_read_ready(cx),
        MaybeTls::ClientTls(tls) => tls.get_ref().0.poll_read_ready(cx),
    }
}

/// Drives one direction as far as it can go without blocking.
fn poll_direction(
    state: &mut Direction,
    src: &mut MaybeTls,
    dst: &mut MaybeTls,
    moved: &AtomicU64,
    active: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    // Readiness that a read then does not consume (a TLS record still partial)
    // must not spin here: after a few rounds, yield to the scheduler.
    let mut rounds = 0;
    loop {
        match state {
            Direction::Idle => {
                ready!(poll_read_ready(src, cx))?;
                *state = Direction::Reading;
            }
            Direction::Reading => {
                let read = SCRATCH.with_borrow_mut(|scratch| {
                    let mut read = ReadBuf::new(scratch);
                    match Pin::new(&mut *src).poll_read(cx, &mut read) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
                        Poll::Ready(Ok(())) => {
                            let n = read.filled().len();
                            if n == 0 {
                                return Poll::Ready(Ok(None));
                            }
                            moved.fetch_add(n as u64, Ordering::Relaxed);
                            let mut written = 0;
                            while written < n {
                                match Pin::new(&mut *dst).poll_write(cx, &scratch[written..n]) {
                                    Poll::Ready(Ok(0)) => {
                                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                                    }
                                    Poll::Ready(Ok(k)) => written += k,
                                    Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                                    Poll::Pending => break,
                                }
                            }
                            // What the destination did not take yet.
                            Poll::Ready(Ok(Some(scratch[written..n].to_vec())))
                        }
                    }
                });
                match read {
                    Poll::Pending => {
                        // Flush what was written, then wait for the source again.
                        ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                        *state = Direction::Idle;
                        rounds += 1;
                        if rounds > 2 {
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    }
                    Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                    Poll::Ready(Ok(None)) => *state = Direction::ShuttingDown,
                    Poll::Ready(Ok(Some(rest))) => {
                        *active = true;
                        if !rest.is_empty() {
                            *state = Direction::Writing {
                                buf: rest,
                                start: 0,
                            };
                        }
                    }
                }
            }
            Direction::Writing { buf, start } => {
                let n = ready!(Pin::new(&mut *dst).poll_write(cx, &buf[*start..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *start += n;
                if *start == buf.len() {
                    *state = Direction::Reading;
                }
            }
            Direction::ShuttingDown => {
                ready!(Pin::new(&mut *dst).poll_shutdown(cx))?;
                *state = Direction::Done;
            }
            Direction::Done => return Poll::Ready(Ok(())),
        }
    }
}

impl Future for Relay<'_> {
    type Output = io::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut active = false;
        let up = poll_direction(
            &mut this.up,
            this.client,
            this.upstream,
            &this.traffic.up,
            &mut active,
            cx,
        );
        let down = poll_direction(
            &mut this.down,
            this.upstream,
            this.client,
            &this.traffic.down,
            &mut active,
            cx,
        );
        if active {
            this.last_activity = Instant::now();
        }
        match (up, down) {
            (Poll::Ready(Err(err)), _) | (_, Poll::Ready(Err(err))) => Poll::Ready(Err(err)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(this.traffic.totals())),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (connected.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn moves_megabytes_both_ways_unchanged_and_ends_on_close() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let relay = tokio::spawn(async move {
            let (mut c, mut u) = (MaybeTls::Plain(client_side), MaybeTls::Plain(upstream_side));
            Relay::new(&mut c, &mut u, Arc::default()).await
        });
        let up: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let down: Vec<u8> = (0..5_000_000u32).map(|i| (i * 13 % 253) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let client_task = tokio::spawn(async move {
            let (mut r, mut w) = client.split();
            let send = async {
                w.write_all(&up2).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let recv = r.read_to_end(&mut got);
            let (_, n) = tokio::join!(send, recv);
            n.unwrap();
            got
        });
        let mut got_up = Vec::new();
        let (r, mut w) = upstream.split();
        let mut r = r;
        let send = async {
            w.write_all(&down2).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let (_, n) = tokio::join!(send, r.read_to_end(&mut got_up));
        n.unwrap();
        assert!(got_up == up, "client → upstream bytes differ");
        assert!(
            client_task.await.unwrap() == down,
            "upstream → client bytes differ"
        );
        let (bytes_up, bytes_down) = relay.await.unwrap().unwrap();
        assert_eq!((bytes_up, bytes_down), (up.len() as u64, down.len() as u64));
    }

    #[tokio::test]
    async fn an_idle_relay_holds_no_buffer() {
        let (_client, client_side) = pair().await;
        let (upstream_side, _upstream) = pair().await;
        let (mut c, mut u) = (MaybeTls::Plain(client_side), MaybeTls::Plain(upstream_side));
        let mut relay = Relay::new(&mut c, &mut u, Arc::default());
        let polled = std::future::poll_fn(|cx| {
            let pending = Pin::new(&mut relay).poll(cx).is_pending();
            Poll::Ready(pending)
        })
        .await;
        assert!(polled, "nothing to relay yet");
        assert!(matches!(relay.up, Direction::Idle) && matches!(relay.down, Direction::Idle));
    }
}
