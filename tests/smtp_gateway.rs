//! SMTP submission through the 2-step gate, against a fake upstream in this process.

mod common;
mod mail_fakes;

use mail_fakes::*;
use postern::policy::Protocol;

async fn setup(extra: &str) -> (Postern, Log) {
    let (upstream, log) = fake_smtp().await;
    let extra = format!("allow_plaintext_auth = true\nhostname = \"gw.test\"\n{extra}");
    let postern = Postern::start(Protocol::Smtp, upstream, &extra).await;
    (postern, log)
}

/// Connected, greeted and EHLO'd; returns the EHLO reply too.
async fn connect(postern: &Postern) -> (Client, Vec<String>) {
    let mut c = Client::connect(postern.plain_addr()).await;
    assert_eq!(c.line().await, "220 gw.test ESMTP postern");
    c.send("EHLO client.test\r\n").await;
    let ehlo = c.reply().await;
    assert!(ehlo.last().unwrap().starts_with("250 "), "{ehlo:?}");
    (c, ehlo)
}

/// Mail transaction commands the upstream saw.
fn mail_commands(log: &Log) -> Vec<String> {
    log.commands()
        .into_iter()
        .filter(|c| {
            let u = c.to_ascii_uppercase();
            u.starts_with("MAIL") || u.starts_with("RCPT") || u == "DATA" || u.starts_with("BDAT")
        })
        .collect()
}

