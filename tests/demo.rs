//! `postern demo` in-process: log in through postern to the demo upstream over
//! IMAP, POP3 and SMTP, and send mail from alice to bob.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use postern::credentials::issue_app_password;
use postern::demo::{self, DemoHandle, DemoOptions};
use postern::policy::{Protocol, Scopes};
use postern::store::FactorKind;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const ALICE: &str = "alice@demo.test";
const BOB: &str = "bob@demo.test";

struct Client(BufReader<TcpStream>);

impl Client {
    async fn connect(demo: &DemoHandle, protocol: Protocol) -> Client {
        let tcp = TcpStream::connect(demo.addr(protocol, false))
            .await
            .unwrap();
        let mut client = Client(BufReader::new(tcp));
        client.line().await;
        client
    }
    async fn send(&mut self, text: &str) {
        self.0.get_mut().write_all(text.as_bytes()).await.unwrap();
    }
    async fn line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(20), self.0.read_line(&mut line))
            .await
            .expect("timed out")
            .unwrap();
        line
    }
    /// Lines up to and including the first starting with `prefix`.
    async fn until(&mut self, prefix: &str) -> String {
        let mut all = String::new();
        loop {
            let line = self.line().await;
            assert!(!line.is_empty(), "closed; got {all}");
            all.push_str(&line);
            if line.starts_with(prefix) {
                return all;
            }
        }
    }
}

fn plain(user: &str, password: &str) -> String {
    B64.encode(format!("\0{user}\0{password}"))
}

async fn start() -> DemoHandle {
    demo::start(DemoOptions {
        friendly_ports: false,
        no_penalties: true,
    })
    .await
    .expect("demo")
}

