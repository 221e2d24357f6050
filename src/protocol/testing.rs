//! Test support: replays client/server transcripts against a pre-login core, feeding
//! the client's bytes in chunks of every size from 1 to all of them.
//!
//! Transcript format, one item per line (`#` starts a comment):
//! - `O: tls plaintext no-starttls max_line=N max_bad=N` connection options
//!   (defaults: no TLS, STARTTLS available, plaintext off);
//! - `X: <line>` an extension the upstream advertises (SMTP only);
//! - `C: <bytes>` client bytes, `S: <bytes>` expected server bytes, `P: <bytes>`
//!   bytes `into_pipelined` must return; each gets CRLF appended unless it ends
//!   with an unescaped `\`; escapes: `\r`, `\n`, `\0`, `\\`;
//! - `A: login <METHOD> <user> <password>`, `A: starttls`, `A: close` expected
//!   actions (the `S:` lines before them are their reply bytes);
//! - `R: refused` / `R: temporary`: the driver refuses the login just returned;
//!   the `S:` lines that follow are the core's reply. A login not followed by `R:`
//!   succeeded: the rest of the input is fed and `into_pipelined` compared to `P:`.

use crate::protocol::line::{Action, LoginFailure, Options, PreAuthCore};

/// One observable thing, with adjacent output merged so that how replies are cut
/// into actions does not matter to a transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Output(Vec<u8>),
    Close,
    StartTls,
    Login(String),
    LoginFailed(LoginFailure),
    Pipelined(Vec<u8>),
}

fn push(events: &mut Vec<Event>, event: Event) {
    match (events.last_mut(), event) {
        (Some(Event::Output(prev)), Event::Output(more)) => prev.extend(more),
        (Some(Event::Pipelined(prev)), Event::Pipelined(more)) => prev.extend(more),
        (_, event) => events.push(event),
    }
}

/// A parsed transcript.
pub struct Transcript {
    pub options: Options,
    pub extensions: Vec<String>,
    input: Vec<u8>,
    expected: Vec<Event>,
}

fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line_end = true;
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            None => line_end = false,
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('0') => out.push(0),
            Some('\\') => out.push(b'\\'),
            Some(other) => panic!("unknown escape \\{other}"),
        }
    }
    if line_end {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn parse(text: &str) -> Transcript {
    let mut options = Options::default();
    let mut extensions = Vec::new();
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (tag, rest) = line.split_at(3.min(line.len()));
        match tag {
            "O: " => {
                for word in rest.split_whitespace() {
                    match word.split_once('=') {
                        None if word == "tls" => options.tls_active = true,
                        None if word == "plaintext" => options.allow_plaintext_auth = true,
                        None if word == "no-starttls" => options.starttls_available = false,
                        Some(("max_line", n)) => options.max_line = n.parse().unwrap(),
                        Some(("max_bad", n)) => options.max_bad_commands = n.parse().unwrap(),
                        _ => panic!("unknown option {word}"),
                    }
                }
            }
            "X: " => extensions.push(rest.to_owned()),
            "C: " => input.extend(unescape(rest)),
            "S: " => push(&mut expected, Event::Output(unescape(rest))),
            "P: " => push(&mut expected, Event::Pipelined(unescape(rest))),
            "A: " => {
                let event = match rest.trim() {
                    "close" => Event::Close,
                    "starttls" => Event::StartTls,
                    login if login.starts_with("login ") => Event::Login(login.to_owned()),
                    other => panic!("unknown action {other}"),
                };
                push(&mut expected, event);
            }
            "R: " => {
                let failure = match rest.trim() {
                    "refused" => LoginFailure::Refused,
                    "temporary" => LoginFailure::Temporary,
                    other => panic!("unknown failure {other}"),
                };
                push(&mut expected, Event::LoginFailed(failure));
            }
            _ => panic!("bad transcript line {line:?}"),
        }
    }
    Transcript {
        options,
        extensions,
        input,
        expected,
    }
}

