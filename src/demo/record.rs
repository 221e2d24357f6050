//! What a demo upstream server saw, in order: connections, command lines,
//! login attempts, message bytes. The demo itself keeps no record
//! ([`Record::off`]); the test suite does, and awaits entries in it
//! ([`Record::wait_for`]) instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// One login attempt, with the identities and password as the client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// SASL PLAIN authorization identity ("" when the client logs in as itself).
    pub authzid: String,
    pub authcid: String,
    pub password: String,
    pub accepted: bool,
}

impl Login {
    /// "user" for a login as oneself, "user via master" for a master login.
    pub fn who(&self) -> String {
        if self.authzid.is_empty() || self.authzid == self.authcid {
            self.authcid.clone()
        } else {
            format!("{} via {}", self.authzid, self.authcid)
        }
    }
}

/// One message a server took in over SMTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The `MAIL FROM` address.
    pub from: String,
    /// The `RCPT TO` addresses.
    pub to: Vec<String>,
    /// Headers and body, dot-unstuffed.
    pub data: Vec<u8>,
}

/// One entry of the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Connected,
    /// A command line (without CRLF), in any phase. Continuation lines (a SASL
    /// response after `+ `/`334 `, message data) are not commands.
    Command(String),
    Login(Login),
    /// The raw bytes between DATA's 354 and the final dot line (exclusive).
    Data(Vec<u8>),
    /// A message accepted for delivery, before the final dot is answered.
    Mail(Mail),
    /// The server stopped answering at the login ([`super::server::Fault::StallAtLogin`]).
    Stalled,
    /// A connection ended (either side closed it).
    Closed,
}

/// The shared, ordered record of every connection of one or more servers.
/// Cloning gives another handle on the same record.
#[derive(Clone, Default)]
pub struct Record(Option<Arc<Inner>>);

#[derive(Default)]
struct Inner {
    /// (connection number, entry), in the order they happened.
    entries: Mutex<Vec<(u64, Seen)>>,
    changed: Notify,
    connections: AtomicU64,
}

impl Record {
    /// A record that keeps everything (tests).
    pub fn new() -> Self {
        Self(Some(Arc::default()))
    }

    /// A record that keeps nothing (the demo: it must not grow, nor hold passwords).
    pub fn off() -> Self {
        Self(None)
    }

    fn entries(&self) -> Option<MutexGuard<'_, Vec<(u64, Seen)>>> {
        let inner = self.0.as_ref()?;
        Some(inner.entries.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A new connection: its number, with [`Seen::Connected`] recorded.
    pub(super) fn connection(&self) -> Connection {
        let number = self
            .0
            .as_ref()
            .map_or(0, |inner| inner.connections.fetch_add(1, Ordering::Relaxed));
        let connection = Connection {
            record: self.clone(),
            number,
        };
        connection.push(Seen::Connected);
        connection
    }

    fn push(&self, number: u64, seen: Seen) {
        if let Some(mut entries) = self.entries() {
            entries.push((number, seen));
        }
        if let Some(inner) = &self.0 {
            inner.changed.notify_waiters();
        }
    }

    /// Every entry, in order.
    pub fn all(&self) -> Vec<Seen> {
        self.numbered().into_iter().map(|(_, seen)| seen).collect()
    }

    /// Every entry with the number of its connection, in order.
    pub fn numbered(&self) -> Vec<(u64, Seen)> {
        self.entries().map(|e| e.clone()).unwrap_or_default()
    }

    /// Waits until the record satisfies `done` (forever on a record that is off).
    pub async fn wait_for(&self, done: impl Fn(&[(u64, Seen)]) -> bool) {
        let Some(inner) = &self.0 else {
            return std::future::pending().await;
        };
        loop {
            let changed = inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.entries().is_some_and(|entries| done(&entries)) {
                return;
            }
            changed.await;
        }
    }

    /// Waits until every connection has ended, so nothing more can reach the
    /// server: the record is final.
    pub async fn connections_closed(&self) {
        self.wait_for(|entries| {
            let count = |kind: &Seen| entries.iter().filter(|(_, s)| s == kind).count();
            count(&Seen::Connected) == count(&Seen::Closed)
        })
        .await
    }

    /// Every login attempt, in order.
    pub fn logins(&self) -> Vec<Login> {
        self.all()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Login(login) => Some(login),
                _ => None,
            })
            .collect()
    }

    /// Every command line, in order.
    pub fn commands(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Command(line) => Some(line),
                _ => None,
            })
            .collect()
    }

    /// The command lines each connection sent after its login was accepted, in order.
    pub fn commands_after_login(&self) -> Vec<String> {
        let mut logged_in = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (number, seen) in self.numbered() {
            match seen {
                Seen::Login(login) if login.accepted => {
                    logged_in.insert(number);
                }
                Seen::Command(line) if logged_in.contains(&number) => out.push(line),
                _ => {}
            }
        }
        out
    }

    /// Every message accepted, in order.
    pub fn mails(&self) -> Vec<Mail> {
        self.all()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Mail(mail) => Some(mail),
                _ => None,
            })
            .collect()
    }
}

/// One connection's handle on the record.
pub(super) struct Connection {
    record: Record,
    number: u64,
}

impl Connection {
    pub(super) fn push(&self, seen: Seen) {
        self.record.push(self.number, seen);
    }

    pub(super) fn command(&self, line: &str) {
        if self.record.0.is_some() {
            self.push(Seen::Command(line.to_owned()));
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.push(Seen::Closed);
    }
}
