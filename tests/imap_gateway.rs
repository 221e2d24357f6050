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
    let logged_in = format!(
        "a OK [CAPABILITY {}] Logged in\r\n",
        postern::demo::CAPABILITIES_AFTER_LOGIN
    );
    assert_eq!(reply, logged_in);
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

#[tokio::test]
async fn the_upstream_can_be_reached_over_starttls_or_implicit_tls_and_is_verified() {
    use common::fake_imap::FakeTls;
    let dir = tempfile::tempdir().unwrap();
    for (tls, mode) in [
        (FakeTls::Starttls, "starttls"),
        (FakeTls::Implicit, "implicit"),
    ] {
        let fake = FakeImap::start_with(&[(ALICE, "alice-primary")], tls, dir.path()).await;
        let ca = fake.ca_file.clone().unwrap();
        let gateway = Gateway::start(
            fake.addr,
            &format!("allow_plaintext_auth = true\nupstream_tls = \"{mode}\"\nupstream_tls_name = \"localhost\""),
            &format!("ca_file = \"{}\"", ca.display()),
        )
        .await;
        gateway.enroll(ALICE).await;
        gateway.domain("example.test", DomainStatus::Enabled).await;
        let (_, password) = gateway.app_password(ALICE, "imap", None).await;
        let (reply, mut client) = login(&gateway, ALICE, &password).await;
        assert!(reply.starts_with("a OK"), "{mode}: {reply}");
        client.send(b"b NOOP\r\n").await;
        client.until("b OK").await;
        assert_eq!(fake.logins(), vec![format!("{ALICE} via proxy")], "{mode}");

        // Against a certificate postern does not trust, nothing is sent.
        let untrusted = Gateway::start(
            fake.addr,
            &format!("allow_plaintext_auth = true\nupstream_tls = \"{mode}\"\nupstream_tls_name = \"localhost\""),
            &format!("ca_file = \"{}\"", gateway.cert_path().display()),
        )
        .await;
        let (reply, _) = login(&untrusted, ALICE, "alice-primary").await;
        assert!(reply.starts_with("a NO [UNAVAILABLE]"), "{mode}: {reply}");
        assert_eq!(fake.logins().len(), 1, "{mode}");
    }
}

#[tokio::test]
async fn an_upstream_that_dies_mid_login_is_a_temporary_failure() {
    use postern::demo::server::Fault;
    let users = [(ALICE, "alice-primary")];
    let fake = FakeImap::start_as(&users, |o| o.fault = Fault::CloseAtLogin).await;
    let addr = fake.addr;
    let gateway = Gateway::start_imap(addr, "allow_plaintext_auth = true").await;
    let (reply, _) = login(&gateway, ALICE, "alice-primary").await;
    assert!(reply.starts_with("a NO [UNAVAILABLE]"), "{reply}");
}

#[tokio::test]
async fn every_refusal_reads_the_same() {
    let (fake, gateway) = setup().await;
    gateway.enroll(BOB).await;
    let bob = gateway.store().ensure_user(BOB).await.unwrap();
    let (revoked_id, revoked) = gateway.app_password(BOB, "imap", None).await;
    gateway
        .store()
        .revoke_app_password(bob.id, revoked_id, "test")
        .await
        .unwrap();
    let (_, pop_only) = gateway.app_password(BOB, "pop3", None).await;
    let (_, expired) = gateway.app_password(BOB, "imap", Some(1)).await;
    let (_, good) = gateway.app_password(BOB, "imap", None).await;
    // A domain postern knows with the feature off (Disabled), and a user who
    // exists only upstream.
    gateway
        .store()
        .add_domain("off.test", "test")
        .await
        .unwrap();
    gateway
        .store()
        .ensure_user("erin@example.test")
        .await
        .unwrap();
    gateway
        .store()
        .set_user_disabled("erin@example.test", true, "test")
        .await
        .unwrap();

    let causes: [(&str, &str, &str); 10] = [
        ("unknown user", "nobody@example.test", "whatever"),
        ("wrong password", ALICE, "wrong"),
        (
            "wrong app-password-shaped password",
            ALICE,
            "abcd-efgh-jkmn-pqrs",
        ),
        ("primary password of an enrolled user", BOB, "bob-primary"),
        ("revoked app password", BOB, &revoked),
        ("app password outside its scope", BOB, &pop_only),
        ("app password outside its scope, again", BOB, &pop_only),
        ("expired app password", BOB, &expired),
        ("disabled domain", "frank@off.test", "wrong"),
        ("disabled user", "erin@example.test", "erin-primary"),
    ];
    for (cause, user, password) in causes {
        let (reply, _) = login(&gateway, user, password).await;
        assert_eq!(reply, REFUSAL, "{cause}");
    }
    assert!(fake.logins().is_empty());
    let (reply, _) = login(&gateway, BOB, &good).await;
    assert!(reply.starts_with("a OK"), "{reply}");
}