/// Feeds `transcript`'s input in chunks of `chunk` bytes and records what happens.
fn replay<C: PreAuthCore>(
    transcript: &Transcript,
    chunk: usize,
    make: &impl Fn(&Transcript) -> (C, Vec<u8>),
) -> (Vec<Event>, Vec<Action>) {
    let (mut core, greeting) = make(transcript);
    let mut events = vec![Event::Output(greeting)];
    let mut raw = Vec::new();
    let mut logins = 0;
    let mut chunks = transcript.input.chunks(chunk);
    'feeding: while let Some(part) = chunks.next() {
        core.feed(part);
        // Memory stays bounded: the cap plus what one read brought in.
        assert!(core.buffered() <= transcript.options.max_line + 2 + chunk);
        while let Some(action) = core.next_action() {
            let event = match &action {
                Action::Send(bytes) => Event::Output(bytes.clone()),
                Action::Close(bytes) => {
                    push(&mut events, Event::Output(bytes.clone()));
                    Event::Close
                }
                Action::StartTls(bytes) => {
                    push(&mut events, Event::Output(bytes.clone()));
                    Event::StartTls
                }
                Action::Login {
                    credentials,
                    method,
                } => Event::Login(format!(
                    "login {} {} {}",
                    method.name(),
                    credentials.username,
                    credentials.password.expose()
                )),
            };
            let is_login = matches!(action, Action::Login { .. });
            raw.push(action);
            push(&mut events, event);
            if !is_login {
                continue;
            }
            logins += 1;
            let failure = transcript
                .expected
                .iter()
                .enumerate()
                .filter(|(_, e)| matches!(e, Event::Login(_)))
                .nth(logins - 1)
                .and_then(|(i, _)| match transcript.expected.get(i + 1) {
                    Some(Event::LoginFailed(failure)) => Some(*failure),
                    _ => None,
                });
            match failure {
                Some(failure) => {
                    let reply = core.login_failed(failure);
                    push(&mut events, Event::LoginFailed(failure));
                    push(&mut events, Event::Output(reply.clone()));
                    raw.push(Action::Send(reply));
                }
                None => {
                    // The upstream accepted: nothing else is executed.
                    for part in chunks.by_ref() {
                        core.feed(part);
                        assert_eq!(core.next_action(), None);
                    }
                    let rest = core.into_pipelined();
                    if !rest.is_empty() {
                        push(&mut events, Event::Pipelined(rest));
                    }
                    break 'feeding;
                }
            }
        }
    }
    (events, raw)
}

/// Runs one transcript at every chunk size and checks the result each time.
pub fn run_transcript<C: PreAuthCore>(
    name: &str,
    text: &str,
    make: impl Fn(&Transcript) -> (C, Vec<u8>),
) {
    let transcript = parse(text);
    let size = transcript.input.len().max(1);
    let (whole, whole_raw) = replay(&transcript, size, &make);
    assert_eq!(
        Shown(&whole),
        Shown(&transcript.expected),
        "{name}: whole input"
    );
    for chunk in 1..size {
        let (events, raw) = replay(&transcript, chunk, &make);
        assert_eq!(raw, whole_raw, "{name}: chunk size {chunk}");
        assert_eq!(Shown(&events), Shown(&whole), "{name}: chunk size {chunk}");
    }
}

/// Shows output bytes as text in assertion failures.
#[derive(PartialEq)]
struct Shown<'a>(&'a [Event]);

impl std::fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for event in self.0 {
            match event {
                Event::Output(bytes) => writeln!(f, "S: {}", String::from_utf8_lossy(bytes))?,
                Event::Pipelined(bytes) => writeln!(f, "P: {}", String::from_utf8_lossy(bytes))?,
                other => writeln!(f, "{other:?}")?,
            }
        }
        Ok(())
    }
}
