//! Transcript tests: every file under `tests/transcripts/imap/` is replayed with
//! the client's bytes fed in every chunk size, and must produce the same actions.
//!
//! Format: `C: ` a client line (CRLF appended), `S: ` an expected server line,
//! `A: login USER PASSWORD ok|refuse|temp` an expected login (the test answers it
//! as given), `A: starttls`, `A: close`, `P: ` a line expected among the bytes
//! pipelined behind a successful login. `O: key=value` sets an option.

use super::*;

#[derive(Debug, PartialEq, Eq, Clone)]
enum Token {
    Out(Vec<u8>),
    Login(String, String),
    StartTls,
    Close,
    Pipelined(Vec<u8>),
}

struct Transcript {
    options: Options,
    input: Vec<u8>,
    expected: Vec<Token>,
    answers: Vec<LoginFailureOrOk>,
}

#[derive(Clone, Copy, Debug)]
enum LoginFailureOrOk {
    Ok,
    Fail(LoginFailure),
}

fn push_out(tokens: &mut Vec<Token>, bytes: &[u8]) {
    if let Some(Token::Out(out)) = tokens.last_mut() {
        out.extend_from_slice(bytes);
    } else {
        tokens.push(Token::Out(bytes.to_vec()));
    }
}

fn parse(text: &str) -> Transcript {
    let mut t = Transcript {
        options: Options::default(),
        input: Vec::new(),
        expected: Vec::new(),
        answers: Vec::new(),
    };
    let mut pipelined = Vec::new();
    for line in text.lines() {
        let (kind, rest) = line.split_at(line.len().min(3));
        match kind {
            "C: " => {
                t.input.extend_from_slice(rest.as_bytes());
                t.input.extend_from_slice(b"\r\n");
            }
            "S: " => push_out(&mut t.expected, format!("{rest}\r\n").as_bytes()),
            "P: " => pipelined.extend_from_slice(format!("{rest}\r\n").as_bytes()),
            "O: " => {
                let (key, value) = rest.split_once('=').expect("O: key=value");
                let on = value == "true";
                match key {
                    "tls" => t.options.tls_active = on,
                    "plaintext" => t.options.allow_plaintext_auth = on,
                    "starttls" => t.options.starttls_available = on,
                    "max_message" => t.options.max_line = value.parse().unwrap(),
                    other => panic!("unknown option {other}"),
                }
            }
            "A: " => {
                let words: Vec<&str> = rest.split(' ').collect();
                match words.as_slice() {
                    ["login", user, pass @ .., answer] => {
                        t.expected
                            .push(Token::Login((*user).to_owned(), pass.join(" ")));
                        t.answers.push(match *answer {
                            "ok" => LoginFailureOrOk::Ok,
                            "refuse" => LoginFailureOrOk::Fail(LoginFailure::Refused),
                            "temp" => LoginFailureOrOk::Fail(LoginFailure::Temporary),
                            other => panic!("unknown answer {other}"),
                        });
                    }
                    ["starttls"] => t.expected.push(Token::StartTls),
                    ["close"] => t.expected.push(Token::Close),
                    other => panic!("unknown action {other:?}"),
                }
            }
            _ if line.trim().is_empty() || line.starts_with('#') => {}
            _ => panic!("bad transcript line {line:?}"),
        }
    }
    if !pipelined.is_empty() {
        t.expected.push(Token::Pipelined(pipelined));
    }
    t
}

fn run(t: &Transcript, chunk: usize) -> Vec<Token> {
    let mut core = ImapPreAuth::new(t.options.clone());
    let mut tokens = Vec::new();
    let mut answers = t.answers.iter();
    let mut chunks = t.input.chunks(chunk);
    loop {
        match core.next_action() {
            Some(Action::Send(bytes)) => push_out(&mut tokens, &bytes),
            Some(Action::Close(bytes)) => {
                push_out(&mut tokens, &bytes);
                tokens.push(Token::Close);
                return tokens;
            }
            Some(Action::StartTls(bytes)) => {
                push_out(&mut tokens, &bytes);
                tokens.push(Token::StartTls);
                // Whatever else arrives must never be executed by this core.
                for c in chunks.by_ref() {
                    core.feed(c);
                }
                assert_eq!(core.next_action(), None);
                return tokens;
            }
            Some(Action::Login { credentials, .. }) => {
                tokens.push(Token::Login(
                    credentials.username.clone(),
                    credentials.password.expose().clone(),
                ));
                match answers.next().expect("an answer for each login") {
                    LoginFailureOrOk::Ok => {
                        let mut rest = core.into_pipelined();
                        for c in chunks {
                            rest.extend_from_slice(c);
                        }
                        if !rest.is_empty() {
                            tokens.push(Token::Pipelined(rest));
                        }
                        return tokens;
                    }
                    LoginFailureOrOk::Fail(f) => {
                        let reply = core.login_failed(*f);
                        push_out(&mut tokens, &reply);
                    }
                }
            }
            None => match chunks.next() {
                Some(c) => core.feed(c),
                None => return tokens,
            },
        }
    }
}

