//! Login penalties on the mail ports, seen from clients.

mod common;

use common::fake_imap::FakeImap;
use common::{Gateway, LineClient};
use postern::policy::{DomainStatus, Protocol};
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

/// A gateway that sees each connection's client address in a PROXY header from
/// 127.0.0.1, so a test can play many clients; no network is trusted.
async fn gateway_behind_a_proxy(fake: &FakeImap) -> Gateway {
    Gateway::start(
        fake.addr,
        "allow_plaintext_auth = true",
        "[limits]\ntrusted_networks = []\n[proxy_protocol]\ntrusted_proxies = [\"127.0.0.0/8\"]",
    )
    .await
}

/// Client number `n` of a distributed attack: one address each, so no
/// per-client delay applies.
fn client(n: u32) -> Option<String> {
    Some(format!(
        "PROXY TCP4 10.9.{}.{} 127.0.0.1 4000 143\r\n",
        n / 250,
        n % 250 + 1
    ))
}

async fn stored_failures(gateway: &Gateway) -> i64 {
    gateway.store().login_failures(ALICE).await.unwrap().count
}

#[tokio::test]
async fn an_account_is_blocked_after_100_failures_until_an_administrator_clears_it() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    let gateway = gateway_behind_a_proxy(&fake).await;
    for n in 0..100 {
        let reply = attempt(&gateway, client(n), &format!("guess-{n}")).await;
        assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    }
    let logins_before = fake.logins().len();
    // Now even the right password is refused, with the same words, and the
    // upstream is not asked.
    let reply = attempt(&gateway, client(1000), "alice-primary").await;
    assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    assert_eq!(fake.logins().len(), logins_before);

    // `postern admin user enable` clears it.
    gateway
        .store()
        .set_user_disabled(ALICE, false, "test")
        .await
        .unwrap();
    let reply = attempt(&gateway, client(1001), "alice-primary").await;
    assert!(reply.starts_with("a OK"), "{reply}");
}

#[tokio::test]
async fn nodes_sharing_a_store_count_failures_towards_one_account_block() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    let first = gateway_behind_a_proxy(&fake).await;
    let second = first.another_node().await;
    let nodes = [&first, &second];
    // 50 guesses on each node: under the limit on either, 100 together.
    for n in 0..100 {
        let node = nodes[n as usize % 2];
        let reply = attempt(node, client(n), &format!("guess-{n}")).await;
        assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    }
    let logins_before = fake.logins().len();
    for (n, node) in nodes.iter().enumerate() {
        let reply = attempt(node, client(1000 + n as u32), "alice-primary").await;
        assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    }
    assert_eq!(
        fake.logins().len(),
        logins_before,
        "the upstream was not asked"
    );

    // An administrator's enable on one node clears it on both.
    first
        .store()
        .set_user_disabled(ALICE, false, "test")
        .await
        .unwrap();
    for (n, node) in nodes.iter().enumerate() {
        let reply = attempt(node, client(2000 + n as u32), "alice-primary").await;
        assert!(reply.starts_with("a OK"), "{reply}");
    }
}

#[tokio::test]
async fn a_refused_login_for_an_unknown_address_stores_no_user_but_counts_towards_its_block() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    let gateway = gateway_behind_a_proxy(&fake).await;
    gateway.domain("example.test", DomainStatus::Enabled).await;
    // Alice has never logged in through postern: she has no row yet.
    for n in 0..3 {
        let reply = attempt(&gateway, client(n), &format!("guess-{n}")).await;
        assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    }
    let users = gateway.store().list_users("example.test").await.unwrap();
    assert!(users.is_empty(), "guessed addresses are listed: {users:?}");
    assert!(gateway.store().user(ALICE).await.unwrap().is_none());
    assert_eq!(stored_failures(&gateway).await, 3);

    // Her first successful login creates her row and forgets the failures.
    let reply = attempt(&gateway, client(10), "alice-primary").await;
    assert!(reply.starts_with("a OK"), "{reply}");
    let users = gateway.store().list_users("example.test").await.unwrap();
    assert_eq!(
        users.iter().map(|u| u.address.as_str()).collect::<Vec<_>>(),
        [ALICE]
    );
    assert_eq!(stored_failures(&gateway).await, 0);
}

