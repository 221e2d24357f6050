//! Drivers and invariants shared by the fuzz targets (`fuzz_targets/`) and the
//! fast deterministic properties in `tests/fuzz_props.rs`, which includes this
//! file by path so both check exactly the same things.
//!
//! A fuzz input is `[flags, n, n chunk lengths..., payload...]`: `flags` picks the
//! connection options, the chunk lengths (cycled) say where the payload is split
//! between feeds. Each core is driven the way `session::driver` drives it: feed
//! one chunk, take actions until `None`, answer every `Login` (alternately
//! refused and accepted), stop at `Close`, `StartTls` or an accepted login. The
//! same payload fed whole, byte by byte and in the fuzzer's chunks must give the
//! same events, and memory held between feeds must stay within the caps.

use std::net::SocketAddr;

use postern::net::proxy::{Framing, V1_MAX, V2_MAX, frame, parse};
use postern::protocol::imap::server::ImapPreAuth;
use postern::protocol::imap::upstream::ImapUpstreamLogin;
use postern::protocol::line::{Action, LoginFailure, Options, PreAuthCore};
use postern::protocol::pop3::server::Pop3PreAuth;
use postern::protocol::pop3::upstream::Pop3UpstreamLogin;
use postern::protocol::sasl::{self, Mechanism, SaslExchange, Step};
use postern::protocol::smtp::server::SmtpPreAuth;
use postern::protocol::smtp::upstream::{SmtpLoginMode, SmtpUpstreamLogin};
use postern::protocol::upstream::{UpstreamCredentials, UpstreamRequest, UpstreamStep};

/// A fuzz input taken apart.
pub struct Input<'a> {
    pub flags: u8,
    pub chunks: Vec<usize>,
    pub payload: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn parse(data: &'a [u8]) -> Self {
        let flags = data.first().copied().unwrap_or(0);
        let n = data.get(1).map_or(0, |n| usize::from(n % 8));
        let rest = data.get(2..).unwrap_or_default();
        let n = n.min(rest.len());
        let chunks = rest[..n].iter().map(|c| usize::from(*c) + 1).collect();
        Self {
            flags,
            chunks,
            payload: &rest[n..],
        }
    }

    /// The client connection options `flags` selects; `max_line` stays small
    /// enough that byte-by-byte feeding is fast.
    pub fn options(&self) -> Options {
        let f = self.flags;
        Options {
            tls_active: f & 1 != 0,
            starttls_available: f & 2 != 0,
            allow_plaintext_auth: f & 4 != 0,
            max_line: [32, 128, 512, 2048][usize::from(f >> 3 & 3)],
            max_bad_commands: [1, 3, 10, 1000][usize::from(f >> 5 & 3)],
        }
    }
}

/// Splits `payload` at the cycled `lengths`; no lengths means one chunk.
pub fn split<'p>(payload: &'p [u8], lengths: &[usize]) -> Vec<&'p [u8]> {
    if lengths.is_empty() {
        return vec![payload];
    }
    let mut out = Vec::new();
    let mut rest = payload;
    let mut i = 0;
    while !rest.is_empty() {
        let (head, tail) = rest.split_at(lengths[i % lengths.len()].min(rest.len()));
        out.push(head);
        rest = tail;
        i += 1;
    }
    out
}

/// What a pre-login core did, as the client and the driver would see it.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    Action(Action),
    /// The core's reply to `login_failed`.
    Refusal(Vec<u8>),
    /// `into_pipelined` followed by every byte not yet fed: what goes upstream.
    Pipelined(Vec<u8>),
}

