//! Login penalties on the mail ports, seen from clients.

mod common;

use common::fake_imap::FakeImap;
use common::{Gateway, LineClient};
use postern::policy::Protocol;
use postern::recheck::Rechecker;
use postern::store::EventKind;
use tokio::net::TcpStream;

const ALICE: &str = "alice@example.test";

async fn attempt(gateway: &Gateway, header: Option<String>, password: &str) -> String {
    let mut client = LineClient::new(
        TcpStream::connect(gateway.addr(Protocol::Imap, false))
            .await
            .unwrap(),
    );
    if let Some(header) = header {
        client.send(header.as_bytes()).await;
    }
    client.line().await;
    client
        .send(format!("a LOGIN {ALICE} {password}\r\n").as_bytes())
        .await;
    client.until("a ").await.concat()
}

#[tokio::test]
async fn a_failed_login_delays_the_next_answer_but_a_repeated_password_does_not_escalate() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    let gateway = Gateway::start(
        fake.addr,
        "allow_plaintext_auth = true",
        "[limits]\ntrusted_networks = []",
    )
    .await;
    let first = std::time::Instant::now();
    assert!(attempt(&gateway, None, "guess-1").await.starts_with("a NO"));
    assert!(first.elapsed() < std::time::Duration::from_secs(2));
    // The next answer to this client waits 2 s; the same wrong password again
    // (a stale device) keeps it at 2 s instead of doubling.
    for _ in 0..2 {
        let started = std::time::Instant::now();
        assert!(attempt(&gateway, None, "guess-1").await.starts_with("a NO"));
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_secs(2)
                && waited < std::time::Duration::from_secs(4),
            "{waited:?}"
        );
    }
}

#[tokio::test]
async fn an_account_is_blocked_after_100_failures_until_an_administrator_clears_it() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    // Spread over many client addresses (through a trusted PROXY peer), as a
    // distributed guessing attack would be: no per-client delay applies.
    let gateway = Gateway::start(
        fake.addr,
        "allow_plaintext_auth = true",
        "[limits]\ntrusted_networks = []\n[proxy_protocol]\ntrusted_proxies = [\"127.0.0.0/8\"]",
    )
    .await;
    let header = |n: u32| {
        Some(format!(
            "PROXY TCP4 10.9.{}.{} 127.0.0.1 4000 143\r\n",
            n / 250,
            n % 250 + 1
        ))
    };
    for n in 0..100 {
        let reply = attempt(&gateway, header(n), &format!("guess-{n}")).await;
        assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    }
    let logins_before = fake.logins().len();
    // Now even the right password is refused, with the same words, and the
    // upstream is not asked.
    let reply = attempt(&gateway, header(1000), "alice-primary").await;
    assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    assert_eq!(fake.logins().len(), logins_before);

    // `postern admin user enable` clears it: its event, applied as every node
    // applies it (here directly, instead of waiting for the background tail).
    let last = gateway.store().last_event_id().await.unwrap();
    gateway
        .store()
        .set_user_disabled(ALICE, false, "test")
        .await
        .unwrap();
    let events = gateway.store().events_after(last, 10).await.unwrap();
    assert_eq!(events.last().map(|e| e.kind), Some(EventKind::UserEnabled));
    let runtime = &gateway.runtime;
    let rechecker = Rechecker::new(
        runtime.gate.clone(),
        runtime.registry.clone(),
        runtime.penalties.clone(),
    );
    for event in &events {
        rechecker.handle_event(event).await;
    }
    let reply = attempt(&gateway, header(1001), "alice-primary").await;
    assert!(reply.starts_with("a OK"), "{reply}");
}
