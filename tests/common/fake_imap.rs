//! The IMAP upstream of the tests: the demo's IMAP server (`postern::demo`)
//! with the given accounts, each holding [`MESSAGE`], and the master account
//! `proxy`/`masterpw` that may act for any of them. Its record says what
//! reached it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use postern::demo::Mailboxes;
use postern::demo::record::Record;
use postern::demo::server::{MailServer, Options, Service, Tls};

/// How the fake upstream offers TLS.
pub type FakeTls = Tls;

pub const MESSAGE: &[u8] = b"From: a@example.test\r\nSubject: hi\r\n\r\nbody line\r\n";

/// The master account the test gateways log in with.
pub const MASTER: (&str, &str) = ("proxy", "masterpw");

#[derive(Clone)]
pub struct FakeImap {
    pub addr: SocketAddr,
    pub record: Record,
    /// The fake's self-signed certificate (PEM), when it speaks TLS.
    certificate: Option<String>,
    /// Where [`FakeImap::start_with`] wrote it.
    pub ca_file: Option<PathBuf>,
}

/// The accounts, each with [`MESSAGE`] in its INBOX.
pub fn mailboxes(users: &[(&str, &str)]) -> Mailboxes {
    let boxes = Mailboxes::new(users, MASTER);
    for (user, _) in users {
        boxes.deliver(user, MESSAGE.to_vec());
    }
    boxes
}

impl FakeImap {
    /// `users`: address → primary password.
    pub async fn start(users: &[(&str, &str)]) -> FakeImap {
        Self::start_as(users, |_| {}).await
    }

    /// Like [`FakeImap::start`] offering TLS; its certificate is written under `dir`.
    pub async fn start_with(users: &[(&str, &str)], tls: FakeTls, dir: &Path) -> FakeImap {
        let mut fake = Self::start_as(users, |options| options.tls = tls).await;
        fake.ca_file = fake.certificate.as_ref().map(|pem| {
            let path = dir.join("fake-upstream.pem");
            std::fs::write(&path, pem).expect("write cert");
            path
        });
        fake
    }

    /// Like [`FakeImap::start`], with a change to the server's options (a
    /// [`postern::demo::server::Fault`], another host name).
    pub async fn start_as(users: &[(&str, &str)], change: impl FnOnce(&mut Options)) -> FakeImap {
        let mut options = Options::new(Service::Imap);
        change(&mut options);
        let server = MailServer::spawn(mailboxes(users), options, Record::new())
            .await
            .expect("fake IMAP upstream");
        FakeImap {
            addr: server.addr,
            record: server.record,
            certificate: server.certificate,
            ca_file: None,
        }
    }

    /// One entry per successful login: "user" or "user via proxy".
    pub fn logins(&self) -> Vec<String> {
        let logins = self.record.logins().into_iter();
        logins.filter(|l| l.accepted).map(|l| l.who()).collect()
    }

    /// Failed login attempts.
    pub fn refused(&self) -> usize {
        self.record.logins().iter().filter(|l| !l.accepted).count()
    }

    /// Lines received after login, in order.
    pub fn commands(&self) -> Vec<String> {
        self.record.commands_after_login()
    }

    /// The arguments of the `ID` commands received.
    pub fn ids(&self) -> Vec<String> {
        let commands = self.record.commands().into_iter();
        commands
            .filter_map(|line| {
                let mut words = line.splitn(3, ' ');
                let _tag = words.next();
                let id = words.next()?.eq_ignore_ascii_case("ID");
                id.then(|| words.next().unwrap_or("").to_owned())
            })
            .collect()
    }
}
