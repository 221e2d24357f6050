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

#[test]
fn ten_megabyte_line_stays_bounded_and_is_refused() {
    let mut core = ImapPreAuth::new(Options {
        allow_plaintext_auth: true,
        ..Options::default()
    });
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..160 {
        core.feed(&chunk);
        assert_eq!(core.next_action(), None);
        assert!(core.framer.message().len() <= 8192);
        assert!(core.framer.unconsumed().is_empty());
    }
    core.feed(b"\r\nb NOOP\r\n");
    // The overlong input is not echoed back, not even as a tag.
    assert_eq!(
        core.next_action(),
        Some(Action::Send(b"* BAD Command line too long\r\n".to_vec()))
    );
    assert_eq!(
        core.next_action(),
        Some(Action::Send(b"b OK NOOP completed\r\n".to_vec()))
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