#[tokio::test]
async fn a_cold_app_password_login_finds_its_own_among_40_and_one_issued_in_16_characters_works() {
    let (_fake, gateway) = setup().await;
    gateway.enroll(ALICE).await;
    gateway.enroll(BOB).await;
    let (_, alices) = gateway.app_password(ALICE, "imap", None).await;
    let mut bobs = Vec::new();
    for _ in 0..postern::store::MAX_APP_PASSWORDS - 1 {
        bobs.push(gateway.app_password(BOB, "imap", None).await.1);
    }
    // One issued before app passwords grew to 24 characters: only its keyed
    // lookup is stored, as for every row.
    let legacy = "k7qm-2x9d-abcd-ef01";
    let canonical = postern::credentials::CanonicalAppPassword::parse(legacy).unwrap();
    let bob = gateway.store().ensure_user(BOB).await.unwrap();
    gateway
        .store()
        .create_app_password(
            bob.id,
            postern::store::NewAppPassword {
                name: "old phone".into(),
                lookup: canonical.lookup_key(&gateway.key, BOB),
                scopes: "imap".parse().unwrap(),
                expires_at: None,
                networks: Default::default(),
            },
            "test",
        )
        .await
        .unwrap();
    assert_eq!(bobs[0].len(), 29, "six groups of four: {}", bobs[0]);
    for (user, password) in [
        (ALICE, alices.as_str()),
        (BOB, bobs[0].as_str()),
        (BOB, bobs[38].as_str()),
        (BOB, legacy),
        (BOB, "K7QM 2X9D ABCD EF01"),
    ] {
        let (reply, _) = login(&gateway, user, password).await;
        assert!(reply.starts_with("a OK"), "{user} {password}: {reply}");
    }
    // Alice's password is not Bob's.
    let (reply, _) = login(&gateway, BOB, &alices).await;
    assert_eq!(reply, REFUSAL);
}

#[tokio::test]
async fn no_refusal_is_answered_before_the_refusal_floor() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary"), (BOB, "bob-primary")]).await;
    let gateway = Gateway::start(
        fake.addr,
        "allow_plaintext_auth = true",
        "[limits]\ntrusted_networks = [\"127.0.0.0/8\"]\nrefusal_floor_ms = 400",
    )
    .await;
    gateway.domain("example.test", DomainStatus::Enabled).await;
    gateway.enroll(BOB).await;
    // Decided by postern at once, and decided by the upstream: both wait for the
    // floor (a lower bound, so the check cannot flake on a busy machine).
    for (cause, user, password) in [
        ("primary password of an enrolled user", BOB, "bob-primary"),
        ("wrong password, refused upstream", ALICE, "wrong"),
    ] {
        let started = std::time::Instant::now();
        let (reply, _) = login(&gateway, user, password).await;
        assert_eq!(reply, REFUSAL, "{cause}");
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(400),
            "{cause}: answered after {:?}",
            started.elapsed()
        );
    }
    assert_eq!(fake.refused(), 1, "only ALICE's login reached the upstream");
}