/// Drives `core` over `chunks`; `cap` is the most it may hold after the last
/// feed was drained.
pub fn drive<C: PreAuthCore>(mut core: C, chunks: &[&[u8]], cap: usize) -> Vec<Event> {
    let mut events = Vec::new();
    let mut logins = 0usize;
    for (i, chunk) in chunks.iter().enumerate() {
        core.feed(chunk);
        assert!(
            core.buffered() <= cap + chunk.len(),
            "holds {} bytes after a feed of {} (cap {cap})",
            core.buffered(),
            chunk.len()
        );
        while let Some(action) = core.next_action() {
            match action {
                Action::Close(_) | Action::StartTls(_) => {
                    events.push(Event::Action(action));
                    assert_eq!(core.next_action(), None, "action after close/starttls");
                    return events;
                }
                Action::Login { .. } => {
                    events.push(Event::Action(action));
                    logins += 1;
                    if logins % 2 == 1 {
                        events.push(Event::Refusal(core.login_failed(LoginFailure::Refused)));
                    } else {
                        let mut upstream = core.into_pipelined();
                        for later in &chunks[i + 1..] {
                            upstream.extend_from_slice(later);
                        }
                        events.push(Event::Pipelined(upstream));
                        return events;
                    }
                }
                Action::Send(_) => events.push(Event::Action(action)),
            }
        }
        assert!(
            core.buffered() <= cap,
            "holds {} bytes between feeds (cap {cap})",
            core.buffered()
        );
    }
    events
}

/// Runs one core three ways (whole, byte by byte, fuzzer chunks) and checks
/// they agree and that what goes upstream is a suffix of the input.
fn check_three_ways<C: PreAuthCore>(input: &Input, make: impl Fn() -> C, cap: usize) {
    let payload = input.payload;
    let whole = drive(make(), &[payload], cap);
    let bytes: Vec<&[u8]> = payload.chunks(1).collect();
    let by_byte = drive(make(), &bytes, cap);
    assert_eq!(whole, by_byte, "whole vs byte by byte");
    let chunked = drive(make(), &split(payload, &input.chunks), cap);
    assert_eq!(whole, chunked, "whole vs chunks {:?}", input.chunks);
    for event in &whole {
        if let Event::Pipelined(rest) = event {
            assert!(payload.ends_with(rest), "pipelined bytes are not a suffix");
        }
        if let Event::Action(Action::Login { credentials, .. }) = event {
            // Credentials::new's promises reach the driver intact.
            assert!(!credentials.username.is_empty());
            assert!(credentials.username.len() <= sasl::MAX_USERNAME);
            assert!(!credentials.password.expose().contains(['\0', '\r', '\n']));
        }
    }
}

/// `buffered()` may exceed `max_line` by one (the CR of a line at the cap).
pub fn pop3(data: &[u8]) {
    let input = Input::parse(data);
    let options = input.options();
    let cap = options.max_line + 1;
    check_three_ways(&input, || Pop3PreAuth::new(options.clone()), cap);
}

pub fn smtp(data: &[u8]) {
    let input = Input::parse(data);
    let options = input.options();
    let cap = options.max_line + 1;
    let extensions = vec!["SIZE 35882577".to_owned(), "8BITMIME".to_owned()];
    check_three_ways(
        &input,
        || {
            SmtpPreAuth::new(
                options.clone(),
                "mx.example.test".into(),
                extensions.clone(),
            )
        },
        cap,
    );
}

/// The framer holds at most one message of `max_line` bytes between feeds.
pub fn imap(data: &[u8]) {
    let input = Input::parse(data);
    let options = input.options();
    let cap = options.max_line;
    check_three_ways(&input, || ImapPreAuth::new(options.clone()), cap);
}

/// The PROXY header as a trusted proxy's connection starts: the framing asks for
/// bytes in exact steps, never past the caps and never past the header's end (not
/// one byte of the client's own protocol is consumed), and a framed header parses
/// or is refused without a panic.
pub fn proxy_header(data: &[u8]) {
    let cap = V1_MAX.max(V2_MAX);
    let mut read = 0usize;
    loop {
        match frame(&data[..read]) {
            Err(_) => return,
            Ok(Framing::Complete(n)) => {
                assert_eq!(n, read, "the header ends exactly where reading stopped");
                let _ = parse(&data[..n]);
                return;
            }
            Ok(Framing::Need(more)) => {
                assert!(more > 0, "asked for nothing");
                assert!(read + more <= cap, "asked for {more} more after {read}");
                if read + more > data.len() {
                    return;
                }
                read += more;
            }
        }
    }
}