/// Kills every live session. Call it once a command went through the relay:
/// the session is registered before the relay starts.
fn kill_all(postern: &Postern, reason: postern::registry::EndReason) -> usize {
    postern.runtime.registry.kill_where(reason, |_| true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ehlo_offers_the_upstreams_extensions_and_postern_auth() {
    let (postern, _log) = setup("").await;
    let (_c, ehlo) = connect(&postern).await;
    let has = |word: &str| ehlo.iter().any(|l| l[4..].starts_with(word));
    let size = format!("SIZE {}", postern::demo::MAX_MESSAGE);
    assert!(has(&size), "{ehlo:?}");
    assert!(
        has("PIPELINING") && has("8BITMIME") && has("STARTTLS"),
        "{ehlo:?}"
    );
    assert!(has("AUTH PLAIN LOGIN"), "{ehlo:?}");
    assert!(!has("XCLIENT"), "{ehlo:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_enrolled_primary_password_passes_through() {
    let (postern, log) = setup("").await;
    let (mut c, _) = connect(&postern).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("", ALICE, ALICE_PRIMARY)
    ))
    .await;
    assert_eq!(c.line().await, "235 2.7.0 Authentication successful");
    assert_eq!(
        log.logins(),
        vec![(String::new(), ALICE.into(), ALICE_PRIMARY.into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_primary_refused_and_no_login_reaches_the_upstream() {
    let (postern, log) = setup("").await;
    postern.enroll(ALICE).await;
    let (mut c, _) = connect(&postern).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("", ALICE, ALICE_PRIMARY)
    ))
    .await;
    assert!(c.line().await.starts_with("535 5.7.8 "));
    c.send("MAIL FROM:<alice@example.test>\r\n").await;
    assert!(c.line().await.starts_with("530 5.7.0 "));
    c.quit().await;
    log.connections_closed().await;
    assert!(log.logins().is_empty());
    assert!(!log.has_command("AUTH") && !log.has_command("XCLIENT LOGIN"));
    assert!(mail_commands(&log).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_password_logs_in_as_master() {
    let (postern, log) = setup("").await;
    postern.enroll(ALICE).await;
    let password = postern.app_password(ALICE, "smtp").await;
    let (mut c, _) = connect(&postern).await;
    c.send(&format!("AUTH PLAIN {}\r\n", plain("", ALICE, &password)))
        .await;
    assert_eq!(c.line().await, "235 2.7.0 Authentication successful");
    assert_eq!(
        log.logins(),
        vec![(ALICE.into(), "proxy".into(), "masterpw".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_only_app_password_refused() {
    let (postern, log) = setup("").await;
    postern.enroll(ALICE).await;
    let password = postern.app_password(ALICE, "imap,pop3").await;
    let (mut c, _) = connect(&postern).await;
    c.send(&format!("AUTH PLAIN {}\r\n", plain("", ALICE, &password)))
        .await;
    assert!(c.line().await.starts_with("535 5.7.8 "));
    c.quit().await;
    log.connections_closed().await;
    assert!(log.logins().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xclient_mode_uses_xclient_login_for_app_passwords_only() {
    let (postern, log) = setup("upstream_login = \"xclient\"").await;
    postern.enroll(ALICE).await;
    let password = postern.app_password(ALICE, "smtp").await;
    let (mut c, _) = connect(&postern).await;
    c.send(&format!("AUTH PLAIN {}\r\n", plain("", ALICE, &password)))
        .await;
    assert!(c.line().await.starts_with("235 "));
    c.send("MAIL FROM:<alice@example.test>\r\n").await;
    assert_eq!(c.line().await, "250 2.1.0 OK");
    assert!(
        log.commands()
            .iter()
            .any(|l| l.starts_with(&format!("XCLIENT LOGIN={ALICE} "))),
        "{:?}",
        log.commands()
    );
    assert!(log.logins().is_empty(), "no password went upstream");
    assert!(!log.has_command("AUTH"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xclient_mode_still_verifies_primary_passwords_with_auth() {
    let (postern, log) = setup("upstream_login = \"xclient\"").await;
    let (mut c, _) = connect(&postern).await;
    c.send(&format!("AUTH PLAIN {}\r\n", plain("", ALICE, "wrong")))
        .await;
    assert!(c.line().await.starts_with("535 5.7.8 "));
    assert_eq!(
        log.logins(),
        vec![(String::new(), ALICE.into(), "wrong".into())]
    );
    assert!(!log.has_command("XCLIENT LOGIN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_and_message_bytes_reach_the_upstream_unchanged() {
    let (postern, log) = setup("").await;
    let (mut c, _) = connect(&postern).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n",
        plain("", ALICE, ALICE_PRIMARY)
    ))
    .await;
    assert_eq!(c.line().await, "235 2.7.0 Authentication successful");
    assert_eq!(c.line().await, "250 2.1.0 OK");
    assert_eq!(c.line().await, "250 2.1.5 OK");
    assert_eq!(c.line().await, "354 End data with <CR><LF>.<CR><LF>");
    // Bare LF, a lone CR, dot-stuffed lines (a lone `.` line is sent as `..`)
    // and 8-bit bytes: the relay must pass all of it on unchanged.
    let message: &[u8] = b"Subject: bytes\r\n\r\nbare LF here\nthen CR alone\r more\r\n..a stuffed dot line\r\n..\r\n\x00\xff binary-ish\r\nlast line\r\n";
    c.send_raw(message).await;
    c.send("..\r\n.\r\nQUIT\r\n").await;
    assert_eq!(c.line().await, "250 2.0.0 queued");
    assert_eq!(c.line().await, "221 2.0.0 bye");
    let data: Vec<Vec<u8>> = log
        .all()
        .into_iter()
        .filter_map(|s| match s {
            Seen::Data(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(data, vec![[message, b"..\r\n"].concat()]);
    let mail = mail_commands(&log);
    assert_eq!(
        mail,
        [
            "MAIL FROM:<alice@example.test>",
            "RCPT TO:<bob@example.test>",
            "DATA"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_temporary_and_ehlo_uses_defaults() {
    let down = closed_port().await;
    let postern = Postern::start(
        Protocol::Smtp,
        down,
        "allow_plaintext_auth = true\nhostname = \"gw.test\"",
    )
    .await;
    let (mut c, ehlo) = connect(&postern).await;
    assert!(ehlo.iter().any(|l| l.ends_with("PIPELINING")), "{ehlo:?}");
    assert!(!ehlo.iter().any(|l| l[4..].starts_with("SIZE")), "{ehlo:?}");
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("", ALICE, ALICE_PRIMARY)
    ))
    .await;
    assert!(c.line().await.starts_with("454 4.7.0 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_before_auth_is_refused_and_nothing_forwarded() {
    let (postern, log) = setup("").await;
    let (mut c, _) = connect(&postern).await;
    c.send("MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        .await;
    assert!(c.line().await.starts_with("530 5.7.0 "));
    assert!(c.line().await.starts_with("530 5.7.0 "));
    // The third bad command ends the connection.
    assert!(c.line().await.starts_with("421 4.7.0 "));
    assert!(c.closed().await);
    log.connections_closed().await;
    assert!(mail_commands(&log).is_empty());
    assert!(log.logins().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_session_gets_421() {
    let (postern, _log) = setup("").await;
    let (mut c, _) = connect(&postern).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("", ALICE, ALICE_PRIMARY)
    ))
    .await;
    assert!(c.line().await.starts_with("235 "));
    c.send("NOOP\r\n").await;
    assert_eq!(c.line().await, "250 2.0.0 OK");
    let revoked = postern::registry::EndReason::Policy(postern::policy::Refusal::Revoked);
    assert_eq!(kill_all(&postern, revoked), 1);
    assert_eq!(
        c.line().await,
        "421 4.7.0 This application password was revoked."
    );
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_offering_another_alpn_are_refused() {
    let (postern, _log) = setup("").await;
    common::assert_alpn_rules(postern.tls_addr(), &postern.cert_path(), b"smtp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mb_line_gets_one_error_without_echo_while_others_log_in() {
    let (postern, log) = setup("").await;
    let flood = flood_10_mb(postern.plain_addr());
    let (mut c, _) = connect(&postern).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("", ALICE, ALICE_PRIMARY)
    ))
    .await;
    assert_eq!(c.line().await, "235 2.7.0 Authentication successful");
    let mut flooded = tokio::time::timeout(std::time::Duration::from_secs(60), flood)
        .await
        .expect("10 MB sent in time")
        .unwrap()
        .expect("the gateway drains the line instead of buffering or resetting");
    assert_eq!(flooded.line().await, "500 5.5.2 Line too long");
    flooded.send("NOOP\r\n").await;
    assert_eq!(flooded.line().await, "250 2.0.0 OK");
    assert_eq!(log.logins().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_base64_from_one_client_while_50_valid_logins_run() {
    // 51 connections from one address: above the default per-address cap.
    let (postern, log) =
        setup("[limits]\nmax_connections_per_ip = 60\nmax_connections_per_user_ip = 60").await;
    let addr = postern.plain_addr();
    let logins: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await;
                c.line().await;
                c.send("EHLO client.test\r\n").await;
                c.reply().await;
                c.send(&format!(
                    "AUTH PLAIN {}\r\n",
                    plain("", ALICE, ALICE_PRIMARY)
                ))
                .await;
                c.line().await
            })
        })
        .collect();
    for _ in 0..10 {
        let (mut c, _) = connect(&postern).await;
        for n in 0..3 {
            c.send("AUTH PLAIN !!not*base64==\r\n").await;
            let reply = c.line().await;
            // The third bad command closes with 421.
            let code = if n < 2 { "501 " } else { "421 4.7.0 " };
            assert!(reply.starts_with(code), "{reply}");
            assert!(
                !reply.contains("not*base64"),
                "input is not echoed: {reply}"
            );
        }
        assert!(c.closed().await, "closed after three bad commands");
    }
    for login in logins {
        assert_eq!(login.await.unwrap(), "235 2.7.0 Authentication successful");
    }
    assert_eq!(log.logins().len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_pipelined_behind_starttls_are_discarded() {
    let (postern, log) = setup("").await;
    let (mut c, _) = connect(&postern).await;
    // RFC 3207 §6: input sent in clear after STARTTLS must not run inside TLS.
    c.send(&format!(
        "STARTTLS\r\nAUTH PLAIN {}\r\n",
        plain("", ALICE, ALICE_PRIMARY)
    ))
    .await;
    assert!(c.line().await.starts_with("220 "));
    let tls = common::tls_connector(&postern.cert_path())
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            c.into_inner(),
        )
        .await
        .expect("TLS handshake");
    let mut tls = common::LineClient::new(tls);
    tls.send(b"NOOP\r\n").await;
    // The first answer inside TLS is to NOOP, not to the injected AUTH.
    assert_eq!(tls.line().await, "250 2.0.0 OK\r\n");
    assert!(log.logins().is_empty(), "{:?}", log.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_authorization_identity_naming_another_user_is_refused() {
    let (postern, log) = setup("").await;
    let (mut c, _) = connect(&postern).await;
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("bob@example.test", ALICE, ALICE_PRIMARY)
    ))
    .await;
    assert!(c.line().await.starts_with("535 "));
    // An upstream login would have been logged before postern could answer.
    assert!(log.logins().is_empty(), "{:?}", log.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_in_the_tls_handshake_is_closed() {
    let (upstream, _log) = fake_smtp().await;
    let postern = Postern::start_with(
        Protocol::Smtp,
        upstream,
        "allow_plaintext_auth = true\nhostname = \"gw.test\"",
        |c| c.tls.handshake_timeout_secs = 1,
    )
    .await;
    common::assert_stalled_handshakes_are_closed(postern.tls_addr()).await;
    let (mut c, _) = connect(&postern).await;
    c.send("STARTTLS\r\n").await;
    assert!(c.line().await.starts_with("220 "));
    let mut tcp = c.into_inner();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, common::HALF_CLIENT_HELLO)
        .await
        .unwrap();
    common::assert_closed_silently(&mut tcp, "STARTTLS, then half a ClientHello").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_the_login_is_a_temporary_failure_and_is_closed() {
    use common::stalling_upstream::{BANNER, StallingUpstream};
    let mut upstream = StallingUpstream::start(Protocol::Smtp).await;
    let postern = Postern::start_with(
        Protocol::Smtp,
        upstream.addr,
        "allow_plaintext_auth = true\nhostname = \"gw.test\"",
        |c| {
            if let Some(smtp) = c.smtp.as_mut() {
                smtp.upstream_timeout_secs = Some(1);
            }
        },
    )
    .await;
    let (mut c, ehlo) = connect(&postern).await;
    assert!(ehlo.iter().all(|l| !l.contains(BANNER)), "{ehlo:?}");
    c.send(&format!(
        "AUTH PLAIN {}\r\n",
        plain("", ALICE, ALICE_PRIMARY)
    ))
    .await;
    let reply = c.line().await;
    assert!(reply.starts_with("454 4.7.0 "), "{reply}");
    assert!(!reply.contains(BANNER), "{reply}");
    let seen = upstream.closed_while_stalled().await;
    assert!(seen.iter().any(|l| l.starts_with("AUTH PLAIN")), "{seen:?}");
    c.send("NOOP\r\n").await;
    let after = c.line().await;
    assert!(!after.contains(BANNER), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_inside_tls_is_an_error_and_the_session_goes_on() {
    let (postern, log) = setup("").await;
    let cert = postern.cert_path();
    let (mut c, _) = connect(&postern).await;
    c.send("STARTTLS\r\n").await;
    assert!(c.line().await.starts_with("220 "));
    let upgraded = common::LineClient::new(common::tls_upgrade(c.into_inner(), &cert).await);
    let tcp = tokio::net::TcpStream::connect(postern.tls_addr())
        .await
        .unwrap();
    let mut implicit = common::LineClient::new(common::tls_upgrade(tcp, &cert).await);
    assert!(implicit.line().await.starts_with("220 "));

    for (mut client, how) in [(upgraded, "after STARTTLS"), (implicit, "implicit TLS")] {
        client.send(b"EHLO client.test\r\n").await;
        let ehlo = client.until("250 ").await.concat();
        assert!(!ehlo.contains("STARTTLS"), "{how}: {ehlo}");
        client.send(b"STARTTLS\r\n").await;
        assert_eq!(
            client.line().await,
            "503 5.5.1 TLS already active\r\n",
            "{how}"
        );
        let login = format!("AUTH PLAIN {}\r\n", plain("", ALICE, ALICE_PRIMARY));
        client.send(login.as_bytes()).await;
        assert_eq!(
            client.line().await,
            "235 2.7.0 Authentication successful\r\n",
            "{how}"
        );
    }
    assert_eq!(log.logins().len(), 2);
}
