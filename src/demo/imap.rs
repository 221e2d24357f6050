//! The demo IMAP server: one INBOX per account. Enough of IMAP4rev1 for curl,
//! Python's imaplib and simple mail clients: CAPABILITY, ID, NOOP, LOGIN,
//! AUTHENTICATE PLAIN, LIST/LSUB, NAMESPACE, STATUS, SELECT/EXAMINE, FETCH,
//! STORE, SEARCH (everything matches), EXPUNGE, CLOSE, UNSELECT, IDLE, LOGOUT,
//! and the UID forms; STARTTLS when the listener offers it.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::server::Session;
use super::store::{FlagMode, MAX_LINE, Mailboxes, Message, read_line};

/// Before the login (RFC 9051 §7.2.2: the greeting may carry them).
const CAPABILITIES: &str = "IMAP4rev1 SASL-IR ID AUTH=PLAIN IDLE NAMESPACE UNSELECT";
/// In the tagged OK of a login: no more AUTH= mechanisms.
pub const CAPABILITIES_AFTER_LOGIN: &str = "IMAP4rev1 ID IDLE NAMESPACE UNSELECT";

/// A listener offering STARTTLS (RFC 9051 §6.2.1): greets, answers until
/// STARTTLS, and returns the connection to wrap in TLS; `None` when the client
/// left, or pipelined anything behind STARTTLS (it must not run inside TLS).
pub(super) async fn until_starttls(
    tcp: TcpStream,
    session: &Session,
) -> std::io::Result<Option<TcpStream>> {
    let mut stream = BufReader::new(tcp);
    let host = &session.options.hostname;
    stream
        .write_all(
            format!("* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] {host} IMAP ready\r\n")
                .as_bytes(),
        )
        .await?;
    while let Some(line) = read_line(&mut stream).await? {
        session.seen.command(&line);
        let mut words = line.splitn(3, ' ');
        let tag = words.next().unwrap_or("*").to_owned();
        let reply = match words.next().unwrap_or("").to_ascii_uppercase().as_str() {
            "STARTTLS" => {
                stream
                    .write_all(format!("{tag} OK Begin TLS negotiation now\r\n").as_bytes())
                    .await?;
                if !stream.buffer().is_empty() {
                    return Ok(None);
                }
                return Ok(Some(stream.into_inner()));
            }
            "CAPABILITY" => format!(
                "* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n{tag} OK CAPABILITY completed\r\n"
            ),
            "NOOP" => format!("{tag} OK NOOP completed\r\n"),
            "LOGOUT" => {
                stream
                    .write_all(format!("* BYE bye\r\n{tag} OK LOGOUT completed\r\n").as_bytes())
                    .await?;
                return Ok(None);
            }
            _ => format!("{tag} BAD STARTTLS first\r\n"),
        };
        stream.write_all(reply.as_bytes()).await?;
    }
    Ok(None)
}

struct Selected {
    read_only: bool,
    /// UIDs in sequence-number order.
    view: Vec<u32>,
}