#[tokio::test]
async fn tls_clients_offering_another_alpn_are_refused() {
    let (_fake, gateway) = setup().await;
    let cert = gateway.cert_path();
    common::assert_alpn_rules(gateway.addr(Protocol::Imap, true), &cert, b"imap").await;

    // The same rule after STARTTLS.
    for (alpn, accepted) in [(&[b"h2".as_slice()][..], false), (&[][..], true)] {
        let mut client = connect(gateway.addr(Protocol::Imap, false)).await;
        client.line().await;
        client.send(b"a STARTTLS\r\n").await;
        assert!(client.line().await.starts_with("a OK"));
        let handshake = common::tls_connector_alpn(&cert, alpn)
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                client.into_inner(),
            )
            .await;
        assert_eq!(
            handshake.is_ok(),
            accepted,
            "{alpn:?}: {:?}",
            handshake.err()
        );
    }
}

/// The largest ID RFC 2971 §3.3 allows (30 pairs, 30-octet fields, 1024-octet
/// values), as Dovecot's imaptest `id` test sends it before login.
fn largest_id(tag: &str) -> String {
    let pairs: Vec<String> = (0..30)
        .map(|i| {
            format!(
                "\"x-field-{i:02}{}\" \"{}\"",
                "f".repeat(20),
                "v".repeat(1024)
            )
        })
        .collect();
    format!("{tag} ID ({})\r\n", pairs.join(" "))
}

#[tokio::test]
async fn the_largest_id_rfc_2971_allows_is_answered_at_once() {
    let (_fake, gateway) = setup().await;
    // The configured line cap stays at its 8 KiB default: IMAP raises it.
    assert_eq!(gateway.config.limits.max_line_bytes, 8192);
    let mut client = connect(gateway.addr(Protocol::Imap, false)).await;
    client.line().await;
    let id = largest_id("a");
    assert_eq!(id.len(), 31_808);
    let sent = std::time::Instant::now();
    client.send(id.as_bytes()).await;
    let reply = client.until("a ").await.concat();
    assert_eq!(
        reply,
        "* ID (\"name\" \"postern\")\r\na OK ID completed\r\n"
    );
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
    // The session goes on to log in.
    client
        .send(format!("b LOGIN {ALICE} alice-primary\r\n").as_bytes())
        .await;
    assert!(client.until("b ").await.concat().contains("b OK"));
}

#[tokio::test]
async fn a_line_past_the_cap_without_a_line_end_is_answered_and_closed() {
    let (_fake, gateway) = setup().await;
    let mut client = connect(gateway.addr(Protocol::Imap, false)).await;
    client.line().await;
    let mut line = b"a LOGIN ".to_vec();
    line.resize(70 * 1024, b'x');
    client.send(&line).await;
    // No line end will come: the answer must not wait for one.
    assert_eq!(
        client.line().await,
        "* BYE [TOOBIG] Command line too long\r\n"
    );
    assert!(client.closed().await);
}

#[tokio::test]
async fn a_10_mb_line_is_refused_before_it_is_sent_while_others_log_in() {
    let (fake, gateway) = setup().await;
    let addr = gateway.addr(Protocol::Imap, false);
    let mut flood = connect(addr).await;
    flood.line().await;
    let (read, mut write) = tokio::io::split(flood.into_inner());
    let sender = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        write.write_all(b"a LOGIN ").await?;
        let chunk = vec![b'A'; 64 * 1024];
        for _ in 0..160 {
            write.write_all(&chunk).await?;
        }
        write.write_all(b"\r\n").await
    });
    let mut client = LineClient::new(tokio::io::join(read, tokio::io::sink()));
    // One goodbye, without the input (not even as a tag), and the close...
    assert_eq!(
        client.line().await,
        "* BYE [TOOBIG] Command line too long\r\n"
    );
    assert!(client.closed().await);
    // ...while the client was still sending: the gateway stopped reading at the
    // cap instead of taking in 10 MB.
    let sent = tokio::time::timeout(common::IO_TIMEOUT, sender)
        .await
        .expect("the sender ends")
        .unwrap();
    assert!(sent.is_err(), "all 10 MB were taken in");
    // Other clients are served all along.
    let (reply, _) = login(&gateway, ALICE, "alice-primary").await;
    assert!(reply.starts_with("a OK"), "{reply}");
    assert_eq!(fake.logins(), vec![ALICE]);
}

