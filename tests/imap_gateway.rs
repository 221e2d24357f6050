//! The IMAP gateway end to end against a fake upstream: what a mail client and the
//! upstream server each see.

mod common;

use base64::Engine;
use common::fake_imap::{FakeImap, MESSAGE};
use common::{Gateway, LineClient, connect, tls_upgrade};
use postern::policy::{DomainStatus, Protocol};

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";
const DAVE: &str = "dave@forced.test";
const REFUSAL: &str = "a NO [AUTHENTICATIONFAILED] Authentication failed. If 2-Step Authentication is on for your account, sign in with an application password.\r\n";

async fn setup() -> (FakeImap, Gateway) {
    let fake = FakeImap::start(&[
        (ALICE, "alice-primary"),
        (BOB, "bob-primary"),
        (DAVE, "dave-primary"),
        ("carol@nowhere.test", "carol-primary"),
    ])
    .await;
    let gateway = Gateway::start_imap(fake.addr, "allow_plaintext_auth = true").await;
    gateway.domain("example.test", DomainStatus::Enabled).await;
    gateway.domain("forced.test", DomainStatus::Forced).await;
    (fake, gateway)
}

async fn login(
    gateway: &Gateway,
    user: &str,
    password: &str,
) -> (String, LineClient<tokio::net::TcpStream>) {
    let mut client = connect(gateway.addr(Protocol::Imap, false)).await;
    let greeting = client.line().await;
    assert!(greeting.starts_with("* OK [CAPABILITY "), "{greeting}");
    client
        .send(format!("a LOGIN \"{user}\" \"{password}\"\r\n").as_bytes())
        .await;
    let reply = client.until("a ").await.concat();
    (reply, client)
}

#[tokio::test]
async fn a_user_who_is_not_enrolled_passes_through_with_the_primary_password() {
    let (fake, gateway) = setup().await;
    let (reply, mut client) = login(&gateway, ALICE, "alice-primary").await;
    // The upstream's own tagged OK (with its capabilities) reaches the client.
    assert_eq!(reply, "a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n");
    assert_eq!(fake.logins(), vec![ALICE]);
    client.send(b"b SELECT INBOX\r\nc FETCH 1 BODY[]\r\n").await;
    client.until("b OK").await;
    let fetched = client.until("c OK").await.concat();
    assert!(fetched.contains(std::str::from_utf8(MESSAGE).unwrap()));
    // The client's address went upstream with ID.
    assert!(
        fake.ids()[0].contains("\"x-originating-ip\" \"127.0.0.1\""),
        "{:?}",
        fake.ids()
    );
}

#[tokio::test]
async fn an_enrolled_user_needs_an_app_password_and_the_upstream_sees_a_master_login() {
    let (fake, gateway) = setup().await;
    gateway.enroll(ALICE).await;
    let (reply, _) = login(&gateway, ALICE, "alice-primary").await;
    assert_eq!(reply, REFUSAL);
    assert!(
        fake.logins().is_empty() && fake.refused() == 0,
        "nothing was asked upstream"
    );

    let (id, password) = gateway.app_password(ALICE, "imap,pop3,smtp", None).await;
    let (reply, _) = login(&gateway, ALICE, &password).await;
    assert!(reply.starts_with("a OK"), "{reply}");
    assert_eq!(fake.logins(), vec![format!("{ALICE} via proxy")]);

    // Phones capitalise and people type spaces.
    let typed = password.to_uppercase().replace('-', " ");
    let (reply, mut client) = login(&gateway, ALICE, &typed).await;
    assert!(reply.starts_with("a OK"), "{reply}");

    // Last use is recorded (before the session relays its first command).
    client.send(b"b NOOP\r\n").await;
    client.until("b OK").await;
    let user = gateway.store().ensure_user(ALICE).await.unwrap();
    let record = gateway
        .store()
        .app_password(user.id, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.last_used_protocol.as_deref(), Some("imap"));
    assert_eq!(record.last_used_ip.as_deref(), Some("127.0.0.1"));
    assert!(record.last_used_at.is_some());
}

#[tokio::test]
async fn forced_domain_refuses_primary_passwords_and_unknown_domains_pass() {
    let (fake, gateway) = setup().await;
    let (reply, _) = login(&gateway, DAVE, "dave-primary").await;
    assert_eq!(reply, REFUSAL);
    let (reply, _) = login(&gateway, "carol@nowhere.test", "carol-primary").await;
    assert!(reply.starts_with("a OK"), "{reply}");
    assert_eq!(fake.logins(), vec!["carol@nowhere.test"]);
}

#[tokio::test]
async fn revoked_expired_out_of_scope_and_other_users_app_passwords_are_refused() {
    let (fake, gateway) = setup().await;
    gateway.enroll(ALICE).await;
    gateway.enroll(BOB).await;
    let alice = gateway.store().ensure_user(ALICE).await.unwrap();

    let (revoked_id, revoked) = gateway.app_password(ALICE, "imap", None).await;
    gateway
        .store()
        .revoke_app_password(alice.id, revoked_id, "test")
        .await
        .unwrap();
    let (_, pop_only) = gateway.app_password(ALICE, "pop3,smtp", None).await;
    let (_, expired) = gateway.app_password(ALICE, "imap", Some(1)).await;
    let (_, bobs) = gateway.app_password(BOB, "imap", None).await;

    for password in [&revoked, &pop_only, &expired, &bobs] {
        let (reply, _) = login(&gateway, ALICE, password).await;
        // Byte-identical to every other refusal: no oracle.
        assert_eq!(reply, REFUSAL);
    }
    assert!(fake.logins().is_empty());
}

