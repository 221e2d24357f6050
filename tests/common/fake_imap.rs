//! A scripted IMAP upstream: accepts `AUTHENTICATE PLAIN` as the user itself or
//! as the master account `proxy`/`masterpw` acting for a user, and records what
//! it was sent so tests can assert what reached it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

pub const MESSAGE: &[u8] = b"From: a@example.test\r\nSubject: hi\r\n\r\nbody line\r\n";

#[derive(Default, Debug)]
pub struct Seen {
    /// One entry per successful login: "user" or "user via proxy".
    pub logins: Vec<String>,
    /// Failed login attempts.
    pub refused: usize,
    /// Lines received after login, in order.
    pub commands: Vec<String>,
    /// `ID` lines received.
    pub ids: Vec<String>,
}

#[derive(Clone)]
pub struct FakeImap {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
}

impl FakeImap {
    /// `users`: address → primary password.
    pub async fn start(users: &[(&str, &str)]) -> FakeImap {
        let users: Arc<HashMap<String, String>> = Arc::new(
            users
                .iter()
                .map(|(u, p)| ((*u).to_owned(), (*p).to_owned()))
                .collect(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let fake = FakeImap {
            addr,
            seen: seen.clone(),
        };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (users, seen) = (users.clone(), seen.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, users, seen).await;
                });
            }
        });
        fake
    }

    pub fn logins(&self) -> Vec<String> {
        self.seen.lock().expect("lock").logins.clone()
    }

    pub fn refused(&self) -> usize {
        self.seen.lock().expect("lock").refused
    }

    pub fn commands(&self) -> Vec<String> {
        self.seen.lock().expect("lock").commands.clone()
    }

    pub fn ids(&self) -> Vec<String> {
        self.seen.lock().expect("lock").ids.clone()
    }
}

fn check(users: &HashMap<String, String>, plain: &[u8]) -> Option<String> {
    let parts: Vec<&[u8]> = plain.split(|b| *b == 0).collect();
    let [authzid, authcid, password] = parts.as_slice() else {
        return None;
    };
    let (authzid, authcid, password) = (
        std::str::from_utf8(authzid).ok()?,
        std::str::from_utf8(authcid).ok()?,
        std::str::from_utf8(password).ok()?,
    );
    if authcid == "proxy" && password == "masterpw" && users.contains_key(authzid) {
        return Some(format!("{authzid} via proxy"));
    }
    if authzid.is_empty() && users.get(authcid).is_some_and(|p| p == password) {
        return Some(authcid.to_owned());
    }
    None
}

async fn serve(
    stream: tokio::net::TcpStream,
    users: Arc<HashMap<String, String>>,
    seen: Arc<Mutex<Seen>>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write
        .write_all(b"* OK [CAPABILITY IMAP4rev1 SASL-IR ID AUTH=PLAIN] fake ready\r\n")
        .await?;
    let mut logged_in = false;
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let trimmed = line.trim_end().to_owned();
        let mut words = trimmed.splitn(3, ' ');
        let tag = words.next().unwrap_or("*").to_owned();
        let command = words.next().unwrap_or("").to_ascii_uppercase();
        let rest = words.next().unwrap_or("").to_owned();
        if logged_in {
            seen.lock().expect("lock").commands.push(trimmed.clone());
        }
        let reply = match command.as_str() {
            "ID" => {
                seen.lock().expect("lock").ids.push(rest.clone());
                format!("* ID NIL\r\n{tag} OK ID completed\r\n")
            }
            "AUTHENTICATE" if !logged_in => {
                let encoded = rest.strip_prefix("PLAIN ").unwrap_or("").trim().to_owned();
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.as_bytes())
                    .unwrap_or_default();
                match check(&users, &decoded) {
                    Some(who) => {
                        seen.lock().expect("lock").logins.push(who);
                        logged_in = true;
                        format!("{tag} OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
                    }
                    None => {
                        seen.lock().expect("lock").refused += 1;
                        format!("{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
                    }
                }
            }
            "SELECT" if logged_in => {
                format!("* 1 EXISTS\r\n{tag} OK [READ-WRITE] Select completed\r\n")
            }
            "FETCH" if logged_in => {
                let mut out = format!("* 1 FETCH (BODY[] {{{}}}\r\n", MESSAGE.len()).into_bytes();
                out.extend_from_slice(MESSAGE);
                out.extend_from_slice(format!(")\r\n{tag} OK Fetch completed\r\n").as_bytes());
                write.write_all(&out).await?;
                continue;
            }
            "NOOP" => format!("{tag} OK NOOP completed\r\n"),
            "LOGOUT" => {
                write
                    .write_all(format!("* BYE bye\r\n{tag} OK Logout completed\r\n").as_bytes())
                    .await?;
                return Ok(());
            }
            _ => format!("{tag} BAD unexpected\r\n"),
        };
        write.write_all(reply.as_bytes()).await?;
    }
}