#[tokio::test]
async fn invalid_base64_from_one_client_while_50_valid_logins_run() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    // 60 connections of one user from one address: above the default
    // per-user-and-address cap.
    let gateway = Gateway::start(
        fake.addr,
        "allow_plaintext_auth = true",
        "[limits]\ntrusted_networks = [\"127.0.0.0/8\"]\nmax_connections_per_ip = 60\nmax_connections_per_user_ip = 60",
    )
    .await;
    let addr = gateway.addr(Protocol::Imap, false);
    let garbage = async {
        for _ in 0..10 {
            let mut client = connect(addr).await;
            client.line().await;
            for n in 0..3 {
                client
                    .send(format!("g{n} AUTHENTICATE PLAIN !!not*base64==\r\n").as_bytes())
                    .await;
                let reply = client.line().await;
                assert!(reply.starts_with(&format!("g{n} BAD")), "{reply}");
                assert!(
                    !reply.contains("not*base64"),
                    "input is not echoed: {reply}"
                );
            }
            assert!(client.closed().await, "closed after three bad commands");
        }
    };
    let logins: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(async move {
                let mut client = connect(addr).await;
                client.line().await;
                let plain = base64::engine::general_purpose::STANDARD
                    .encode(format!("\0{ALICE}\0alice-primary"));
                client
                    .send(format!("a AUTHENTICATE PLAIN {plain}\r\n").as_bytes())
                    .await;
                client.until("a ").await.concat()
            })
        })
        .collect();
    garbage.await;
    for login in logins {
        let reply = login.await.unwrap();
        assert!(reply.starts_with("a OK"), "{reply}");
    }
    assert_eq!(fake.logins().len(), 50);
}

#[tokio::test]
async fn literals_in_both_forms_and_a_command_split_into_single_bytes_log_in() {
    let (fake, gateway) = setup().await;
    // Synchronising literal: the server asks for the bytes with "+".
    let mut client = connect(gateway.addr(Protocol::Imap, false)).await;
    client.line().await;
    client
        .send(format!("a LOGIN {{{}}}\r\n", ALICE.len()).as_bytes())
        .await;
    assert!(client.line().await.starts_with("+ "));
    client.send(format!("{ALICE} {{13}}\r\n").as_bytes()).await;
    assert!(client.line().await.starts_with("+ "));
    client.send(b"alice-primary\r\n").await;
    assert!(client.until("a ").await.concat().starts_with("a OK"));

    // Non-synchronising literal (LITERAL+, RFC 7888): no continuation.
    let mut client = connect(gateway.addr(Protocol::Imap, false)).await;
    client.line().await;
    client
        .send(
            format!(
                "a LOGIN {{{}+}}\r\n{ALICE} {{13+}}\r\nalice-primary\r\n",
                ALICE.len()
            )
            .as_bytes(),
        )
        .await;
    assert!(client.until("a ").await.concat().starts_with("a OK"));

    // One byte per write.
    let mut client = connect(gateway.addr(Protocol::Imap, false)).await;
    client.line().await;
    for byte in format!("a LOGIN {ALICE} alice-primary\r\n").bytes() {
        client.send(&[byte]).await;
    }
    assert!(client.until("a ").await.concat().starts_with("a OK"));
    assert_eq!(fake.logins().len(), 3);
}