/// Seeds for [`proxy_header`]: v1 TCP4/TCP6/UNKNOWN and v2 PROXY/LOCAL, each
/// followed by the client's first bytes.
pub const PROXY_SEEDS: &[&[u8]] = &[
    b"PROXY TCP4 192.0.2.9 10.0.0.1 50000 143\r\na001 CAPABILITY\r\n",
    b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 993\r\n",
    b"PROXY UNKNOWN\r\n",
    b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\xc6\x33\x64\x04\x0a\x00\x00\x01\x17\x70\x03\xe1* OK\r\n",
    b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00",
    // Found by fuzzing: a line ending inside the first 12 bytes read.
    b"PROXY 143\r\na001 CAPATCP4 192.0 143\r\na001 CAPABILITY\r\n",
];

/// SASL on arbitrary lines: every line of the payload is one client response.
pub fn sasl(data: &[u8]) {
    let input = Input::parse(data);
    let _ = sasl::parse_plain(input.payload);
    if let Ok(decoded) = sasl::decode_response(input.payload) {
        // Round trip: what decodes re-encodes to something that decodes the same.
        let again = sasl::decode_response(sasl::encode(decoded.expose()).as_bytes())
            .expect("re-encoded response decodes");
        assert_eq!(again.expose(), decoded.expose());
    }
    let mechanism = if input.flags & 1 == 0 {
        Mechanism::Plain
    } else {
        Mechanism::Login
    };
    let mut lines = input.payload.split(|b| *b == b'\n');
    let first = if input.flags & 2 == 0 {
        None
    } else {
        lines.next()
    };
    let mut step = SaslExchange::start(mechanism, first);
    loop {
        match step {
            Step::Challenge(exchange, _) => match lines.next() {
                Some(line) => step = exchange.step(line),
                None => return,
            },
            Step::Done(credentials) => {
                let again = sasl::Credentials::new(
                    credentials.username.as_bytes(),
                    credentials.password.expose().as_bytes(),
                );
                assert_eq!(
                    again,
                    Ok(credentials),
                    "Done credentials pass Credentials::new"
                );
                return;
            }
            Step::Failed(_) => return,
        }
    }
}

/// What an upstream-login core did.
#[derive(Debug, PartialEq, Eq)]
pub enum UpstreamEvent {
    Step(UpstreamStep),
    /// `leftover` of `LoggedIn` followed by every byte not yet fed.
    Leftover(Vec<u8>),
}

fn request(flags: u8) -> UpstreamRequest {
    UpstreamRequest {
        credentials: UpstreamCredentials {
            authzid: if flags & 1 == 0 {
                String::new()
            } else {
                "alice@example.test".into()
            },
            authcid: "master".into(),
            password: "pw".into(),
        },
        client: SocketAddr::from(([192, 0, 2, 7], 50123)),
        starttls: flags & 2 != 0,
    }
}

fn drive_upstream(
    mut feed: impl FnMut(&[u8]),
    mut next: impl FnMut() -> Option<UpstreamStep>,
    chunks: &[&[u8]],
) -> Vec<UpstreamEvent> {
    let mut events = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        feed(chunk);
        while let Some(step) = next() {
            match step {
                UpstreamStep::LoggedIn {
                    client_reply,
                    mut leftover,
                } => {
                    for later in &chunks[i + 1..] {
                        leftover.extend_from_slice(later);
                    }
                    events.push(UpstreamEvent::Step(UpstreamStep::LoggedIn {
                        client_reply,
                        leftover: Vec::new(),
                    }));
                    events.push(UpstreamEvent::Leftover(leftover));
                    return events;
                }
                UpstreamStep::Refused { .. } | UpstreamStep::Failed { .. } => {
                    events.push(UpstreamEvent::Step(step));
                    assert_eq!(next(), None, "step after the login ended");
                    return events;
                }
                UpstreamStep::Send(_) | UpstreamStep::StartTls => {
                    events.push(UpstreamEvent::Step(step));
                }
            }
        }
    }
    events
}

