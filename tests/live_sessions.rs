//! Live sessions end when their credential stops being acceptable, and only those.

mod common;

use common::fake_imap::FakeImap;
use common::{Gateway, LineClient, connect};
use postern::policy::{DomainStatus, Protocol};
use postern::store::EventKind;
use tokio::net::TcpStream;

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";

async fn setup() -> (FakeImap, Gateway) {
    setup_with(|_| {}).await
}

/// Like [`setup`], with a last change to the configuration.
async fn setup_with(change: impl FnOnce(&mut postern::config::Config)) -> (FakeImap, Gateway) {
    let fake = FakeImap::start(&[(ALICE, "alice-primary"), (BOB, "bob-primary")]).await;
    let gateway =
        Gateway::start_with(fake.addr, "allow_plaintext_auth = true", "", None, change).await;
    gateway.domain("example.test", DomainStatus::Enabled).await;
    (fake, gateway)
}

async fn session(gateway: &Gateway, user: &str, password: &str) -> LineClient<TcpStream> {
    let (reply, mut client) = try_login(gateway, user, password).await;
    assert!(reply.starts_with("a OK"), "{reply}");
    // A round trip through the relay: the session is registered by now.
    client.send(b"b NOOP\r\n").await;
    client.until("b OK").await;
    client
}

/// A login's tagged answer, and the connection (kept open when it succeeded).
async fn try_login(
    gateway: &Gateway,
    user: &str,
    password: &str,
) -> (String, LineClient<TcpStream>) {
    let mut client = connect(gateway.addr(Protocol::Imap, false)).await;
    client.line().await;
    client
        .send(format!("a LOGIN \"{user}\" \"{password}\"\r\n").as_bytes())
        .await;
    let reply = client.until("a ").await.concat();
    (reply, client)
}

/// Revokes one of `user`'s app passwords through `gateway`'s store.
async fn revoke(gateway: &Gateway, user: &str, id: i64) {
    let record = gateway.store().ensure_user(user).await.unwrap();
    gateway
        .store()
        .revoke_app_password(record.id, id, "test")
        .await
        .unwrap();
}

/// The next line is a BYE carrying `why`, then the connection closes.
async fn dropped_with(client: &mut LineClient<TcpStream>, why: &str) {
    let line = client.line().await;
    assert!(
        line.starts_with("* BYE [ALERT] ") && line.contains(why),
        "{line:?}"
    );
    assert!(client.closed().await);
}

async fn still_alive(client: &mut LineClient<TcpStream>) {
    client.send(b"z NOOP\r\n").await;
    assert_eq!(client.line().await, "z OK NOOP completed\r\n");
}

#[tokio::test]
async fn forcing_the_domain_drops_primary_password_sessions_only() {
    let (_fake, gateway) = setup().await;
    gateway.enroll(BOB).await;
    let (_, bobs) = gateway.app_password(BOB, "imap", None).await;
    let mut alice = session(&gateway, ALICE, "alice-primary").await;
    let mut bob = session(&gateway, BOB, &bobs).await;

    gateway
        .store()
        .set_domain_status("example.test", DomainStatus::Forced, None, "test")
        .await
        .unwrap();
    dropped_with(&mut alice, "requires 2-Step Authentication").await;
    still_alive(&mut bob).await;
}

#[tokio::test]
async fn revoking_one_app_password_drops_only_its_sessions() {
    let (_fake, gateway) = setup().await;
    gateway.enroll(ALICE).await;
    let (phone_id, phone) = gateway.app_password(ALICE, "imap", None).await;
    let (_, laptop) = gateway.app_password(ALICE, "imap", None).await;
    let mut on_phone = session(&gateway, ALICE, &phone).await;
    let mut on_laptop = session(&gateway, ALICE, &laptop).await;

    revoke(&gateway, ALICE, phone_id).await;
    dropped_with(&mut on_phone, "revoked").await;
    still_alive(&mut on_laptop).await;
}

