//! The `[relay]` of the tests: the demo's SMTP server without AUTH, which takes
//! every message and records it; the test takes the messages in order.

use std::net::SocketAddr;

use postern::demo::Mailboxes;
use postern::demo::record::{Record, Seen};
use postern::demo::server::{MailServer, Options, Service};

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
    record: Record,
    /// Messages already handed to the test.
    taken: usize,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let server = MailServer::spawn(
            Mailboxes::new(&[], ("", "")),
            Options::new(Service::Relay),
            Record::new(),
        )
        .await
        .expect("relay sink");
        SmtpSink {
            addr: server.addr,
            record: server.record,
            taken: 0,
        }
    }

    /// The next message; fails the test if none arrives within [`IO_TIMEOUT`].
    pub async fn next_mail(&mut self) -> ReceivedMail {
        let wanted = self.taken + 1;
        let arrived = self.record.wait_for(|entries| {
            let mails = entries.iter().filter(|(_, s)| matches!(s, Seen::Mail(_)));
            mails.count() >= wanted
        });
        tokio::time::timeout(IO_TIMEOUT, arrived)
            .await
            .expect("a message reaches the relay in time");
        let mail = self.record.mails().swap_remove(self.taken);
        self.taken = wanted;
        ReceivedMail {
            from: mail.from,
            to: mail.to,
            data: String::from_utf8_lossy(&mail.data).into_owned(),
        }
    }

    /// How many messages were received and not yet taken. The relay records a
    /// message before it answers the final dot, so once postern's answer to a
    /// request is in, every message it sent is counted.
    pub fn waiting(&mut self) -> usize {
        self.record.mails().len() - self.taken
    }
}