/// One IMAP session; `greet` is false inside TLS negotiated by STARTTLS.
pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    session: &Session,
    greet: bool,
) -> std::io::Result<()> {
    let boxes = &session.boxes;
    let mut stream = BufReader::new(stream);
    if greet {
        let host = &session.options.hostname;
        stream
            .write_all(format!("* OK [CAPABILITY {CAPABILITIES}] {host} IMAP ready\r\n").as_bytes())
            .await?;
    }
    let mut user: Option<String> = None;
    let mut selected: Option<Selected> = None;
    while let Some(line) = read_line(&mut stream).await? {
        session.seen.command(&line);
        let mut words = line.splitn(3, ' ');
        let tag = words.next().unwrap_or("*").to_owned();
        let mut command = words.next().unwrap_or("").to_ascii_uppercase();
        let mut rest = words.next().unwrap_or("").to_owned();
        let uid = command == "UID";
        if uid {
            let (sub, more) = rest.split_once(' ').unwrap_or((&rest, ""));
            command = sub.to_ascii_uppercase();
            rest = more.to_owned();
        }
        let mut out = Vec::new();
        let status: String = match (command.as_str(), &user) {
            (_, Some(_)) if session.closes_after_login() => return Ok(()),
            ("CAPABILITY", _) => {
                out.extend(format!("* CAPABILITY {CAPABILITIES}\r\n").into_bytes());
                "OK CAPABILITY completed".into()
            }
            ("ID", _) => {
                let name = &session.options.hostname;
                out.extend(format!("* ID (\"name\" \"{name}\")\r\n").into_bytes());
                "OK ID completed".into()
            }
            ("NOOP" | "CHECK", _) => "OK NOOP completed".into(),
            ("LOGOUT", _) => {
                stream
                    .write_all(format!("* BYE bye\r\n{tag} OK LOGOUT completed\r\n").as_bytes())
                    .await?;
                return Ok(());
            }
            ("AUTHENTICATE" | "LOGIN", None) if session.fails_login() => {
                return session.fail_login(&mut stream).await;
            }
            ("AUTHENTICATE", None) => {
                let mut args = rest.split(' ');
                if args.next().is_some_and(|m| m.eq_ignore_ascii_case("PLAIN")) {
                    let response = match args.next() {
                        Some(ir) => ir.to_owned(),
                        None => {
                            stream.write_all(b"+ \r\n").await?;
                            read_line(&mut stream).await?.unwrap_or_default()
                        }
                    };
                    login_status(&session.login_plain(&response), &mut user)
                } else {
                    "NO [CANNOT] Only PLAIN".into()
                }
            }
            ("LOGIN", None) => match astrings(&rest).as_slice() {
                [name, password] => login_status(&session.login("", name, password), &mut user),
                _ => "BAD LOGIN needs a user and a password (no literals)".into(),
            },
            ("AUTHENTICATE" | "LOGIN", Some(_)) => "BAD Already logged in".into(),
            (_, None) => "BAD Log in first".into(),
            ("ENABLE", Some(_)) => "OK Nothing enabled".into(),
            ("NAMESPACE", Some(_)) => {
                out.extend(b"* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
                "OK NAMESPACE completed".into()
            }
            ("LIST" | "LSUB", Some(_)) => {
                if astrings(&rest).get(1).is_some_and(|p| p.is_empty()) {
                    out.extend(format!("* {command} (\\Noselect) \"/\" \"\"\r\n").into_bytes());
                } else {
                    out.extend(
                        format!("* {command} (\\HasNoChildren) \"/\" INBOX\r\n").into_bytes(),
                    );
                }
                format!("OK {command} completed")
            }
            ("STATUS", Some(name)) => {
                if is_inbox(astrings(&rest).first()) {
                    let messages = boxes.messages(name);
                    let unseen = messages
                        .iter()
                        .filter(|m| !m.flags.contains("\\Seen"))
                        .count();
                    out.extend(
                        format!(
                            "* STATUS INBOX (MESSAGES {} RECENT 0 UIDNEXT {} UIDVALIDITY 1 UNSEEN {unseen})\r\n",
                            messages.len(),
                            boxes.next_uid(name)
                        )
                        .into_bytes(),
                    );
                    "OK STATUS completed".into()
                } else {
                    "NO [NONEXISTENT] Only INBOX exists here".into()
                }
            }
            ("SELECT" | "EXAMINE", Some(name)) => {
                if is_inbox(astrings(&rest).first()) {
                    let messages = boxes.messages(name);
                    let read_only = command == "EXAMINE";
                    out.extend(
                        format!(
                            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n\
                             * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags\r\n\
                             * {} EXISTS\r\n* 0 RECENT\r\n\
                             * OK [UIDVALIDITY 1] UIDs valid\r\n* OK [UIDNEXT {}] Predicted next UID\r\n",
                            messages.len(),
                            boxes.next_uid(name)
                        )
                        .into_bytes(),
                    );
                    selected = Some(Selected {
                        read_only,
                        view: messages.iter().map(|m| m.uid).collect(),
                    });
                    let mode = if read_only { "READ-ONLY" } else { "READ-WRITE" };
                    format!("OK [{mode}] {command} completed")
                } else {
                    selected = None;
                    "NO [NONEXISTENT] Only INBOX exists here".into()
                }
            }
            (_, Some(name)) => match selected.as_mut() {
                None => "BAD Select INBOX first".into(),
                Some(sel) => {
                    sync_view(boxes, name, sel, &mut out);
                    match command.as_str() {
                        "FETCH" => fetch(boxes, name, sel, uid, &rest, &mut out),
                        "STORE" => store(boxes, name, sel, uid, &rest, &mut out),
                        "SEARCH" => {
                            let ids: Vec<String> = if uid {
                                sel.view.iter().map(u32::to_string).collect()
                            } else {
                                (1..=sel.view.len()).map(|n| n.to_string()).collect()
                            };
                            out.extend(
                                format!("* SEARCH {}\r\n", ids.join(" "))
                                    .trim_end()
                                    .as_bytes(),
                            );
                            out.extend(b"\r\n");
                            "OK SEARCH completed".into()
                        }
                        "EXPUNGE" | "CLOSE" => {
                            expunge(boxes, name, sel, command == "EXPUNGE", &mut out);
                            if command == "CLOSE" {
                                selected = None;
                            }
                            format!("OK {command} completed")
                        }
                        "UNSELECT" => {
                            selected = None;
                            "OK UNSELECT completed".into()
                        }
                        "IDLE" => {
                            stream.write_all(&out).await?;
                            out.clear();
                            idle(&mut stream, boxes, name, sel).await?
                        }
                        _ => "BAD Not supported by the demo".into(),
                    }
                }
            },
        };
        out.extend(format!("{tag} {status}\r\n").into_bytes());
        stream.write_all(&out).await?;
    }
    Ok(())
}

fn login_status(opened: &Option<String>, user: &mut Option<String>) -> String {
    match opened {
        Some(name) => {
            *user = Some(name.clone());
            format!("OK [CAPABILITY {CAPABILITIES_AFTER_LOGIN}] Logged in")
        }
        None => "NO [AUTHENTICATIONFAILED] Authentication failed.".into(),
    }
}

fn is_inbox(name: Option<&String>) -> bool {
    name.is_some_and(|n| n.eq_ignore_ascii_case("INBOX"))
}

/// Atoms and quoted strings (no literals).
fn astrings(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == ' ' {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut word = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => word.extend(chars.next()),
                    c => word.push(c),
                }
            }
            out.push(word);
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                word.push(c);
                chars.next();
            }
            out.push(word);
        }
    }
    out
}

