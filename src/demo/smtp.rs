//! The demo SMTP server: EHLO, AUTH PLAIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT.
//! Mail to a demo account lands in its INBOX; anything else is dropped. The same
//! server without AUTH is the demo's `[relay]`, which carries recovery codes.

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::record::{Mail, Seen};
use super::server::{Service, Session};
use super::store::{MAX_LINE, MAX_MESSAGE, read_line};

/// Recipients one message may have.
const MAX_RECIPIENTS: usize = 20;

/// One SMTP session: submission (AUTH, or XCLIENT when offered, before mail)
/// or the relay (no AUTH).
pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    session: &Session,
) -> std::io::Result<()> {
    let boxes = &session.boxes;
    let options = &session.options;
    let host = &options.hostname;
    let submission = options.service == Service::Submission;
    let mut stream = BufReader::new(stream);
    let greeting = format!("220 {host} ESMTP ready\r\n");
    stream.write_all(greeting.as_bytes()).await?;
    let mut user: Option<String> = None;
    let mut from: Option<String> = None;
    let mut recipients: Vec<String> = Vec::new();
    while let Some(line) = read_line(&mut stream).await? {
        session.seen.command(&line);
        if user.is_some() && session.closes_after_login() {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            let mut ehlo = format!(
                "250-{host}\r\n250-PIPELINING\r\n250-SIZE {MAX_MESSAGE}\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
            );
            if submission {
                ehlo.push_str("250-AUTH PLAIN\r\n");
            }
            if submission && options.xclient {
                ehlo.push_str("250-XCLIENT LOGIN ADDR PORT NAME HELO\r\n");
            }
            ehlo.push_str("250 ENHANCEDSTATUSCODES\r\n");
            ehlo
        } else if upper.starts_with("HELO") {
            format!("250 {host}\r\n")
        } else if upper == "QUIT" {
            stream.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else if upper == "NOOP" {
            "250 2.0.0 OK\r\n".into()
        } else if upper == "RSET" {
            from = None;
            recipients.clear();
            "250 2.0.0 OK\r\n".into()
        } else if upper.starts_with("AUTH") && submission && session.fails_login() {
            return session.fail_login(&mut stream).await;
        } else if upper.starts_with("AUTH PLAIN") && submission && user.is_none() {
            let rest = line[10..].trim();
            let response = if rest.is_empty() {
                stream.write_all(b"334 \r\n").await?;
                read_line(&mut stream).await?.unwrap_or_default()
            } else {
                rest.to_owned()
            };
            match session.login_plain(&response) {
                Some(name) => {
                    user = Some(name);
                    "235 2.7.0 Authentication successful\r\n".into()
                }
                None => "535 5.7.8 Authentication credentials invalid\r\n".into(),
            }
        } else if upper.starts_with("XCLIENT ") && submission && options.xclient {
            // XCLIENT (Postfix): the attributes describe the real client; LOGIN
            // names the account it authenticated as. The session restarts.
            let login = line
                .split(' ')
                .filter_map(|attribute| attribute.split_once('='))
                .find(|(name, _)| name.eq_ignore_ascii_case("LOGIN"))
                .map(|(_, value)| value);
            if let Some(account) = login.filter(|a| boxes.is_local(a)) {
                user = Some(account.to_ascii_lowercase());
            }
            from = None;
            recipients.clear();
            greeting.clone()
        } else if user.is_none() && submission {
            "530 5.7.0 Authentication required\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            from = Some(address(&line[10..]));
            recipients.clear();
            "250 2.1.0 OK\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            if from.is_none() {
                "503 5.5.1 MAIL first\r\n".into()
            } else if recipients.len() >= MAX_RECIPIENTS {
                "452 4.5.3 Too many recipients\r\n".into()
            } else {
                recipients.push(address(&line[8..]));
                "250 2.1.5 OK\r\n".into()
            }
        } else if upper == "DATA" {
            if recipients.is_empty() {
                "503 5.5.1 RCPT first\r\n".into()
            } else {
                stream
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let Some((raw, data)) = read_data(&mut stream).await? else {
                    stream
                        .write_all(b"552 5.3.4 Message too big for the demo\r\n")
                        .await?;
                    return Ok(());
                };
                session.seen.push(Seen::Data(raw));
                for to in &recipients {
                    // Not a demo account: dropped, this is not a mail server.
                    boxes.deliver(to, data.clone());
                }
                session.seen.push(Seen::Mail(Mail {
                    from: from.take().unwrap_or_default(),
                    to: std::mem::take(&mut recipients),
                    data,
                }));
                "250 2.0.0 queued\r\n".into()
            }
        } else {
            "502 5.5.2 Command not recognized\r\n".into()
        };
        stream.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}

/// The address inside `<...>` (parameters after it ignored).
fn address(arg: &str) -> String {
    let arg = arg.trim();
    match (arg.find('<'), arg.find('>')) {
        (Some(start), Some(end)) if start < end => arg[start + 1..end].to_owned(),
        _ => arg.split(' ').next().unwrap_or_default().to_owned(),
    }
}

/// The message up to the final dot line, as received and un-stuffed; `None`
/// past [`MAX_MESSAGE`] (the connection is then closed). Only CRLF.CRLF ends it
/// (RFC 5321 §4.1.1.4).
async fn read_data<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let (mut raw, mut data) = (Vec::new(), Vec::new());
    loop {
        let mut line = Vec::new();
        let mut limited = tokio::io::AsyncReadExt::take(&mut *reader, MAX_LINE as u64 + 1);
        if limited.read_until(b'\n', &mut line).await? == 0 || !line.ends_with(b"\n") {
            return Ok(None);
        }
        if line == b".\r\n" {
            return Ok(Some((raw, data)));
        }
        if raw.len() + line.len() > MAX_MESSAGE {
            return Ok(None);
        }
        raw.extend_from_slice(&line);
        data.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
    }
}
