//! An upstream that greets, answers the commands before the login, and then
//! never answers the login: a server that hangs under load. It reads on until
//! postern closes the connection and reports that close, so a test can check
//! that no half-open upstream socket is left behind.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::IO_TIMEOUT;

pub struct StallingUpstream {
    pub addr: SocketAddr,
    /// The lines of each connection that was left waiting at the login, sent
    /// once postern closed it.
    closed: mpsc::UnboundedReceiver<Vec<String>>,
}

impl StallingUpstream {
    /// Greets with `greeting`; a line starting with the first part of an
    /// `answers` pair (ASCII case ignored) gets the second part; at the first
    /// line starting with `stall_at` it goes silent.
    pub async fn start(
        greeting: &'static str,
        answers: &'static [(&'static str, &'static str)],
        stall_at: &'static str,
    ) -> StallingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (report, closed) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let report = report.clone();
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    stream.get_mut().write_all(greeting.as_bytes()).await?;
                    let mut lines = Vec::new();
                    let mut stalled = false;
                    loop {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await? == 0 {
                            break;
                        }
                        let upper = line.to_ascii_uppercase();
                        lines.push(line);
                        if stalled {
                            continue;
                        }
                        if upper.starts_with(&stall_at.to_ascii_uppercase()) {
                            stalled = true;
                        } else if let Some((_, reply)) = answers
                            .iter()
                            .find(|(prefix, _)| upper.starts_with(&prefix.to_ascii_uppercase()))
                        {
                            stream.get_mut().write_all(reply.as_bytes()).await?;
                        }
                    }
                    if stalled {
                        let _ = report.send(lines);
                    }
                    Ok::<_, std::io::Error>(())
                });
            }
        });
        StallingUpstream { addr, closed }
    }

    /// The lines of the next connection postern closed while the login was
    /// unanswered. Panics if none is closed within [`IO_TIMEOUT`].
    pub async fn closed_while_stalled(&mut self) -> Vec<String> {
        tokio::time::timeout(IO_TIMEOUT, self.closed.recv())
            .await
            .expect("the stalled upstream connection is closed")
            .expect("the fake is running")
    }
}