async fn imap_login(demo: &DemoHandle, user: &str, password: &str) -> (Client, String) {
    let mut c = Client::connect(demo, Protocol::Imap).await;
    c.send(&format!("a LOGIN {user} \"{password}\"\r\n")).await;
    let reply = c.until("a ").await;
    (c, reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_lists_and_fetches_then_enrolment_requires_an_app_password() {
    let demo = start().await;
    let (mut c, reply) = imap_login(&demo, ALICE, "alice-password").await;
    assert!(reply.contains("a OK"), "{reply}");
    c.send("b SELECT INBOX\r\n").await;
    let reply = c.until("b ").await;
    assert!(
        reply.contains("* 1 EXISTS") && reply.contains("b OK"),
        "{reply}"
    );
    c.send("c FETCH 1 (FLAGS BODY[])\r\n").await;
    let reply = c.until("c ").await;
    assert!(reply.contains("Welcome to the postern demo"), "{reply}");
    assert!(reply.contains("c OK"), "{reply}");
    c.send("d UID FETCH 1:* (FLAGS)\r\n").await;
    let reply = c.until("d ").await;
    assert!(reply.contains("UID 1 FLAGS (\\Seen)"), "{reply}");
    c.send("e LOGOUT\r\n").await;
    c.until("e ").await;

    // A wrong password is refused by the demo upstream, through postern.
    let (_, reply) = imap_login(&demo, ALICE, "wrong").await;
    assert!(reply.contains("a NO"), "{reply}");

    // Enrol alice: her primary password no longer opens mail; an app password does.
    let store = &demo.runtime.store;
    let alice = store.ensure_user(ALICE).await.unwrap();
    store
        .add_second_factor(
            alice.id,
            FactorKind::Totp,
            demo::BOB_TOTP_SECRET,
            true,
            "test",
        )
        .await
        .unwrap();
    let (_, reply) = imap_login(&demo, ALICE, "alice-password").await;
    assert!(reply.contains("a NO"), "{reply}");
    let scopes: Scopes = "imap,pop3,smtp".parse().unwrap();
    let issued = issue_app_password(store, &demo.key, ALICE, "test", scopes, None, "test")
        .await
        .unwrap();
    let app = issued.password.display().expose().clone();
    let (mut c, reply) = imap_login(&demo, ALICE, &app).await;
    assert!(reply.contains("a OK"), "{reply}");
    c.send("b EXAMINE INBOX\r\n").await;
    assert!(c.until("b ").await.contains("b OK [READ-ONLY]"));

    // Bob is enrolled by the demo: his primary is refused, his app password works.
    let (_, reply) = imap_login(&demo, BOB, "bob-password").await;
    assert!(reply.contains("a NO"), "{reply}");
    let (_, reply) = imap_login(&demo, BOB, &demo.bob_app_password).await;
    assert!(reply.contains("a OK"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_mails_bob_over_smtp_and_bob_reads_it_over_pop3() {
    let demo = start().await;
    let mut c = Client::connect(&demo, Protocol::Smtp).await;
    c.send("EHLO client.test\r\n").await;
    c.until("250 ").await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain(ALICE, "alice-password")
    ))
    .await;
    assert!(c.line().await.starts_with("235"));
    c.send(&format!("MAIL FROM:<{ALICE}>\r\n")).await;
    assert!(c.line().await.starts_with("250"));
    c.send(&format!("RCPT TO:<{BOB}>\r\n")).await;
    assert!(c.line().await.starts_with("250"));
    c.send("RCPT TO:<carol@elsewhere.test>\r\n").await;
    assert!(c.line().await.starts_with("250"));
    c.send("DATA\r\n").await;
    assert!(c.line().await.starts_with("354"));
    c.send("Subject: lunch?\r\n\r\n..at noon\r\n.\r\n").await;
    assert!(c.line().await.starts_with("250"));
    c.send("QUIT\r\n").await;

    let mut c = Client::connect(&demo, Protocol::Pop3).await;
    c.send(&format!("USER {BOB}\r\nPASS {}\r\n", demo.bob_app_password))
        .await;
    assert!(c.line().await.starts_with("+OK"));
    let reply = c.line().await;
    assert!(reply.starts_with("+OK"), "{reply}");
    c.send("STAT\r\n").await;
    assert!(c.line().await.starts_with("+OK 2 "));
    c.send("UIDL\r\n").await;
    assert!(c.until(".").await.contains("2 2"));
    c.send("RETR 2\r\n").await;
    let message = c.until(".\r\n").await;
    assert!(message.contains("Subject: lunch?"), "{message}");
    assert!(message.contains("\r\n..at noon\r\n"), "{message}");
    c.send("QUIT\r\n").await;
    assert_eq!(demo.mailboxes.messages(ALICE).len(), 1);

    // Alice is not enrolled: POP3 with her primary password works.
    let mut c = Client::connect(&demo, Protocol::Pop3).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain(ALICE, "alice-password")
    ))
    .await;
    assert!(c.line().await.starts_with("+OK"));
    c.send("LIST\r\n").await;
    assert!(c.until(".").await.contains("1 "));
}

#[allow(dead_code)]
#[path = "common/browser.rs"]
mod browser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_code_reaches_the_demo_inbox_through_the_demo_relay() {
    let demo = start().await;
    let state =
        postern::web::WebState::from_runtime(&demo.runtime, &demo.config).expect("web state");
    let app = postern::web::router(state);
    let mut b = browser::Browser::new(&app);
    let page = b.password_step(ALICE, demo::ACCOUNTS[0].1).await;
    assert_eq!(page.location(), "/account", "{}", page.body);
    let before = demo.mailboxes.messages(BOB).len();

    let form = b.get("/account/two-step").await;
    let page = b
        .post(
            "/account/two-step/email",
            &[("csrf", &form.csrf()), ("address", BOB)],
        )
        .await;
    assert!(page.body.contains("We sent a code to"), "{}", page.body);
    let inbox = demo.mailboxes.messages(BOB);
    assert_eq!(inbox.len(), before + 1, "one code mail in bob's INBOX");
    let mail = String::from_utf8_lossy(&inbox[inbox.len() - 1].data).into_owned();
    let code: String = browser::between(&mail, "Your code is: ", "\r\n")
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    assert_eq!(code.len(), 8, "{mail}");

    let form = b.get("/account/two-step").await;
    let page = b
        .post(
            "/account/two-step/email/confirm",
            &[("csrf", &form.csrf()), ("code", &code)],
        )
        .await;
    assert_eq!(page.location(), "/account/two-step", "{}", page.body);
    let page = b.get("/account/two-step").await;
    assert!(
        page.body.contains("2-Step Authentication is on."),
        "{}",
        page.body
    );
}