/// Announces messages delivered since the view was taken.
fn sync_view(boxes: &Mailboxes, user: &str, sel: &mut Selected, out: &mut Vec<u8>) {
    let last = sel.view.last().copied().unwrap_or(0);
    let new: Vec<u32> = boxes
        .messages(user)
        .iter()
        .map(|m| m.uid)
        .filter(|uid| *uid > last)
        .collect();
    if !new.is_empty() {
        sel.view.extend(new);
        out.extend(format!("* {} EXISTS\r\n", sel.view.len()).into_bytes());
    }
}

/// The (sequence number, message) pairs a set names; messages removed by another
/// session are skipped.
fn resolve(
    boxes: &Mailboxes,
    user: &str,
    sel: &Selected,
    uid: bool,
    set: &str,
) -> Vec<(usize, Message)> {
    let messages = boxes.messages(user);
    let max = if uid {
        sel.view.last().copied().unwrap_or(0)
    } else {
        sel.view.len() as u32
    };
    let num = |s: &str| {
        if s == "*" {
            Some(max)
        } else {
            s.parse::<u32>().ok()
        }
    };
    let mut ranges = Vec::new();
    for part in set.split(',') {
        let (a, b) = part.split_once(':').unwrap_or((part, part));
        if let (Some(a), Some(b)) = (num(a), num(b)) {
            ranges.push((a.min(b), a.max(b)));
        }
    }
    let wanted = |n: u32| ranges.iter().any(|(a, b)| *a <= n && n <= *b);
    sel.view
        .iter()
        .enumerate()
        .filter(|(i, u)| wanted(if uid { **u } else { *i as u32 + 1 }))
        .filter_map(|(i, u)| {
            messages
                .iter()
                .find(|m| m.uid == *u)
                .map(|m| (i + 1, m.clone()))
        })
        .collect()
}

/// Splits `(A B[C (D)] E)` into its items.
fn items(text: &str) -> Vec<String> {
    let text = text.trim();
    let text = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(text);
    let mut out = Vec::new();
    let (mut depth, mut word) = (0i32, String::new());
    for c in text.chars() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth -= 1,
            ' ' if depth == 0 => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                continue;
            }
            _ => {}
        }
        word.push(c);
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

fn split_message(data: &[u8]) -> (&[u8], &[u8]) {
    match data.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => data.split_at(end + 4),
        None => (data, b""),
    }
}

