//! POP3 through the 2-step gate, against a fake upstream in this process.

mod common;
mod mail_fakes;

use mail_fakes::*;
use postern::policy::Protocol;

async fn setup() -> (Postern, Log) {
    let (upstream, log) = fake_pop3().await;
    let postern = Postern::start(Protocol::Pop3, upstream, "allow_plaintext_auth = true").await;
    (postern, log)
}

async fn connect(postern: &Postern) -> Client {
    let mut c = Client::connect(postern.plain_addr()).await;
    assert!(c.line().await.starts_with("+OK"));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_enrolled_primary_password_passes_through() {
    let (postern, log) = setup().await;
    let mut c = connect(&postern).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("", ALICE, ALICE_PRIMARY)
    ))
    .await;
    assert_eq!(c.line().await, "+OK logged in");
    c.send("STAT\r\n").await;
    assert_eq!(c.line().await, format!("+OK 1 {}", MESSAGE.len()));
    assert_eq!(
        log.logins(),
        vec![(String::new(), ALICE.into(), ALICE_PRIMARY.into())]
    );

    // USER/PASS is passed on as the same SASL PLAIN login.
    let mut c = connect(&postern).await;
    c.send(&format!("USER {ALICE}\r\n")).await;
    assert!(c.line().await.starts_with("+OK"));
    c.send(&format!("PASS {ALICE_PRIMARY}\r\n")).await;
    assert_eq!(c.line().await, "+OK logged in");
    assert_eq!(log.logins().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_primary_refused_and_nothing_reaches_the_upstream() {
    let (postern, log) = setup().await;
    postern.enroll(ALICE).await;
    let mut c = connect(&postern).await;
    c.send(&format!("USER {ALICE}\r\nPASS {ALICE_PRIMARY}\r\n"))
        .await;
    assert!(c.line().await.starts_with("+OK"));
    assert!(c.line().await.starts_with("-ERR [AUTH] "));
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("", ALICE, ALICE_PRIMARY)
    ))
    .await;
    assert!(c.line().await.starts_with("-ERR [AUTH] "));
    c.quit().await;
    log.connections_closed().await;
    assert!(log.all().is_empty(), "{:?}", log.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_password_logs_in_as_master() {
    let (postern, log) = setup().await;
    postern.enroll(ALICE).await;
    let password = postern.app_password(ALICE, "pop3").await;
    let mut c = connect(&postern).await;
    c.send(&format!("USER {ALICE}\r\nPASS {password}\r\n"))
        .await;
    assert!(c.line().await.starts_with("+OK"));
    assert_eq!(c.line().await, "+OK logged in");
    assert_eq!(
        log.logins(),
        vec![(ALICE.into(), "proxy".into(), "masterpw".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_only_app_password_refused() {
    let (postern, log) = setup().await;
    postern.enroll(ALICE).await;
    let password = postern.app_password(ALICE, "imap").await;
    let mut c = connect(&postern).await;
    c.send(&format!("AUTH PLAIN {}\r\n", plain("", ALICE, &password)))
        .await;
    assert!(c.line().await.starts_with("-ERR [AUTH] "));
    c.quit().await;
    log.connections_closed().await;
    assert!(log.logins().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_reach_the_upstream_once_in_order() {
    let (postern, log) = setup().await;
    let mut c = connect(&postern).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\nSTAT\r\nLIST\r\nUIDL 1\r\nQUIT\r\n",
        plain("", ALICE, ALICE_PRIMARY)
    ))
    .await;
    assert_eq!(c.line().await, "+OK logged in");
    assert_eq!(c.line().await, format!("+OK 1 {}", MESSAGE.len()));
    assert_eq!(c.line().await, "+OK");
    assert_eq!(c.line().await, format!("1 {}", MESSAGE.len()));
    assert_eq!(c.line().await, ".");
    assert_eq!(c.line().await, "+OK 1 1");
    assert_eq!(c.line().await, "+OK bye");
    let commands = log.commands();
    let after: Vec<&str> = commands
        .iter()
        .skip_while(|c| !c.starts_with("AUTH"))
        .skip(1)
        .map(String::as_str)
        .collect();
    assert_eq!(after, ["STAT", "LIST", "UIDL 1", "QUIT"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_temporary() {
    let down = closed_port().await;
    let postern = Postern::start(Protocol::Pop3, down, "allow_plaintext_auth = true").await;
    let mut c = connect(&postern).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("", ALICE, ALICE_PRIMARY)
    ))
    .await;
    assert!(c.line().await.starts_with("-ERR [SYS/TEMP] "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_before_login_are_not_forwarded() {
    let (postern, log) = setup().await;
    let mut c = connect(&postern).await;
    c.send("STAT\r\nRETR 1\r\n").await;
    assert!(c.line().await.starts_with("-ERR"));
    assert!(c.line().await.starts_with("-ERR"));
    c.quit().await;
    log.connections_closed().await;
    assert!(log.all().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_session_gets_err_auth() {
    let (postern, _log) = setup().await;
    let mut c = connect(&postern).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("", ALICE, ALICE_PRIMARY)
    ))
    .await;
    assert_eq!(c.line().await, "+OK logged in");
    // A command through the relay: the session is registered before it starts.
    c.send("NOOP\r\n").await;
    assert_eq!(c.line().await, "+OK");
    let killed = postern
        .runtime
        .registry
        .kill_where(postern::registry::EndReason::AdminKill, |_| true);
    assert_eq!(killed, 1);
    assert_eq!(
        c.line().await,
        "-ERR [AUTH] Your session was ended by an administrator."
    );
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_offering_another_alpn_are_refused() {
    let (postern, _log) = setup().await;
    common::assert_alpn_rules(postern.tls_addr(), &postern.cert_path(), b"pop3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mb_line_gets_one_error_without_echo_while_others_log_in() {
    let (postern, log) = setup().await;
    let flood = flood_10_mb(postern.plain_addr());
    // Another client is served while the line streams in.
    let mut c = connect(&postern).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("", ALICE, ALICE_PRIMARY)
    ))
    .await;
    assert_eq!(c.line().await, "+OK logged in");
    let mut flooded = tokio::time::timeout(std::time::Duration::from_secs(60), flood)
        .await
        .expect("10 MB sent in time")
        .unwrap()
        .expect("the gateway drains the line instead of buffering or resetting");
    assert_eq!(flooded.line().await, "-ERR Line too long");
    flooded.send("CAPA\r\n").await;
    assert_eq!(flooded.line().await, "+OK Capability list follows");
    assert_eq!(log.logins().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_pipelined_behind_stls_are_discarded() {
    let (postern, log) = setup().await;
    let mut c = connect(&postern).await;
    // RFC 2595 §4: input sent in clear after STLS must not run inside TLS.
    c.send(&format!(
        "STLS\r\nAUTH PLAIN {}\r\n",
        plain("", ALICE, ALICE_PRIMARY)
    ))
    .await;
    assert!(c.line().await.starts_with("+OK"));
    let tls = common::tls_connector(&postern.cert_path())
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            c.into_inner(),
        )
        .await
        .expect("TLS handshake");
    let mut tls = common::LineClient::new(tls);
    tls.send(b"NOOP\r\n").await;
    // The first answer inside TLS is to NOOP (refused before login), not a
    // login result.
    assert!(tls.line().await.starts_with("-ERR"));
    assert!(log.logins().is_empty(), "{:?}", log.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_authorization_identity_naming_another_user_is_refused() {
    let (postern, log) = setup().await;
    let mut c = connect(&postern).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("bob@example.test", ALICE, ALICE_PRIMARY)
    ))
    .await;
    assert!(c.line().await.starts_with("-ERR [AUTH] "));
    // An upstream login would have been logged before postern could answer.
    assert!(log.logins().is_empty(), "{:?}", log.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_in_the_tls_handshake_is_closed() {
    let (upstream, _log) = fake_pop3().await;
    let postern = Postern::start_with(
        Protocol::Pop3,
        upstream,
        "allow_plaintext_auth = true",
        |c| c.tls.handshake_timeout_secs = 1,
    )
    .await;
    common::assert_stalled_handshakes_are_closed(postern.tls_addr()).await;
    let mut c = connect(&postern).await;
    c.send("STLS\r\n").await;
    assert!(c.line().await.starts_with("+OK"));
    let mut tcp = c.into_inner();
    common::assert_closed_silently(&mut tcp, "STLS, then nothing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_the_login_is_a_temporary_failure_and_is_closed() {
    use common::stalling_upstream::{BANNER, StallingUpstream};
    let mut upstream = StallingUpstream::start(Protocol::Pop3).await;
    let postern = Postern::start_with(
        Protocol::Pop3,
        upstream.addr,
        "allow_plaintext_auth = true",
        |c| {
            if let Some(pop3) = c.pop3.as_mut() {
                pop3.upstream_timeout_secs = Some(1);
            }
        },
    )
    .await;
    let mut c = connect(&postern).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("", ALICE, ALICE_PRIMARY)
    ))
    .await;
    let reply = c.line().await;
    assert!(reply.starts_with("-ERR [SYS/TEMP] "), "{reply}");
    assert!(!reply.contains(BANNER), "{reply}");
    let seen = upstream.closed_while_stalled().await;
    assert!(seen.iter().any(|l| l.starts_with("AUTH PLAIN")), "{seen:?}");
    c.send("NOOP\r\n").await;
    let after = c.line().await;
    assert!(
        after.starts_with("-ERR") && !after.contains(BANNER),
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stls_inside_tls_is_an_error_and_the_session_goes_on() {
    let (postern, log) = setup().await;
    let cert = postern.cert_path();
    let mut c = connect(&postern).await;
    c.send("STLS\r\n").await;
    assert!(c.line().await.starts_with("+OK"));
    let upgraded = common::LineClient::new(common::tls_upgrade(c.into_inner(), &cert).await);
    let tcp = tokio::net::TcpStream::connect(postern.tls_addr())
        .await
        .unwrap();
    let mut implicit = common::LineClient::new(common::tls_upgrade(tcp, &cert).await);
    assert!(implicit.line().await.starts_with("+OK"));

    for (mut client, how) in [(upgraded, "after STLS"), (implicit, "implicit TLS")] {
        client.send(b"CAPA\r\n").await;
        let capa = client.until(".").await.concat();
        assert!(
            capa.starts_with("+OK") && !capa.contains("STLS"),
            "{how}: {capa}"
        );
        client.send(b"STLS\r\n").await;
        assert_eq!(
            client.line().await,
            "-ERR TLS is already active\r\n",
            "{how}"
        );
        let login = format!("AUTH PLAIN {}\r\n", plain("", ALICE, ALICE_PRIMARY));
        client.send(login.as_bytes()).await;
        assert_eq!(client.line().await, "+OK logged in\r\n", "{how}");
    }
    assert_eq!(log.logins().len(), 2);
}