/// Bytes an upstream sent in the same read as its STARTTLS answer are dropped
/// by design (they could be a man in the middle's injection), so after a
/// `StartTls` step the three runs legitimately differ: they are compared up to
/// it, and the whole-input run (where every later byte was such an injection)
/// must do nothing after it but send its next command.
fn upstream_three_ways(input: &Input, run: impl Fn(&[&[u8]]) -> Vec<UpstreamEvent>) {
    fn until_tls(events: &[UpstreamEvent]) -> &[UpstreamEvent] {
        let end = events
            .iter()
            .position(|e| matches!(e, UpstreamEvent::Step(UpstreamStep::StartTls)))
            .map_or(events.len(), |i| i + 1);
        &events[..end]
    }
    let payload = input.payload;
    let whole = run(&[payload]);
    let bytes: Vec<&[u8]> = payload.chunks(1).collect();
    let by_byte = run(&bytes);
    assert_eq!(
        until_tls(&whole),
        until_tls(&by_byte),
        "whole vs byte by byte"
    );
    let chunked = run(&split(payload, &input.chunks));
    assert_eq!(until_tls(&whole), until_tls(&chunked), "whole vs chunks");
    for event in &whole[until_tls(&whole).len()..] {
        assert!(
            matches!(event, UpstreamEvent::Step(UpstreamStep::Send(_))),
            "acted on bytes received before TLS: {event:?}"
        );
    }
    for event in whole.iter().chain(&by_byte).chain(&chunked) {
        if let UpstreamEvent::Leftover(rest) = event {
            assert!(payload.ends_with(rest), "leftover is not a suffix");
        }
    }
}

pub fn imap_upstream(data: &[u8]) {
    let input = Input::parse(data);
    upstream_three_ways(&input, |chunks| {
        let core = std::cell::RefCell::new(ImapUpstreamLogin::new(request(input.flags), "a1"));
        drive_upstream(
            |b| core.borrow_mut().feed(b),
            || core.borrow_mut().next_step(),
            chunks,
        )
    });
}

pub fn pop3_upstream(data: &[u8]) {
    let input = Input::parse(data);
    upstream_three_ways(&input, |chunks| {
        let core = std::cell::RefCell::new(Pop3UpstreamLogin::new(request(input.flags)));
        drive_upstream(
            |b| core.borrow_mut().feed(b),
            || core.borrow_mut().next_step(),
            chunks,
        )
    });
}

pub fn smtp_upstream(data: &[u8]) {
    let input = Input::parse(data);
    let mode = if input.flags & 4 == 0 {
        SmtpLoginMode::Auth
    } else {
        SmtpLoginMode::Xclient
    };
    let helo = if input.flags & 8 == 0 {
        "client.example".to_owned()
    } else {
        String::from_utf8_lossy(input.payload.get(..16).unwrap_or_default()).into_owned()
    };
    upstream_three_ways(&input, |chunks| {
        let core = std::cell::RefCell::new(SmtpUpstreamLogin::new(
            request(input.flags),
            mode,
            helo.clone(),
        ));
        drive_upstream(
            |b| core.borrow_mut().feed(b),
            || core.borrow_mut().next_step(),
            chunks,
        )
    });
}