/// The header lines (with continuations) whose names are listed, then CRLF.
fn header_fields(header: &[u8], names: &str) -> Vec<u8> {
    let names: Vec<&str> = names.split(' ').filter(|n| !n.is_empty()).collect();
    let mut out = Vec::new();
    let mut keep = false;
    for line in header.split_inclusive(|b| *b == b'\n') {
        if line == b"\r\n" {
            break;
        }
        if !line.starts_with(b" ") && !line.starts_with(b"\t") {
            let name = line.split(|b| *b == b':').next().unwrap_or_default();
            keep = names
                .iter()
                .any(|n| n.as_bytes().eq_ignore_ascii_case(name));
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn literal(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    out.extend(format!("{name} {{{}}}\r\n", data.len()).into_bytes());
    out.extend_from_slice(data);
}

fn flag_list(message: &Message) -> String {
    let flags: Vec<&str> = message.flags.iter().map(String::as_str).collect();
    format!("({})", flags.join(" "))
}

fn fetch(
    boxes: &Mailboxes,
    user: &str,
    sel: &Selected,
    uid: bool,
    rest: &str,
    out: &mut Vec<u8>,
) -> String {
    let Some((set, spec)) = rest.split_once(' ') else {
        return "BAD FETCH needs a set and items".into();
    };
    let mut wanted = items(spec);
    let macros = [
        ("ALL", "FLAGS INTERNALDATE RFC822.SIZE ENVELOPE"),
        ("FAST", "FLAGS INTERNALDATE RFC822.SIZE"),
        ("FULL", "FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY"),
    ];
    if let [one] = wanted.as_slice()
        && let Some((_, expanded)) = macros.iter().find(|(m, _)| one.eq_ignore_ascii_case(m))
    {
        wanted = items(expanded);
    }
    if uid && !wanted.iter().any(|w| w.eq_ignore_ascii_case("UID")) {
        wanted.insert(0, "UID".into());
    }
    for (seq, message) in resolve(boxes, user, sel, uid, set) {
        let mut parts: Vec<u8> = Vec::new();
        let mut seen = false;
        let (header, text) = split_message(&message.data);
        for item in &wanted {
            if !parts.is_empty() {
                parts.push(b' ');
            }
            let upper = item.to_ascii_uppercase();
            match upper.as_str() {
                "UID" => parts.extend(format!("UID {}", message.uid).into_bytes()),
                "FLAGS" => parts.extend(format!("FLAGS {}", flag_list(&message)).into_bytes()),
                "RFC822.SIZE" => parts.extend(format!("RFC822.SIZE {}", message.data.len()).into_bytes()),
                "INTERNALDATE" => parts.extend(b"INTERNALDATE \"01-Jan-2024 00:00:00 +0000\""),
                "ENVELOPE" => parts.extend(b"ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"),
                "BODY" | "BODYSTRUCTURE" => parts.extend(
                    format!(
                        "{upper} (\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"8BIT\" {} {})",
                        text.len(),
                        text.iter().filter(|b| **b == b'\n').count()
                    )
                    .into_bytes(),
                ),
                "RFC822" => {
                    seen = true;
                    literal(&mut parts, "RFC822", &message.data);
                }
                "RFC822.HEADER" => literal(&mut parts, "RFC822.HEADER", header),
                "RFC822.TEXT" => {
                    seen = true;
                    literal(&mut parts, "RFC822.TEXT", text);
                }
                _ if upper.starts_with("BODY[") || upper.starts_with("BODY.PEEK[") => {
                    let peek = upper.starts_with("BODY.PEEK[");
                    seen |= !peek;
                    let (Some(open), Some(close)) = (item.find('['), item.rfind(']')) else {
                        return "BAD Malformed section".into();
                    };
                    if close < open {
                        return "BAD Malformed section".into();
                    }
                    let section = &item[open + 1..close];
                    let upper_section = section.to_ascii_uppercase();
                    let fields;
                    let data: &[u8] = if let Some(names) =
                        upper_section.strip_prefix("HEADER.FIELDS (")
                    {
                        fields = header_fields(header, names.trim_end_matches(')'));
                        &fields
                    } else if upper_section.starts_with("HEADER") {
                        header
                    } else if upper_section == "TEXT" || upper_section == "1" {
                        text
                    } else {
                        &message.data
                    };
                    let partial = item[close + 1..].trim_start_matches('<').trim_end_matches('>');
                    let (name, data) = match partial.split_once('.') {
                        Some((start, len)) => {
                            let start = start.parse::<usize>().unwrap_or(0).min(data.len());
                            let end = start.saturating_add(len.parse().unwrap_or(0)).min(data.len());
                            (format!("BODY[{section}]<{start}>"), &data[start..end])
                        }
                        None => (format!("BODY[{section}]"), data),
                    };
                    literal(&mut parts, &name, data);
                }
                _ => return format!("BAD Unknown FETCH item {}", upper.chars().take(40).collect::<String>()),
            }
        }
        if seen && !sel.read_only && !message.flags.contains("\\Seen") {
            boxes.set_flags(user, message.uid, FlagMode::Add, &["\\Seen".into()]);
        }
        out.extend(format!("* {seq} FETCH (").into_bytes());
        out.extend(parts);
        out.extend(b")\r\n");
    }
    "OK FETCH completed".into()
}

fn store(
    boxes: &Mailboxes,
    user: &str,
    sel: &Selected,
    uid: bool,
    rest: &str,
    out: &mut Vec<u8>,
) -> String {
    if sel.read_only {
        return "NO [READ-ONLY] Mailbox is read-only".into();
    }
    let mut words = rest.splitn(3, ' ');
    let (Some(set), Some(action), Some(list)) = (words.next(), words.next(), words.next()) else {
        return "BAD STORE needs a set, an action and flags".into();
    };
    let action = action.to_ascii_uppercase();
    let mode = match action.trim_end_matches(".SILENT") {
        "FLAGS" => FlagMode::Replace,
        "+FLAGS" => FlagMode::Add,
        "-FLAGS" => FlagMode::Remove,
        _ => return "BAD Unknown STORE action".into(),
    };
    let flags: Vec<String> = list
        .trim_matches(|c| c == '(' || c == ')')
        .split(' ')
        .filter(|f| !f.is_empty())
        .take(16)
        .map(|f| f.chars().take(64).collect())
        .collect();
    for (seq, message) in resolve(boxes, user, sel, uid, set) {
        boxes.set_flags(user, message.uid, mode, &flags);
        if !action.ends_with(".SILENT") {
            let now = boxes
                .messages(user)
                .into_iter()
                .find(|m| m.uid == message.uid);
            if let Some(now) = now {
                let uid_part = if uid {
                    format!("UID {} ", now.uid)
                } else {
                    String::new()
                };
                out.extend(
                    format!("* {seq} FETCH ({uid_part}FLAGS {})\r\n", flag_list(&now)).into_bytes(),
                );
            }
        }
    }
    "OK STORE completed".into()
}

fn expunge(boxes: &Mailboxes, user: &str, sel: &mut Selected, announce: bool, out: &mut Vec<u8>) {
    if sel.read_only {
        return;
    }
    let gone: Vec<u32> = boxes
        .messages(user)
        .iter()
        .filter(|m| m.flags.contains("\\Deleted"))
        .map(|m| m.uid)
        .collect();
    boxes.remove(user, &gone);
    for index in (0..sel.view.len()).rev() {
        if gone.contains(&sel.view[index]) {
            sel.view.remove(index);
            if announce {
                out.extend(format!("* {} EXPUNGE\r\n", index + 1).into_bytes());
            }
        }
    }
}

/// IDLE until `DONE`, announcing new messages every two seconds.
async fn idle<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    boxes: &Mailboxes,
    user: &str,
    sel: &mut Selected,
) -> std::io::Result<String> {
    stream.write_all(b"+ idling\r\n").await?;
    let mut line = Vec::new();
    loop {
        let read = {
            let budget = (MAX_LINE.saturating_sub(line.len())) as u64 + 1;
            let mut limited = tokio::io::AsyncReadExt::take(&mut *stream, budget);
            tokio::select! {
                read = limited.read_until(b'\n', &mut line) => Some(read),
                _ = tokio::time::sleep(Duration::from_secs(2)) => None,
            }
        };
        match read {
            Some(read) => {
                if read? == 0 || !line.ends_with(b"\n") {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                let done = line.trim_ascii().eq_ignore_ascii_case(b"DONE");
                return Ok(if done {
                    "OK IDLE terminated".into()
                } else {
                    "BAD Expected DONE".into()
                });
            }
            None => {
                let mut out = Vec::new();
                sync_view(boxes, user, sel, &mut out);
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                }
            }
        }
    }
}