#[tokio::test]
async fn enrolling_disabling_and_killing_end_sessions() {
    let (_fake, gateway) = setup().await;
    let mut alice = session(&gateway, ALICE, "alice-primary").await;
    let mut bob = session(&gateway, BOB, "bob-primary").await;
    // Enrolling makes the primary password unacceptable for mail.
    gateway.enroll(ALICE).await;
    dropped_with(&mut alice, "application password").await;
    still_alive(&mut bob).await;

    gateway
        .store()
        .set_user_disabled(BOB, true, "test")
        .await
        .unwrap();
    dropped_with(&mut bob, "disabled").await;

    let mut bob_again = {
        gateway
            .store()
            .set_user_disabled(BOB, false, "test")
            .await
            .unwrap();
        session(&gateway, BOB, "bob-primary").await
    };
    gateway
        .store()
        .append_event(EventKind::SessionKill, None, Some(BOB), None)
        .await
        .unwrap();
    dropped_with(&mut bob_again, "administrator").await;
}

#[tokio::test]
async fn an_expiring_app_password_ends_its_session_when_it_expires() {
    let (_fake, gateway) = setup().await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // Long enough to hash and log in on a slow debug build, short enough to wait for.
    let (_, short) = gateway.app_password(ALICE, "imap", Some(now + 6)).await;
    let mut client = session(&gateway, ALICE, &short).await;
    // No stored change happens: the sweep notices the expiry by itself.
    dropped_with(&mut client, "expired").await;
}