#[tokio::test]
async fn commands_pipelined_behind_starttls_are_discarded() {
    let (fake, gateway) = setup().await;
    let mut client = connect(gateway.addr(Protocol::Imap, false)).await;
    client.line().await;
    // RFC 2595 §3.1: what follows STARTTLS in the same packet was sent in clear
    // and must not run inside TLS.
    client
        .send(format!("a STARTTLS\r\nb LOGIN {ALICE} alice-primary\r\n").as_bytes())
        .await;
    assert!(client.line().await.starts_with("a OK"));
    let mut client = LineClient::new(tls_upgrade(client.into_inner(), &gateway.cert_path()).await);
    client.send(b"c NOOP\r\n").await;
    let reply = client.until("c ").await;
    assert_eq!(
        reply,
        vec!["c OK NOOP completed\r\n".to_owned()],
        "no reply to b"
    );
    assert!(fake.logins().is_empty(), "the injected LOGIN never ran");
}

#[tokio::test]
async fn a_plain_authorization_identity_naming_another_user_is_refused() {
    let (fake, gateway) = setup().await;
    let mut client = connect(gateway.addr(Protocol::Imap, false)).await;
    client.line().await;
    let plain =
        base64::engine::general_purpose::STANDARD.encode(format!("{BOB}\0{ALICE}\0alice-primary"));
    client
        .send(format!("a AUTHENTICATE PLAIN {plain}\r\n").as_bytes())
        .await;
    let reply = client.until("a ").await.concat();
    assert!(
        reply.starts_with("a NO") || reply.starts_with("a BAD"),
        "{reply}"
    );
    assert!(fake.logins().is_empty() && fake.refused() == 0);
}

#[tokio::test]
async fn an_http_request_on_the_imap_port_is_closed_without_echo() {
    let (fake, gateway) = setup().await;
    let mut client = connect(gateway.addr(Protocol::Imap, false)).await;
    client.line().await;
    client
        .send(b"GET /secret-path HTTP/1.1\r\nHost: probe.example\r\nUser-Agent: scanner\r\n\r\n")
        .await;
    let mut lines = Vec::new();
    loop {
        let line = client.line().await;
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let all = lines.concat();
    assert!(all.contains("* BYE"), "closed with a goodbye: {all}");
    assert_eq!(
        lines.iter().filter(|l| l.contains("BAD")).count(),
        3,
        "closed at the error limit: {all}"
    );
    for echoed in ["secret-path", "probe.example", "scanner", "HTTP"] {
        assert!(!all.contains(echoed), "{echoed} echoed: {all}");
    }
    assert_eq!(fake.refused() + fake.logins().len(), 0);
}

#[tokio::test]
async fn an_upstream_that_never_greets_is_a_temporary_failure() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // Accept and hold every connection, saying nothing.
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let gateway = Gateway::start_imap(addr, "allow_plaintext_auth = true").await;
    // Answered within the upstream timeout (5 s here), before the client's.
    let (reply, _) = login(&gateway, ALICE, "alice-primary").await;
    assert_eq!(
        reply,
        "a NO [UNAVAILABLE] Temporary failure, please try again later.\r\n"
    );
}

#[tokio::test]
async fn an_upstream_closing_mid_session_closes_the_client_without_leaking_its_text() {
    use postern::demo::server::Fault;
    let users = [(ALICE, "alice-primary")];
    let fake = FakeImap::start_as(&users, |o| {
        // The name is in its greeting and its ID answer.
        o.hostname = "banner-7f3e".into();
        o.fault = Fault::CloseAfterLogin;
    })
    .await;
    let addr = fake.addr;
    let gateway = Gateway::start_imap(addr, "allow_plaintext_auth = true").await;
    let (reply, mut client) = login(&gateway, ALICE, "alice-primary").await;
    let logged_in = format!(
        "a OK [CAPABILITY {}] Logged in\r\n",
        postern::demo::CAPABILITIES_AFTER_LOGIN
    );
    assert_eq!(reply, logged_in);
    client.send(b"b NOOP\r\n").await;
    let mut rest = Vec::new();
    loop {
        let line = client.line().await;
        if line.is_empty() {
            break;
        }
        rest.push(line);
    }
    // The client is not left half-open, and saw nothing of the upstream's
    // pre-login text.
    assert!(rest.iter().all(|l| !l.contains("banner-7f3e")), "{rest:?}");
    assert!(
        rest.iter().all(|l| l.starts_with("* BYE")),
        "at most a goodbye: {rest:?}"
    );
}

