//! The demo upstream's accounts and mailboxes, in memory and bounded.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use subtle::ConstantTimeEq;

/// Longest command line the demo servers read.
pub const MAX_LINE: usize = 8 * 1024;
/// Largest message accepted over SMTP.
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// Messages one mailbox keeps; the oldest go first.
pub const MAX_MESSAGES: usize = 200;
/// Flags one message keeps.
const MAX_FLAGS: usize = 16;

/// One stored message.
#[derive(Clone, Debug)]
pub struct Message {
    pub uid: u32,
    pub data: Arc<[u8]>,
    pub flags: BTreeSet<String>,
}

#[derive(Default, Debug)]
struct Mailbox {
    next_uid: u32,
    messages: Vec<Message>,
}

struct Inner {
    passwords: HashMap<String, String>,
    master_user: String,
    master_password: String,
    boxes: Mutex<HashMap<String, Mailbox>>,
}

/// Accounts and INBOXes shared by the IMAP, POP3 and SMTP demo servers.
#[derive(Clone)]
pub struct Mailboxes(Arc<Inner>);

impl Mailboxes {
    /// `accounts`: (address, password); `master`: (user, password) that may act
    /// for any account (SASL PLAIN authzid).
    pub fn new(accounts: &[(&str, &str)], master: (&str, &str)) -> Self {
        let mut boxes = HashMap::new();
        for (address, _) in accounts {
            boxes.insert(address.to_ascii_lowercase(), Mailbox::default());
        }
        Self(Arc::new(Inner {
            passwords: accounts
                .iter()
                .map(|(a, p)| (a.to_ascii_lowercase(), (*p).to_owned()))
                .collect(),
            master_user: master.0.to_owned(),
            master_password: master.1.to_owned(),
            boxes: Mutex::new(boxes),
        }))
    }

    /// Is this a demo account?
    pub fn is_local(&self, address: &str) -> bool {
        self.0.passwords.contains_key(&address.to_ascii_lowercase())
    }

    /// The account a login as `authcid` (for `authzid`, if not empty) opens.
    pub fn login(&self, authzid: &str, authcid: &str, password: &str) -> Option<String> {
        let eq = |a: &str, b: &str| bool::from(a.as_bytes().ct_eq(b.as_bytes()));
        if !authzid.is_empty() && authzid != authcid {
            let master = authcid == self.0.master_user && eq(password, &self.0.master_password);
            return (master && self.is_local(authzid)).then(|| authzid.to_ascii_lowercase());
        }
        let user = authcid.to_ascii_lowercase();
        let ok = self.0.passwords.get(&user).is_some_and(|p| eq(password, p));
        ok.then_some(user)
    }

    /// Appends a message to a demo INBOX; false if `to` is not a demo account.
    pub fn deliver(&self, to: &str, data: Vec<u8>) -> bool {
        let mut boxes = self.0.boxes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mailbox) = boxes.get_mut(&to.to_ascii_lowercase()) else {
            return false;
        };
        mailbox.next_uid += 1;
        mailbox.messages.push(Message {
            uid: mailbox.next_uid,
            data: data.into(),
            flags: BTreeSet::new(),
        });
        if mailbox.messages.len() > MAX_MESSAGES {
            mailbox.messages.remove(0);
        }
        true
    }

    /// The messages of `user`'s INBOX, oldest first.
    pub fn messages(&self, user: &str) -> Vec<Message> {
        let boxes = self.0.boxes.lock().unwrap_or_else(|e| e.into_inner());
        boxes
            .get(user)
            .map(|m| m.messages.clone())
            .unwrap_or_default()
    }

    /// The next UID `user`'s INBOX will hand out.
    pub fn next_uid(&self, user: &str) -> u32 {
        let boxes = self.0.boxes.lock().unwrap_or_else(|e| e.into_inner());
        boxes.get(user).map_or(1, |m| m.next_uid + 1)
    }

    /// Changes the flags of one message: `add`, `remove` or replace them all.
    pub fn set_flags(&self, user: &str, uid: u32, mode: FlagMode, flags: &[String]) {
        let mut boxes = self.0.boxes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(message) = boxes
            .get_mut(user)
            .and_then(|m| m.messages.iter_mut().find(|m| m.uid == uid))
        else {
            return;
        };
        if mode == FlagMode::Replace {
            message.flags.clear();
        }
        for flag in flags {
            if mode == FlagMode::Remove {
                message.flags.remove(flag);
            } else if message.flags.len() < MAX_FLAGS {
                message.flags.insert(flag.clone());
            }
        }
    }

    /// Removes these messages from `user`'s INBOX.
    pub fn remove(&self, user: &str, uids: &[u32]) {
        let mut boxes = self.0.boxes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mailbox) = boxes.get_mut(user) {
            mailbox.messages.retain(|m| !uids.contains(&m.uid));
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagMode {
    Add,
    Remove,
    Replace,
}

/// A welcome message for a new demo INBOX.
pub fn welcome(to: &str) -> Vec<u8> {
    format!(
        "From: postern demo <postmaster@demo.test>\r\n\
         To: <{to}>\r\n\
         Subject: Welcome to the postern demo\r\n\
         Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n\
         Message-ID: <welcome.{to}>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         Hello {to},\r\n\
         \r\n\
         this message lives in the memory of `postern demo`, which stands in for\r\n\
         a real mail server. You read it through postern, the 2-step gateway.\r\n"
    )
    .into_bytes()
}

/// Reads one line (without CRLF) of at most [`MAX_LINE`] bytes; `None` at the
/// end of the stream or when the line is too long.
pub async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<String>> {
    use tokio::io::AsyncBufReadExt;
    let mut line = Vec::new();
    let mut limited = tokio::io::AsyncReadExt::take(&mut *reader, MAX_LINE as u64 + 1);
    let n = limited.read_until(b'\n', &mut line).await?;
    if n == 0 || !line.ends_with(b"\n") {
        return Ok(None);
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_as_self_or_as_master() {
        let boxes = Mailboxes::new(&[("a@demo.test", "pw")], ("proxy", "m"));
        assert_eq!(
            boxes.login("", "a@demo.test", "pw").as_deref(),
            Some("a@demo.test")
        );
        assert_eq!(boxes.login("", "a@demo.test", "no"), None);
        assert_eq!(
            boxes.login("a@demo.test", "proxy", "m").as_deref(),
            Some("a@demo.test")
        );
        assert_eq!(boxes.login("b@demo.test", "proxy", "m"), None);
        assert_eq!(boxes.login("a@demo.test", "proxy", "pw"), None);
        assert!(boxes.deliver("A@demo.test", b"x".to_vec()));
        assert!(!boxes.deliver("c@demo.test", b"x".to_vec()));
        assert_eq!(boxes.messages("a@demo.test").len(), 1);
    }
}