#[tokio::test]
async fn a_successful_app_password_login_resets_the_shared_count() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    let first = gateway_behind_a_proxy(&fake).await;
    let second = first.another_node().await;
    first.domain("example.test", DomainStatus::Enabled).await;
    first.enroll(ALICE).await;
    let (_, password) = first.app_password(ALICE, "imap", None).await;

    for n in 0..3 {
        let reply = attempt(&first, client(n), &format!("guess-{n}")).await;
        assert!(reply.starts_with("a NO"), "{reply}");
    }
    // The same wrong password again from the same client does not count.
    let reply = attempt(&first, client(2), "guess-2").await;
    assert!(reply.starts_with("a NO"), "{reply}");
    assert_eq!(stored_failures(&second).await, 3);

    let reply = attempt(&second, client(100), &password).await;
    assert!(reply.starts_with("a OK"), "{reply}");
    assert_eq!(stored_failures(&first).await, 0);

    // 99 more failures then leave the account open: the count started afresh.
    for n in 0..99 {
        let node = [&first, &second][n as usize % 2];
        let reply = attempt(node, client(200 + n), &format!("again-{n}")).await;
        assert!(reply.starts_with("a NO"), "{reply}");
    }
    let reply = attempt(&first, client(400), &password).await;
    assert!(reply.starts_with("a OK"), "{reply}");
}

const BOB: &str = "bob@example.test";

/// One login from `client` as `user`: the reply, and how long the client
/// waited for it.
async fn timed_login(
    gateway: &Gateway,
    client: &str,
    user: &str,
    password: &str,
) -> (String, std::time::Duration) {
    let mut connection = LineClient::new(
        TcpStream::connect(gateway.addr(Protocol::Imap, false))
            .await
            .unwrap(),
    );
    connection
        .send(format!("PROXY TCP4 {client} 127.0.0.1 4000 143\r\n").as_bytes())
        .await;
    connection.line().await;
    let started = std::time::Instant::now();
    connection
        .send(format!("a LOGIN {user} {password}\r\n").as_bytes())
        .await;
    let reply = connection.until("a ").await.concat();
    (reply, started.elapsed())
}

#[tokio::test]
async fn a_login_to_one_account_does_not_forgive_a_clients_guesses_on_another() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary"), (BOB, "bob-primary")]).await;
    let gateway = gateway_behind_a_proxy(&fake).await;
    let attacker = "10.77.0.1";
    let ip: std::net::IpAddr = attacker.parse().unwrap();
    let penalties = &gateway.runtime.penalties;
    let (reply, _) = timed_login(&gateway, attacker, BOB, "guess-1").await;
    assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    assert_eq!(penalties.delay(ip).await, postern::penalty::BASE_DELAY);
    // The attacker's own account logs in (after the delay bob's guess earned)...
    let (reply, _) = timed_login(&gateway, attacker, ALICE, "alice-primary").await;
    assert!(reply.starts_with("a OK"), "{reply}");
    // ...which forgives nothing of the guess on bob: the next one still waits.
    assert_eq!(penalties.delay(ip).await, postern::penalty::BASE_DELAY);
    let (reply, waited) = timed_login(&gateway, attacker, BOB, "guess-2").await;
    assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    assert!(waited >= postern::penalty::BASE_DELAY, "{waited:?}");
    assert_eq!(penalties.delay(ip).await, postern::penalty::BASE_DELAY * 2);
    // Another client is not delayed.
    assert!(
        penalties
            .delay("10.77.1.1".parse().unwrap())
            .await
            .is_zero()
    );
}

#[tokio::test]
async fn a_clients_delay_holds_after_a_restart() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary"), (BOB, "bob-primary")]).await;
    let gateway = gateway_behind_a_proxy(&fake).await;
    let attacker = "10.78.0.1";
    for n in 0..2 {
        let (reply, _) = timed_login(&gateway, attacker, BOB, &format!("guess-{n}")).await;
        assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    }
    // A new process on the same store, the old one gone.
    let restarted = gateway.another_node().await;
    drop(gateway);
    let (reply, waited) = timed_login(&restarted, attacker, BOB, "guess-2").await;
    assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    assert!(waited >= postern::penalty::BASE_DELAY * 2, "{waited:?}");
    // Another client is not delayed.
    let (_, waited) = timed_login(&restarted, "10.78.1.1", ALICE, "alice-primary").await;
    assert!(waited < postern::penalty::BASE_DELAY, "{waited:?}");
}