#[tokio::test]
async fn a_client_over_the_per_address_cap_is_closed_and_a_silent_one_times_out() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    let gateway = Gateway::start(
        fake.addr,
        "allow_plaintext_auth = true",
        "[limits]\ntrusted_networks = [\"127.0.0.0/8\"]\nmax_connections_per_ip = 2\nprelogin_timeout_secs = 1",
    )
    .await;
    let addr = gateway.addr(Protocol::Imap, false);
    let mut first = connect(addr).await;
    assert!(first.line().await.starts_with("* OK"));
    let mut second = connect(addr).await;
    assert!(second.line().await.starts_with("* OK"));
    // The third from the same address is closed without a greeting.
    let mut third = connect(addr).await;
    assert_eq!(third.line().await, "");
    // A client that never logs in is told so and closed.
    assert_eq!(
        first.line().await,
        "* BYE Autologout; too long without logging in\r\n"
    );
    assert!(first.closed().await);
    assert_eq!(fake.logins().len(), 0);
}

#[tokio::test]
async fn an_office_behind_one_address_keeps_more_than_fifty_connections_open() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    // The default limits: a hundred connections from one address (everyone
    // behind an office's NAT) are all served.
    let gateway = Gateway::start(
        fake.addr,
        "allow_plaintext_auth = true",
        "[limits]\ntrusted_networks = [\"127.0.0.0/8\"]",
    )
    .await;
    let addr = gateway.addr(Protocol::Imap, false);
    let mut open = Vec::new();
    for n in 0..100 {
        let mut client = connect(addr).await;
        let greeting = client.line().await;
        assert!(greeting.starts_with("* OK"), "connection {n}: {greeting:?}");
        open.push(client);
    }
}

/// `name`'s value for the labels `labels` in this process's `/metrics`.
fn metric(name: &str, labels: &str) -> u64 {
    let prefix = format!("{name}{{{labels}}} ");
    postern::metrics::render()
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn one_user_from_one_address_gets_a_limited_number_of_sessions() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary"), (BOB, "bob-primary")]).await;
    let gateway = Gateway::start(
        fake.addr,
        "allow_plaintext_auth = true",
        "[limits]\ntrusted_networks = [\"127.0.0.0/8\"]\nmax_connections_per_user_ip = 2",
    )
    .await;
    let addr = gateway.addr(Protocol::Imap, false);
    let login = |user: &'static str, password: &'static str| async move {
        let mut client = connect(addr).await;
        client.line().await;
        client
            .send(format!("a LOGIN {user} {password}\r\n").as_bytes())
            .await;
        let reply = client.until("a ").await.concat();
        (reply, client)
    };
    let (first, _phone) = login(ALICE, "alice-primary").await;
    let (second, _laptop) = login(ALICE, "alice-primary").await;
    assert!(first.starts_with("a OK") && second.starts_with("a OK"));
    let rejected = metric(
        "postern_connections_rejected_total",
        "protocol=\"imap\",limit=\"per_user_ip\"",
    );
    // A third session of Alice from the same address is told why, and may retry.
    let (third, mut client) = login(ALICE, "alice-primary").await;
    assert_eq!(
        third,
        "a NO [LIMIT] Too many connections for this account from your address; \
         close some and try again.\r\n"
    );
    client.send(b"b NOOP\r\n").await;
    assert!(client.line().await.starts_with("b OK"));
    assert!(
        metric(
            "postern_connections_rejected_total",
            "protocol=\"imap\",limit=\"per_user_ip\""
        ) > rejected
    );
    // Another user behind the same address is not held back.
    let (bob, _bobs) = login(BOB, "bob-primary").await;
    assert!(bob.starts_with("a OK"), "{bob}");
}