fn show(tokens: &[Token]) -> String {
    tokens
        .iter()
        .map(|t| match t {
            Token::Out(b) | Token::Pipelined(b) => {
                format!(
                    "{:?}: {}",
                    std::mem::discriminant(t),
                    String::from_utf8_lossy(b)
                )
            }
            other => format!("{other:?}\n"),
        })
        .collect()
}

#[test]
fn transcripts() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/transcripts/imap");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("transcript folder")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "transcripts missing");
    for path in files {
        let t = parse(&std::fs::read_to_string(&path).expect("readable"));
        for chunk in 1..=t.input.len().max(1) {
            let got = run(&t, chunk);
            assert_eq!(
                got,
                t.expected,
                "{} at chunk size {chunk}:\n--- got\n{}\n--- expected\n{}",
                path.display(),
                show(&got),
                show(&t.expected)
            );
        }
    }
}

/// The largest ID RFC 2971 §3.3 allows: 30 pairs, 30-octet fields, 1024-octet
/// values (what Dovecot's imaptest `id` test sends before login).
fn largest_id(tag: &str) -> Vec<u8> {
    let pairs: Vec<String> = (0..30)
        .map(|i| {
            format!(
                "\"x-field-{i:02}{}\" \"{}\"",
                "f".repeat(20),
                "v".repeat(1024)
            )
        })
        .collect();
    format!("{tag} ID ({})\r\n", pairs.join(" ")).into_bytes()
}

