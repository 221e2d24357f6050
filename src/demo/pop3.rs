//! The demo POP3 server: USER/PASS, AUTH PLAIN, STAT, LIST, UIDL, RETR, TOP,
//! DELE, RSET, NOOP, QUIT.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::server::Session;
use super::store::{Message, read_line};

pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    session: &Session,
) -> std::io::Result<()> {
    let boxes = &session.boxes;
    let mut stream = BufReader::new(stream);
    let host = &session.options.hostname;
    stream
        .write_all(format!("+OK {host} POP3 ready\r\n").as_bytes())
        .await?;
    let mut user_name: Option<String> = None;
    let mut user: Option<String> = None;
    let mut messages: Vec<Message> = Vec::new();
    let mut deleted: Vec<bool> = Vec::new();
    while let Some(line) = read_line(&mut stream).await? {
        session.seen.command(&line);
        let (command, arg) = line.split_once(' ').unwrap_or((&line, ""));
        let command = command.to_ascii_uppercase();
        let pick = |arg: &str| -> Option<usize> {
            let n: usize = arg.split(' ').next()?.parse().ok()?;
            (n >= 1 && n <= messages.len() && !deleted[n - 1]).then(|| n - 1)
        };
        let reply: Vec<u8> = match (command.as_str(), &user) {
            (_, Some(_)) if session.closes_after_login() => return Ok(()),
            ("CAPA", _) => b"+OK\r\nUSER\r\nSASL PLAIN\r\nUIDL\r\nTOP\r\n.\r\n".to_vec(),
            ("QUIT", _) => {
                if let Some(user) = &user {
                    let gone: Vec<u32> = messages
                        .iter()
                        .zip(&deleted)
                        .filter(|(_, d)| **d)
                        .map(|(m, _)| m.uid)
                        .collect();
                    boxes.remove(user, &gone);
                }
                stream.write_all(b"+OK bye\r\n").await?;
                return Ok(());
            }
            ("NOOP", _) => b"+OK\r\n".to_vec(),
            ("USER", None) => {
                user_name = Some(arg.to_owned());
                b"+OK send PASS\r\n".to_vec()
            }
            ("PASS" | "AUTH", None) if session.fails_login() => {
                return session.fail_login(&mut stream).await;
            }
            ("PASS", None) | ("AUTH", None) => {
                let opened = if command == "PASS" {
                    user_name
                        .take()
                        .and_then(|name| session.login("", &name, arg))
                } else if let Some(rest) = arg
                    .get(..5)
                    .filter(|m| m.eq_ignore_ascii_case("PLAIN"))
                    .map(|_| &arg[5..])
                {
                    let response = if rest.trim().is_empty() {
                        stream.write_all(b"+ \r\n").await?;
                        read_line(&mut stream).await?.unwrap_or_default()
                    } else {
                        rest.trim().to_owned()
                    };
                    session.login_plain(&response)
                } else {
                    None
                };
                match opened {
                    Some(name) => {
                        messages = boxes.messages(&name);
                        deleted = vec![false; messages.len()];
                        user = Some(name);
                        b"+OK logged in\r\n".to_vec()
                    }
                    None => b"-ERR [AUTH] invalid credentials\r\n".to_vec(),
                }
            }
            (_, None) => b"-ERR log in first\r\n".to_vec(),
            ("STAT", Some(_)) => {
                let live = messages.iter().zip(&deleted).filter(|(_, d)| !**d);
                let (count, size) = live.fold((0, 0), |(c, s), (m, _)| (c + 1, s + m.data.len()));
                format!("+OK {count} {size}\r\n").into_bytes()
            }
            ("LIST" | "UIDL", Some(_)) => {
                let item = |i: usize| {
                    if command == "LIST" {
                        format!("{} {}", i + 1, messages[i].data.len())
                    } else {
                        format!("{} {}", i + 1, messages[i].uid)
                    }
                };
                if arg.is_empty() {
                    let mut out = String::from("+OK\r\n");
                    for i in (0..messages.len()).filter(|i| !deleted[*i]) {
                        out.push_str(&item(i));
                        out.push_str("\r\n");
                    }
                    out.push_str(".\r\n");
                    out.into_bytes()
                } else {
                    match pick(arg) {
                        Some(i) => format!("+OK {}\r\n", item(i)).into_bytes(),
                        None => b"-ERR no such message\r\n".to_vec(),
                    }
                }
            }
            ("RETR" | "TOP", Some(_)) => match pick(arg) {
                Some(i) => {
                    let data = &messages[i].data;
                    let data: &[u8] = if command == "TOP" {
                        let lines: usize = arg
                            .split(' ')
                            .nth(1)
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0);
                        top(data, lines)
                    } else {
                        data
                    };
                    let mut out = b"+OK message follows\r\n".to_vec();
                    out.extend_from_slice(&dot_stuff(data));
                    out.extend_from_slice(b".\r\n");
                    out
                }
                None => b"-ERR no such message\r\n".to_vec(),
            },
            ("DELE", Some(_)) => match pick(arg) {
                Some(i) => {
                    deleted[i] = true;
                    b"+OK deleted\r\n".to_vec()
                }
                None => b"-ERR no such message\r\n".to_vec(),
            },
            ("RSET", Some(_)) => {
                deleted.iter_mut().for_each(|d| *d = false);
                b"+OK\r\n".to_vec()
            }
            _ => b"-ERR unknown command\r\n".to_vec(),
        };
        stream.write_all(&reply).await?;
    }
    Ok(())
}

/// The header and the first `lines` lines of the body.
fn top(data: &[u8], lines: usize) -> &[u8] {
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return data;
    };
    let mut at = end + 4;
    for _ in 0..lines {
        match data[at..].iter().position(|b| *b == b'\n') {
            Some(n) => at += n + 1,
            None => return data,
        }
    }
    &data[..at]
}

/// Lines starting with a dot get another, and the data ends with CRLF.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    for line in data.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}