#[tokio::test]
async fn a_client_stalling_in_the_tls_handshake_is_closed() {
    use tokio::io::AsyncWriteExt;
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    let gateway = Gateway::start_with(fake.addr, "allow_plaintext_auth = true", "", None, |c| {
        c.tls.handshake_timeout_secs = 1
    })
    .await;
    common::assert_stalled_handshakes_are_closed(gateway.addr(Protocol::Imap, true)).await;

    // The same after STARTTLS on the plain port.
    let mut client = connect(gateway.addr(Protocol::Imap, false)).await;
    client.line().await;
    client.send(b"a STARTTLS\r\n").await;
    assert!(client.line().await.starts_with("a OK"));
    let mut tcp = client.into_inner();
    tcp.write_all(common::HALF_CLIENT_HELLO).await.unwrap();
    common::assert_closed_silently(&mut tcp, "STARTTLS, then half a ClientHello").await;

    // A client that completes its handshake is served as before.
    let tcp = tokio::net::TcpStream::connect(gateway.addr(Protocol::Imap, true))
        .await
        .unwrap();
    let mut tls = LineClient::new(tls_upgrade(tcp, &gateway.cert_path()).await);
    assert!(tls.line().await.starts_with("* OK"));
}

#[tokio::test]
async fn an_upstream_that_never_answers_the_login_is_a_temporary_failure_and_is_closed() {
    use common::stalling_upstream::StallingUpstream;
    let mut upstream = StallingUpstream::start(Protocol::Imap).await;
    let gateway = Gateway::start_with(
        upstream.addr,
        "allow_plaintext_auth = true",
        "",
        None,
        |c| {
            if let Some(imap) = c.imap.as_mut() {
                imap.upstream_timeout_secs = Some(1);
            }
        },
    )
    .await;
    let (reply, mut client) = login(&gateway, ALICE, "alice-primary").await;
    assert_eq!(
        reply,
        "a NO [UNAVAILABLE] Temporary failure, please try again later.\r\n"
    );
    // postern gave up on the upstream connection and closed it.
    let seen = upstream.closed_while_stalled().await;
    assert!(
        seen.iter().any(|l| l.starts_with("a AUTHENTICATE PLAIN")),
        "{seen:?}"
    );
    // The client may try again on the same connection; nothing of the
    // upstream's text reached it.
    client.send(b"b NOOP\r\n").await;
    let rest = client.until("b ").await;
    assert_eq!(rest, vec!["b OK NOOP completed\r\n".to_owned()]);
}

#[tokio::test]
async fn starttls_inside_tls_is_an_error_and_the_session_goes_on() {
    let (fake, gateway) = setup().await;
    let cert = gateway.cert_path();
    let mut upgraded = connect(gateway.addr(Protocol::Imap, false)).await;
    upgraded.line().await;
    upgraded.send(b"a STARTTLS\r\n").await;
    assert!(upgraded.line().await.starts_with("a OK"));
    let upgraded = LineClient::new(tls_upgrade(upgraded.into_inner(), &cert).await);
    let tcp = tokio::net::TcpStream::connect(gateway.addr(Protocol::Imap, true))
        .await
        .unwrap();
    let mut implicit = LineClient::new(tls_upgrade(tcp, &cert).await);
    assert!(implicit.line().await.starts_with("* OK"));

    for (mut client, how) in [(upgraded, "after STARTTLS"), (implicit, "implicit TLS")] {
        client.send(b"b CAPABILITY\r\n").await;
        let caps = client.until("b ").await.concat();
        assert!(
            caps.contains("b OK") && !caps.contains("STARTTLS"),
            "{how}: {caps}"
        );
        client.send(b"c STARTTLS\r\n").await;
        assert_eq!(
            client.until("c ").await.concat(),
            "c BAD TLS is already active\r\n",
            "{how}"
        );
        // Still the same TLS session, and a login works.
        client
            .send(format!("d LOGIN {ALICE} alice-primary\r\n").as_bytes())
            .await;
        let reply = client.until("d ").await.concat();
        assert!(reply.starts_with("d OK"), "{how}: {reply}");
    }
    assert_eq!(fake.logins().len(), 2);
}
