//! An upstream that greets, answers the commands before the login, and then
//! never answers the login: a server that hangs under load (the demo's server
//! with [`Fault::StallAtLogin`]). It reads on until postern closes the connection, and
//! its record says so, so a test can check that no half-open upstream socket is
//! left behind.

use std::collections::HashSet;
use std::net::SocketAddr;

use postern::demo::record::{Record, Seen};
use postern::demo::server::{Fault, MailServer, Options, Service};
use postern::policy::Protocol;

use super::IO_TIMEOUT;
use super::fake_imap::mailboxes;

/// The name the stalling upstream greets with: none of it may reach a client.
pub const BANNER: &str = "slow-banner-5e1";

pub struct StallingUpstream {
    pub addr: SocketAddr,
    record: Record,
    /// Connections already handed to the test.
    reported: HashSet<u64>,
}

impl StallingUpstream {
    /// A `protocol` upstream named [`BANNER`] that goes silent at the login.
    pub async fn start(protocol: Protocol) -> StallingUpstream {
        let service = match protocol {
            Protocol::Imap => Service::Imap,
            Protocol::Pop3 => Service::Pop3,
            Protocol::Smtp => Service::Submission,
        };
        let options = Options {
            hostname: BANNER.into(),
            fault: Fault::StallAtLogin,
            ..Options::new(service)
        };
        let boxes = mailboxes(&[("alice@example.test", "alice-primary")]);
        let server = MailServer::spawn(boxes, options, Record::new())
            .await
            .expect("stalling upstream");
        StallingUpstream {
            addr: server.addr,
            record: server.record,
            reported: HashSet::new(),
        }
    }

    /// The lines of the next connection postern closed while the login was
    /// unanswered. Panics if none is closed within [`IO_TIMEOUT`].
    pub async fn closed_while_stalled(&mut self) -> Vec<String> {
        let next = |entries: &[(u64, Seen)]| {
            let has = |n: u64, kind: &Seen| entries.iter().any(|(m, s)| *m == n && s == kind);
            entries.iter().map(|(n, _)| *n).find(|n| {
                !self.reported.contains(n) && has(*n, &Seen::Stalled) && has(*n, &Seen::Closed)
            })
        };
        tokio::time::timeout(
            IO_TIMEOUT,
            self.record.wait_for(|entries| next(entries).is_some()),
        )
        .await
        .expect("the stalled upstream connection is closed");
        let entries = self.record.numbered();
        let number = next(&entries).expect("a closed stalled connection");
        self.reported.insert(number);
        entries
            .into_iter()
            .filter_map(|(n, seen)| match seen {
                Seen::Command(line) if n == number => Some(line),
                _ => None,
            })
            .collect()
    }
}