/// The client bytes of a transcript under `tests/transcripts/` (the `C: ` lines;
/// POP3/SMTP escapes `\r \n \0 \\` and a trailing `\` that suppresses CRLF are
/// honoured) and the flags byte matching its `O: ` options.
pub fn transcript_input(text: &str) -> Vec<u8> {
    let mut flags: u8 = 2 | (3 << 3) | (1 << 5);
    let mut bytes = Vec::new();
    for line in text.lines() {
        if let Some(options) = line.strip_prefix("O: ") {
            for word in options.split_whitespace() {
                match word {
                    "tls" | "tls=true" => flags |= 1,
                    "plaintext" | "plaintext=true" => flags |= 4,
                    "no-starttls" | "starttls=false" => flags &= !2,
                    w if w.starts_with("max_line=") => flags &= !(3 << 3),
                    _ => {}
                }
            }
        } else if let Some(client) = line.strip_prefix("C: ") {
            let mut chars = client.chars();
            let mut line_end = true;
            while let Some(c) = chars.next() {
                let mut buf = [0; 4];
                match (c, chars.clone().next()) {
                    ('\\', None) => line_end = false,
                    ('\\', Some(e @ ('r' | 'n' | '0' | '\\'))) => {
                        chars.next();
                        bytes.push(match e {
                            'r' => b'\r',
                            'n' => b'\n',
                            '0' => 0,
                            _ => b'\\',
                        });
                    }
                    _ => bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
                }
            }
            if line_end {
                bytes.extend_from_slice(b"\r\n");
            }
        }
    }
    let mut input = vec![flags, 0];
    input.extend(bytes);
    input
}

/// Server byte streams for the upstream-login targets (flags, no splits, bytes).
pub const UPSTREAM_SEEDS: &[(&str, &[u8])] = &[
    (
        "imap_upstream",
        b"\x00\x00* OK [CAPABILITY IMAP4rev1 SASL-IR ID AUTH=PLAIN] Dovecot ready.\r\n* ID NIL\r\np1 OK ID completed.\r\na1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n* 3 EXISTS",
    ),
    (
        "imap_upstream",
        b"\x02\x00* OK [CAPABILITY IMAP4rev1 STARTTLS] hi\r\np0 OK Begin TLS\r\n* OK\r\np1 OK\r\n+ \r\na1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n",
    ),
    (
        "imap_upstream",
        b"\x00\x00* OK ready\r\np1 OK\r\n+ {3}\r\nabc\r\na1 OK done\r\n",
    ),
    (
        "pop3_upstream",
        b"\x00\x00+OK hi\r\n+OK\r\nSASL PLAIN\r\nXCLIENT\r\nPIPELINING\r\n.\r\n+OK\r\n+OK Logged in.\r\n+OK 2 messages\r\n",
    ),
    (
        "pop3_upstream",
        b"\x02\x00+OK ready\r\n+OK Begin TLS negotiation now.\r\n+OK\r\nXCLIENT\r\n.\r\n-ERR no\r\n+ \r\n-ERR [AUTH] Authentication failed.\r\n",
    ),
    (
        "smtp_upstream",
        b"\x00\x00220 mail.example.test ESMTP Postfix\r\n250-mail.example.test\r\n250-AUTH PLAIN\r\n250-XCLIENT ADDR PORT LOGIN HELO\r\n250 SIZE 1000\r\n220 2.0.0 ready\r\n250-x\r\n250 AUTH PLAIN\r\n235-2.7.0 first\r\n235 2.7.0 Authentication successful\r\nleft",
    ),
    (
        "smtp_upstream",
        b"\x06\x00220 hi\r\n250-hi\r\n250 STARTTLS\r\n220 2.0.0 Ready to start TLS\r\n250-x\r\n250 XCLIENT LOGIN\r\n220 again\r\n250 ok\r\n",
    ),
    (
        "smtp_upstream",
        b"\x00\x00220 hi\r\n250 AUTH PLAIN\r\n334 \r\n535 5.7.8 Authentication failed\r\n",
    ),
];

/// SASL lines (flags: bit 0 LOGIN, bit 1 the first line is an initial response).
pub const SASL_SEEDS: &[&[u8]] = &[
    b"\x00\x00AGFsaWNlAHNlY3JldA==",
    b"\x02\x00AGFsaWNlAHNlY3JldA==",
    b"\x01\x00YWxpY2U=\nc2VjcmV0",
    b"\x03\x00YWxpY2U=\nc2VjcmV0",
    b"\x00\x00*",
    b"\x02\x00=",
    b"\x00\x00Ym9iAGFsaWNlAHNlY3JldA==",
    b"\x00\x00!!notbase64",
];