#[tokio::test]
async fn an_upstream_refusal_looks_like_any_other_refusal() {
    let (_fake, gateway) = setup().await;
    let (reply, _) = login(&gateway, ALICE, "wrong").await;
    assert_eq!(reply, REFUSAL);
}

#[tokio::test]
async fn commands_pipelined_behind_login_reach_the_upstream_once_in_order() {
    let (fake, gateway) = setup().await;
    let mut client = connect(gateway.addr(Protocol::Imap, false)).await;
    client.line().await;
    client.send(b"a LOGIN {18}\r\n").await;
    assert_eq!(client.line().await, "+ Ready for literal data\r\n");
    client
        .send(b"alice@example.test {13+}\r\nalice-primary\r\nb SELECT INBOX\r\nc NOOP\r\nd LOGOUT\r\n")
        .await;
    let all = client.until("d OK").await.concat();
    assert!(all.starts_with("a OK"), "{all}");
    assert!(all.contains("b OK") && all.contains("c OK"));
    assert_eq!(
        fake.commands(),
        vec!["b SELECT INBOX", "c NOOP", "d LOGOUT"]
    );
}

#[tokio::test]
async fn authenticate_plain_with_and_without_initial_response() {
    let (fake, gateway) = setup().await;
    let plain =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{ALICE}\0alice-primary"));
    let mut client = connect(gateway.addr(Protocol::Imap, false)).await;
    client.line().await;
    client
        .send(format!("a AUTHENTICATE PLAIN {plain}\r\n").as_bytes())
        .await;
    assert!(client.until("a ").await.concat().starts_with("a OK"));

    let mut client = connect(gateway.addr(Protocol::Imap, false)).await;
    client.line().await;
    client.send(b"a AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(client.line().await, "+ \r\n");
    client.send(format!("{plain}\r\n").as_bytes()).await;
    assert!(client.until("a ").await.concat().starts_with("a OK"));
    assert_eq!(fake.logins().len(), 2);
}

#[tokio::test]
async fn starttls_and_implicit_tls_both_log_in() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    // Plaintext auth off, as in production.
    let gateway = Gateway::start_imap(fake.addr, "").await;
    let mut client = connect(gateway.addr(Protocol::Imap, false)).await;
    let greeting = client.line().await;
    assert!(
        greeting.contains("STARTTLS") && greeting.contains("LOGINDISABLED"),
        "{greeting}"
    );
    client
        .send(b"a LOGIN alice@example.test alice-primary\r\n")
        .await;
    assert!(client.line().await.starts_with("a NO [PRIVACYREQUIRED]"));
    client.send(b"b STARTTLS\r\n").await;
    assert!(client.line().await.starts_with("b OK"));
    let tls = tls_upgrade(client.into_inner(), &gateway.cert_path()).await;
    let mut client = LineClient::new(tls);
    client.send(b"c CAPABILITY\r\n").await;
    let caps = client.until("c OK").await.concat();
    assert!(
        caps.contains("AUTH=PLAIN") && !caps.contains("STARTTLS"),
        "{caps}"
    );
    client
        .send(b"d LOGIN alice@example.test alice-primary\r\n")
        .await;
    assert!(client.until("d ").await.concat().starts_with("d OK"));

    let tcp = tokio::net::TcpStream::connect(gateway.addr(Protocol::Imap, true))
        .await
        .unwrap();
    let mut client = LineClient::new(tls_upgrade(tcp, &gateway.cert_path()).await);
    let greeting = client.line().await;
    assert!(
        greeting.contains("AUTH=PLAIN") && !greeting.contains("STARTTLS"),
        "{greeting}"
    );
    client
        .send(b"a LOGIN alice@example.test alice-primary\r\n")
        .await;
    assert!(client.until("a ").await.concat().starts_with("a OK"));
    assert_eq!(fake.logins().len(), 2);
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_temporary_failure() {
    // A port nobody listens on: bind, learn the port, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gateway = Gateway::start_imap(closed, "allow_plaintext_auth = true").await;
    let (reply, _) = login(&gateway, ALICE, "alice-primary").await;
    assert!(reply.starts_with("a NO [UNAVAILABLE]"), "{reply}");
}

#[tokio::test]
async fn a_broken_database_fails_closed_with_a_temporary_error() {
    let (fake, gateway) = setup().await;
    gateway.store().close().await;
    let (reply, _) = login(&gateway, ALICE, "alice-primary").await;
    assert!(reply.starts_with("a NO [UNAVAILABLE]"), "{reply}");
    assert!(
        fake.logins().is_empty(),
        "nothing is let through when the store fails"
    );
}

#[tokio::test]
async fn a_client_vanishing_mid_login_leaves_others_alone() {
    let (_fake, gateway) = setup().await;
    let mut gone = connect(gateway.addr(Protocol::Imap, false)).await;
    gone.line().await;
    gone.send(b"a LOGIN {18}\r\nalice@exa").await;
    drop(gone);
    let (reply, _) = login(&gateway, ALICE, "alice-primary").await;
    assert!(reply.starts_with("a OK"), "{reply}");
}

#[tokio::test]
async fn three_bad_commands_close_and_nul_bytes_never_reach_upstream() {
    let (fake, gateway) = setup().await;
    let mut client = connect(gateway.addr(Protocol::Imap, false)).await;
    client.line().await;
    client
        .send(b"a LOGIN {19+}\r\nalice@example.test\0 x\r\n")
        .await;
    assert!(client.line().await.starts_with("a BAD"));
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
    let rest = client.until("* BYE").await.concat();
    assert!(rest.contains("BAD"), "{rest}");
    assert!(client.closed().await);
    assert_eq!(fake.refused() + fake.logins().len(), 0);
}
