//! A tiny SMTP sink on loopback standing in for the `[relay]`: it speaks just
//! enough RFC 5321 (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) to accept a
//! message, and hands every message it received to the test through a channel.

use std::collections::VecDeque;
use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::IO_TIMEOUT;

/// One message as the relay received it.
#[derive(Clone, Debug)]
pub struct ReceivedMail {
    /// The `MAIL FROM` address.
    pub from: String,
    /// The `RCPT TO` addresses.
    pub to: Vec<String>,
    /// Headers and body, dot-unstuffed, CRLF line ends.
    pub data: String,
}

impl ReceivedMail {
    /// The code after "Your code is: ", spaces removed.
    pub fn code(&self) -> String {
        let start = self
            .data
            .find("Your code is: ")
            .unwrap_or_else(|| panic!("no code in {}", self.data))
            + "Your code is: ".len();
        let line = self.data[start..].lines().next().unwrap_or("");
        line.chars().filter(|c| !c.is_whitespace()).collect()
    }
}

pub struct SmtpSink {
    pub addr: SocketAddr,
    received: mpsc::UnboundedReceiver<ReceivedMail>,
    buffer: VecDeque<ReceivedMail>,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let addr = listener.local_addr().expect("sink addr");
        let (tx, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = serve(tcp, tx).await;
                });
            }
        });
        SmtpSink {
            addr,
            received,
            buffer: VecDeque::new(),
        }
    }

    /// The next message; fails the test if none arrives within [`IO_TIMEOUT`].
    pub async fn next_mail(&mut self) -> ReceivedMail {
        if let Some(mail) = self.buffer.pop_front() {
            return mail;
        }
        tokio::time::timeout(IO_TIMEOUT, self.received.recv())
            .await
            .expect("a message reaches the relay in time")
            .expect("sink running")
    }

    /// How many messages were received and not yet taken. The sink hands a
    /// message over before it answers the final dot, so once postern's answer to
    /// a request is in, every message it sent is counted.
    pub fn waiting(&mut self) -> usize {
        while let Ok(mail) = self.received.try_recv() {
            self.buffer.push_back(mail);
        }
        self.buffer.len()
    }
}

fn address_of(argument: &str) -> String {
    let start = argument.find('<').map_or(0, |i| i + 1);
    let end = argument[start..]
        .find('>')
        .map_or(argument.len(), |i| start + i);
    argument[start..end].to_owned()
}

async fn serve(tcp: TcpStream, tx: mpsc::UnboundedSender<ReceivedMail>) -> std::io::Result<()> {
    let mut conn = BufReader::new(tcp);
    conn.get_mut()
        .write_all(b"220 sink.test ESMTP test sink\r\n")
        .await?;
    let mut from = String::new();
    let mut to = Vec::new();
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("HELO") {
            b"250 sink.test\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = address_of(&line[10..]);
            to.clear();
            b"250 2.1.0 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            to.push(address_of(&line[8..]));
            b"250 2.1.5 ok\r\n"
        } else if upper == "DATA" {
            conn.get_mut().write_all(b"354 go ahead\r\n").await?;
            let mut data = String::new();
            loop {
                let mut line = String::new();
                if conn.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            let _ = tx.send(ReceivedMail {
                from: std::mem::take(&mut from),
                to: std::mem::take(&mut to),
                data,
            });
            b"250 2.0.0 queued\r\n"
        } else if upper == "RSET" || upper == "NOOP" {
            b"250 ok\r\n"
        } else if upper == "QUIT" {
            conn.get_mut().write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"502 5.5.2 not here\r\n"
        };
        conn.get_mut().write_all(reply).await?;
    }
}