/// Feeds `input` in chunks of `chunk` bytes the way the driver does (actions
/// taken after every feed); returns what the core sent and whether it closed,
/// and checks that it never holds more than `cap` plus one feed.
fn drive(core: &mut ImapPreAuth, input: &[u8], chunk: usize, cap: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    for c in input.chunks(chunk) {
        core.feed(c);
        assert!(core.buffered() <= cap + c.len(), "chunk {chunk}");
        while let Some(action) = core.next_action() {
            match action {
                Action::Send(bytes) => out.extend(bytes),
                Action::Close(bytes) => {
                    out.extend(bytes);
                    return (out, true);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(core.buffered() <= cap, "chunk {chunk}");
    }
    (out, false)
}

#[test]
fn the_largest_rfc_2971_id_is_answered_at_every_split() {
    let mut input = largest_id("a");
    assert_eq!(input.len(), 31_808);
    input.extend_from_slice(b"b NOOP\r\n");
    let options = Options {
        max_line: MIN_MESSAGE_CAP,
        ..Options::default()
    };
    // Every size a read of the driver can return (it reads 4 KiB at most), and
    // the whole input at once.
    for chunk in (1..=4096).chain([input.len()]) {
        let mut core = ImapPreAuth::new(options.clone());
        let (out, closed) = drive(&mut core, &input, chunk, MIN_MESSAGE_CAP);
        assert!(!closed, "chunk {chunk}");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "* ID (\"name\" \"postern\")\r\na OK ID completed\r\nb OK NOOP completed\r\n",
            "chunk {chunk}"
        );
    }
}

#[test]
fn the_largest_id_fits_even_with_every_octet_escaped() {
    let pairs: Vec<String> = (0..30)
        .map(|_| format!("\"{}\" \"{}\"", "\\\\".repeat(30), "\\\"".repeat(1024)))
        .collect();
    let input = format!("{} ID ({})\r\n", "t".repeat(1000), pairs.join(" "));
    assert!(input.len() < MIN_MESSAGE_CAP, "{}", input.len());
    let mut core = ImapPreAuth::new(Options {
        max_line: MIN_MESSAGE_CAP,
        ..Options::default()
    });
    let (out, closed) = drive(&mut core, input.as_bytes(), 4096, MIN_MESSAGE_CAP);
    assert!(!closed);
    assert!(
        out.ends_with(b" OK ID completed\r\n"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn a_line_past_the_cap_without_a_line_end_is_answered_and_closed_at_every_split() {
    // A small cap keeps every split fast; the production cap is the same code.
    let cap = 1024;
    let mut input = b"a NOOP\r\nb LOGIN ".to_vec();
    input.extend(std::iter::repeat_n(b'x', 3 * cap));
    for chunk in 1..=input.len() {
        let mut core = ImapPreAuth::new(Options {
            max_line: cap,
            allow_plaintext_auth: true,
            ..Options::default()
        });
        let mut out = Vec::new();
        let mut fed = 0;
        let mut closed_at = None;
        for c in input.chunks(chunk) {
            core.feed(c);
            fed += c.len();
            while let Some(action) = core.next_action() {
                match action {
                    Action::Send(bytes) => out.extend(bytes),
                    Action::Close(bytes) => {
                        out.extend(bytes);
                        closed_at = Some(fed);
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert!(core.buffered() <= cap, "chunk {chunk}");
            if closed_at.is_some() {
                break;
            }
        }
        // Answered in the feed that passed the cap, without echoing the line.
        let closed_at = closed_at.unwrap_or_else(|| panic!("never closed at chunk {chunk}"));
        assert!(
            closed_at > 8 + cap && closed_at <= 8 + cap + chunk,
            "chunk {chunk}"
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "a OK NOOP completed\r\n* BYE [TOOBIG] Command line too long\r\n",
            "chunk {chunk}"
        );
        assert_eq!(core.next_action(), None);
    }
}

#[test]
fn ten_megabytes_without_a_line_end_are_refused_once_the_cap_is_passed() {
    let mut core = ImapPreAuth::new(Options {
        max_line: MIN_MESSAGE_CAP,
        allow_plaintext_auth: true,
        ..Options::default()
    });
    core.feed(b"a LOGIN ");
    assert_eq!(core.next_action(), None);
    let chunk = vec![b'a'; 4096];
    let mut fed = 8;
    let action = loop {
        core.feed(&chunk);
        fed += chunk.len();
        let action = core.next_action();
        assert!(core.buffered() <= MIN_MESSAGE_CAP);
        if let Some(action) = action {
            break action;
        }
        assert!(fed < 10 * 1024 * 1024, "never answered");
    };
    assert!(fed > MIN_MESSAGE_CAP && fed <= MIN_MESSAGE_CAP + chunk.len());
    // The overlong input is not echoed back, not even as a tag.
    assert_eq!(
        action,
        Action::Close(b"* BYE [TOOBIG] Command line too long\r\n".to_vec())
    );
    // Nothing more is taken in.
    core.feed(b"\r\nb NOOP\r\n");
    assert_eq!(core.next_action(), None);
    assert_eq!(core.buffered(), MIN_MESSAGE_CAP);
}

#[test]
fn an_authentication_response_past_the_cap_gets_its_tagged_answer() {
    let mut core = ImapPreAuth::new(Options {
        max_line: 1024,
        tls_active: true,
        ..Options::default()
    });
    core.feed(b"a AUTHENTICATE PLAIN\r\n");
    assert_eq!(core.next_action(), Some(Action::Send(b"+ \r\n".to_vec())));
    core.feed(&[b'A'; 2000]);
    assert_eq!(
        core.next_action(),
        Some(Action::Close(
            b"a BAD Authentication line too long\r\n* BYE [TOOBIG] Line too long\r\n".to_vec()
        ))
    );
}

#[test]
fn greeting_advertises_state() {
    let plain = ImapPreAuth::new(Options::default());
    let greeting = String::from_utf8(plain.greeting()).unwrap();
    assert!(greeting.contains("STARTTLS") && greeting.contains("LOGINDISABLED"));
    assert!(!greeting.contains("AUTH="));
    let tls = ImapPreAuth::new(Options {
        tls_active: true,
        ..Options::default()
    });
    let caps = tls.capabilities();
    assert!(caps.contains("AUTH=PLAIN AUTH=LOGIN") && caps.contains("SASL-IR"));
    assert!(!caps.contains("STARTTLS") && !caps.contains("LOGINDISABLED"));
}

#[test]
fn nul_bytes_in_literals_never_reach_a_login() {
    for input in [
        &b"a LOGIN {7+}\r\nal\0ice1 pw\r\n"[..],
        b"a LOGIN alice {4+}\r\np\0w1\r\n",
        b"a LOGIN \"al\0ice\" pw\r\n",
    ] {
        let mut core = ImapPreAuth::new(Options {
            tls_active: true,
            ..Options::default()
        });
        core.feed(input);
        let action = core.next_action();
        let Some(Action::Send(reply)) = &action else {
            panic!("{action:?}")
        };
        assert!(
            reply.starts_with(b"a BAD "),
            "{}",
            String::from_utf8_lossy(reply)
        );
    }
}

/// The pending login carries the client's tag: postern logs in upstream under
/// it, and a refusal answers under it, so the client matches the reply to its
/// command. After STARTTLS no login is pending.
#[test]
fn a_pending_login_carries_the_client_tag() {
    let mut core = ImapPreAuth::new(Options {
        tls_active: true,
        ..Options::default()
    });
    assert_eq!(core.login_tag(), None);
    core.feed(b"x7 LOGIN user pass\r\n");
    assert!(matches!(core.next_action(), Some(Action::Login { .. })));
    assert_eq!(core.login_tag(), Some("x7"));
    let reply = core.login_failed(LoginFailure::Refused);
    assert!(reply.starts_with(b"x7 NO [AUTHENTICATIONFAILED]"));
    assert_eq!(core.login_tag(), None);

    let mut core = ImapPreAuth::new(Options::default());
    core.feed(b"s1 STARTTLS\r\ns2 LOGIN user pass\r\n");
    assert!(matches!(core.next_action(), Some(Action::StartTls(_))));
    assert_eq!(core.next_action(), None);
    assert_eq!(core.login_tag(), None);
}