/// `postern_recheck_failures_total` as this process's `/metrics` shows it.
fn recheck_failures() -> u64 {
    postern::metrics::render()
        .lines()
        .find_map(|line| line.strip_prefix("postern_recheck_failures_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_recheck_the_store_cannot_answer_keeps_the_expiry_and_is_asked_again() {
    let (_fake, gateway) = setup().await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (_, short) = gateway.app_password(ALICE, "imap", Some(now + 8)).await;
    let mut client = session(&gateway, ALICE, &short).await;

    // The users table goes away (as a store that cannot be read), then a change
    // makes every session of the domain due for a re-check.
    let db = sqlx::SqlitePool::connect(&gateway.config.store.url)
        .await
        .expect("open the test database");
    sqlx::query("ALTER TABLE users RENAME TO users_away")
        .execute(&db)
        .await
        .expect("rename");
    let failures_before = recheck_failures();
    gateway
        .store()
        .set_domain_status("example.test", DomainStatus::Enabled, None, "test")
        .await
        .unwrap();
    let waited = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while recheck_failures() == failures_before {
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the failed re-check was not reported");
    still_alive(&mut client).await;
    sqlx::query("ALTER TABLE users_away RENAME TO users")
        .execute(&db)
        .await
        .expect("rename back");
    // The session was kept, and the app password's expiry still ends it.
    dropped_with(&mut client, "expired").await;
}

#[tokio::test]
async fn shutdown_closes_listeners_lets_sessions_finish_then_says_goodbye() {
    let (_fake, gateway) = setup().await;
    let mut finishing = session(&gateway, ALICE, "alice-primary").await;
    let mut lingering = session(&gateway, BOB, "bob-primary").await;
    let addr = gateway.addr(Protocol::Imap, false);
    let runtime = &gateway.runtime;
    let shutdown = runtime.shutdown(std::time::Duration::from_secs(2));
    let client_side = async {
        // New connections are refused once the listeners are closed.
        let mut refused = false;
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(refused, "listener still open");
        // A session that finishes during the drain does so normally.
        still_alive(&mut finishing).await;
        finishing.send(b"q LOGOUT\r\n").await;
        let bye = finishing.until("q OK").await.concat();
        assert!(!bye.contains("shutting down"), "{bye}");
        // One still open at the end of the drain gets a goodbye.
        dropped_with(&mut lingering, "shutting down").await;
    };
    tokio::join!(shutdown, client_side);
    assert!(runtime.registry.is_empty());
}

#[tokio::test]
async fn an_idle_session_is_closed_after_the_idle_timeout() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    let gateway = Gateway::start(
        fake.addr,
        "allow_plaintext_auth = true",
        "[limits]\nidle_timeout_secs = 1",
    )
    .await;
    let mut busy = session(&gateway, ALICE, "alice-primary").await;
    // Activity keeps a session open past the timeout…
    let started = std::time::Instant::now();
    let mut idle = session(&gateway, ALICE, "alice-primary").await;
    while started.elapsed() < std::time::Duration::from_millis(1500) {
        still_alive(&mut busy).await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // …while silence ends it with a goodbye.
    dropped_with(&mut idle, "Idle").await;
    still_alive(&mut busy).await;
}

const REFUSAL: &str = "a NO [AUTHENTICATIONFAILED] Authentication failed. If 2-Step Authentication is on for your account, sign in with an application password.\r\n";

/// Waits (bounded) until `gateway` answers repeat logins from memory, so the
/// tests below exercise the login cache and not only the store.
async fn remembering(gateway: &Gateway) {
    let ready = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        gateway.runtime.gate.until_remembering(),
    )
    .await;
    assert!(ready.is_ok(), "the event log was never read");
}

#[tokio::test]
async fn a_device_let_in_moments_ago_is_refused_at_once_after_a_revocation_here() {
    let (_fake, gateway) = setup().await;
    gateway.enroll(ALICE).await;
    let (phone_id, phone) = gateway.app_password(ALICE, "imap", None).await;
    remembering(&gateway).await;
    let mut first = session(&gateway, ALICE, &phone).await;
    let mut second = session(&gateway, ALICE, &phone).await;

    revoke(&gateway, ALICE, phone_id).await;
    // No wait: the change was committed through this node.
    let (reply, _) = try_login(&gateway, ALICE, &phone).await;
    assert_eq!(reply, REFUSAL);
    dropped_with(&mut first, "revoked").await;
    dropped_with(&mut second, "revoked").await;
}

#[tokio::test]
async fn a_change_on_another_node_reaches_the_logins_it_remembers_at_its_next_event_read() {
    let (_fake, gateway) = setup().await;
    let other = gateway.another_node().await;
    gateway.enroll(ALICE).await;
    let (phone_id, phone) = gateway.app_password(ALICE, "imap", None).await;
    remembering(&other).await;
    let mut before = session(&other, ALICE, &phone).await;
    // Bob's primary password is remembered too, until his domain is forced.
    let mut bob = session(&other, BOB, "bob-primary").await;

    revoke(&gateway, ALICE, phone_id).await;
    gateway
        .store()
        .set_domain_status("example.test", DomainStatus::Forced, None, "test")
        .await
        .unwrap();
    let revoked_at = std::time::Instant::now();
    // Logins on the other node may still pass until it reads the event log;
    // each such session is dropped with the others.
    let mut let_in = Vec::new();
    for (user, password) in [(ALICE, phone.as_str()), (BOB, "bob-primary")] {
        loop {
            let (reply, client) = try_login(&other, user, password).await;
            if reply == REFUSAL {
                break;
            }
            assert!(reply.starts_with("a OK"), "{reply}");
            let_in.push(client);
            // DESIGN: within one second (the poll is 200 ms); the bound leaves
            // room for a loaded machine and still catches a cache that never
            // learns (its entries live 30 s).
            assert!(
                revoked_at.elapsed() < std::time::Duration::from_secs(3),
                "{user} still logs in on the other node after 3 s"
            );
        }
    }
    dropped_with(&mut before, "revoked").await;
    dropped_with(&mut bob, "application password").await;
    for mut client in let_in {
        let line = client.line().await;
        assert!(line.starts_with("* BYE [ALERT] "), "{line:?}");
        assert!(client.closed().await);
    }
}

#[tokio::test]
async fn with_the_login_cache_off_a_change_on_another_node_refuses_the_next_login_there() {
    let (_fake, gateway) = setup_with(|config| config.limits.login_cache_secs = 0).await;
    let other = gateway.another_node().await;
    gateway.enroll(ALICE).await;
    let (phone_id, phone) = gateway.app_password(ALICE, "imap", None).await;
    remembering(&other).await;
    let mut before = session(&other, ALICE, &phone).await;
    let _again = session(&other, ALICE, &phone).await;

    revoke(&gateway, ALICE, phone_id).await;
    // No wait, though the other node has not read the event log yet: it asks
    // the store on every login.
    let (reply, _) = try_login(&other, ALICE, &phone).await;
    assert_eq!(reply, REFUSAL);
    dropped_with(&mut before, "revoked").await;
}
