//! Security notices by e-mail, end to end: a change made through the web UI,
//! the API or the store queues its notice in the same transaction, and a
//! sender (as every `serve` node runs) delivers it through a fake SMTP relay on
//! loopback, to the mailbox and the recovery address. The store is a real
//! SQLite file; time is passed to the sender, never slept.

mod common;

use std::collections::BTreeSet;

use axum::Router;
use axum::http::StatusCode;
use common::Gateway;
use common::browser::{Browser, CLIENT};
use common::fake_imap::FakeImap;
use common::smtp_sink::{ReceivedMail, SmtpSink};
use postern::config::RelayConfig;
use postern::credentials::totp;
use postern::notices::{MAX_ATTEMPTS, NoticeKind, NoticeSender};
use postern::policy::{DomainStatus, NOTICES_PER_HOUR};
use postern::recovery_mail::RecoveryMailer;
use postern::store::{FactorKind, NewAppPassword, Store};
use postern::web::{WebState, router};
use serde_json::Value;

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";
const RECOVERY: &str = "alice.home@elsewhere.test";
/// The secret `Gateway::enroll` provisions.
const SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

struct World {
    gateway: Gateway,
    app: Router,
    _fake: FakeImap,
}

fn relay(addr: &str) -> RelayConfig {
    RelayConfig {
        smtp: addr.to_owned(),
        from: "postern@gateway.test".to_owned(),
    }
}

fn sender(store: &Store, addr: &str) -> NoticeSender {
    NoticeSender::new(
        store.clone(),
        RecoveryMailer::from_config(&relay(addr)).expect("relay"),
    )
}

async fn world() -> World {
    let fake = FakeImap::start(&[(ALICE, "alice-primary"), (BOB, "bob-primary")]).await;
    let gateway = Gateway::start_imap(fake.addr, "allow_plaintext_auth = true").await;
    gateway.domain("example.test", DomainStatus::Enabled).await;
    let state = WebState::from_runtime(&gateway.runtime, &gateway.config).expect("web state");
    World {
        app: router(state),
        gateway,
        _fake: fake,
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A port nothing listens on: the relay is down.
async fn closed_port() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    addr
}

/// Every mail the sink has (the sink hands a message over before it answers
/// the final dot, so once `run_once` returned, all of them are here).
async fn mails(sink: &mut SmtpSink) -> Vec<ReceivedMail> {
    let mut all = Vec::new();
    for _ in 0..sink.waiting() {
        all.push(sink.next_mail().await);
    }
    all
}

/// Sends what is due and returns the mails, as (recipient, mail).
async fn deliver(sender: &NoticeSender, sink: &mut SmtpSink) -> Vec<(String, ReceivedMail)> {
    sender.run_once(now()).await.expect("sender");
    mails(sink)
        .await
        .into_iter()
        .map(|mail| {
            assert_eq!(mail.to.len(), 1, "one recipient per message");
            (mail.to[0].clone(), mail)
        })
        .collect()
}

fn subject(mail: &ReceivedMail) -> String {
    mail.data
        .lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or_default()
        .to_owned()
}

/// One notice of this subject to the mailbox and the recovery address.
fn assert_one_notice(sent: &[(String, ReceivedMail)], expected: &str) {
    let to: BTreeSet<&str> = sent.iter().map(|(to, _)| to.as_str()).collect();
    assert_eq!(
        to,
        BTreeSet::from([ALICE, RECOVERY]),
        "{expected}: {:?}",
        sent.iter()
            .map(|(t, m)| (t, subject(m)))
            .collect::<Vec<_>>()
    );
    assert_eq!(sent.len(), 2, "{expected}");
    for (_, mail) in sent {
        assert_eq!(subject(mail), expected);
        assert_eq!(mail.from, "postern@gateway.test");
        assert!(mail.data.contains("If it was not you: "), "{}", mail.data);
        assert!(!mail.data.contains("http"), "no link: {}", mail.data);
    }
}

/// ALICE with a confirmed recovery address (2-Step on: its notice is sent and
/// checked here).
async fn with_recovery_address(w: &World, sender: &NoticeSender, sink: &mut SmtpSink) -> i64 {
    let user = w.gateway.store().ensure_user(ALICE).await.expect("user");
    w.gateway
        .store()
        .add_second_factor(user.id, FactorKind::Email, RECOVERY, true, "cli:root")
        .await
        .expect("factor");
    let sent = deliver(sender, sink).await;
    assert_one_notice(&sent, "2-Step Authentication was turned on");
    assert!(sent[0].1.data.contains("a***@elsewhere.test"));
    assert!(sent[0].1.data.contains("By: an administrator"));
    user.id
}

/// Signs ALICE (enrolled with TOTP) in; returns the browser and the API token.
async fn sign_in(w: &World) -> (Browser, String) {
    let mut browser = Browser::new(&w.app);
    let page = browser.password_step(ALICE, "alice-primary").await;
    assert_eq!(page.location(), "/login/code", "{}", page.body);
    let step = u64::try_from(now()).expect("time");
    let code = totp::code_at(SECRET, step).expect("code");
    let page = browser.code_step(&code).await;
    assert_eq!(page.location(), "/account", "{}", page.body);
    let csrf = browser.get("/account").await.csrf();
    (browser, csrf)
}

#[tokio::test]
async fn an_app_password_created_on_the_web_is_told_to_the_mailbox_and_recovery_address_without_it()
{
    let w = world().await;
    let mut sink = SmtpSink::start().await;
    let sender = sender(w.gateway.store(), &sink.addr.to_string());
    with_recovery_address(&w, &sender, &mut sink).await;
    w.gateway.enroll(ALICE).await;
    let added = deliver(&sender, &mut sink).await;
    assert_one_notice(&added, "A second factor was added to your account");
    assert!(
        !added[0].1.data.contains(SECRET),
        "the TOTP secret is never sent"
    );

    let (mut browser, csrf) = sign_in(&w).await;
    let page = browser
        .json(
            "POST",
            "/api/v1/account/app-passwords",
            Some(&csrf),
            r#"{"name": "Kitchen tablet"}"#,
        )
        .await;
    assert_eq!(page.status, StatusCode::CREATED, "{}", page.body);
    let body: Value = serde_json::from_str(&page.body).expect("json");
    let password = body["password"].as_str().expect("password").to_owned();

    let sent = deliver(&sender, &mut sink).await;
    assert_one_notice(&sent, "An application password was created");
    let client_ip = CLIENT.split(':').next().expect("ip");
    let bare: String = password.chars().filter(|c| c.is_alphanumeric()).collect();
    for (_, mail) in &sent {
        assert!(mail.data.contains("\"Kitchen tablet\""), "{}", mail.data);
        assert!(
            mail.data
                .contains(&format!("From the address: {client_ip}")),
            "{}",
            mail.data
        );
        assert!(
            mail.data
                .contains("By: someone signed in to your account (you, if you did this)")
        );
        for shown in [&password, &bare, &bare.to_lowercase()] {
            assert!(
                !mail.data.contains(shown.as_str()),
                "the app password is never mailed"
            );
        }
    }
    // Sent once: nothing more goes out.
    assert!(deliver(&sender, &mut sink).await.is_empty());
}

#[tokio::test]
async fn every_kind_of_change_is_told_once_to_the_mailbox_and_the_recovery_address() {
    let w = world().await;
    let mut sink = SmtpSink::start().await;
    let sender = sender(w.gateway.store(), &sink.addr.to_string());
    let store = w.gateway.store();
    let id = with_recovery_address(&w, &sender, &mut sink).await;
    let actor = "user:alice@example.test";

    let totp = store
        .add_second_factor(id, FactorKind::Totp, SECRET, false, actor)
        .await
        .expect("pending");
    // A factor not yet confirmed is no way in: no notice.
    assert!(deliver(&sender, &mut sink).await.is_empty());
    store
        .confirm_second_factor(id, totp, actor)
        .await
        .expect("confirm");
    let sent = deliver(&sender, &mut sink).await;
    assert_one_notice(&sent, "A second factor was added to your account");
    assert!(
        sent[0]
            .1
            .data
            .contains("An authenticator app (TOTP) was added")
    );

    let app = store
        .create_app_password(
            id,
            NewAppPassword {
                name: "phone".into(),
                lookup: "00".into(),
                scopes: "imap".parse().expect("scopes"),
                expires_at: None,
                networks: Default::default(),
            },
            actor,
        )
        .await
        .expect("app password");
    assert_one_notice(
        &deliver(&sender, &mut sink).await,
        "An application password was created",
    );
    store
        .revoke_app_password(id, app, actor)
        .await
        .expect("revoke");
    let sent = deliver(&sender, &mut sink).await;
    assert_one_notice(&sent, "An application password was revoked");
    assert!(sent[0].1.data.contains("\"phone\""));

    store
        .replace_backup_codes(id, &["h1".into(), "h2".into()], actor)
        .await
        .expect("codes");
    let sent = deliver(&sender, &mut sink).await;
    assert_one_notice(&sent, "New backup codes were generated");
    assert!(!sent[0].1.data.contains("h1"));

    store
        .remove_second_factor(id, totp, actor)
        .await
        .expect("remove");
    assert_one_notice(
        &deliver(&sender, &mut sink).await,
        "A second factor was removed from your account",
    );

    let t = now();
    for n in 0..postern::penalty::BLOCK_AFTER + 5 {
        store
            .count_login_failure_from(ALICE, t, t - 900, Some("198.51.100.9"))
            .await
            .expect("count");
        if n == 0 {
            assert!(deliver(&sender, &mut sink).await.is_empty());
        }
    }
    let sent = deliver(&sender, &mut sink).await;
    assert_one_notice(&sent, "Mail sign-ins to your account are blocked");
    assert!(sent[0].1.data.contains("From the address: 198.51.100.9"));

    store.turn_off_two_step(id, actor).await.expect("off");
    let sent = deliver(&sender, &mut sink).await;
    // The recovery address just removed hears of it too.
    assert_one_notice(&sent, "2-Step Authentication was turned off");
    assert!(sent[0].1.data.contains("a***@elsewhere.test"));
}

#[tokio::test]
async fn a_kind_the_domain_administrator_turned_off_is_not_even_queued() {
    let w = world().await;
    let mut sink = SmtpSink::start().await;
    let sender = sender(w.gateway.store(), &sink.addr.to_string());
    with_recovery_address(&w, &sender, &mut sink).await;
    w.gateway.enroll(ALICE).await;
    deliver(&sender, &mut sink).await;
    w.gateway
        .store()
        .set_domain_admin("example.test", ALICE, "test")
        .await
        .expect("admin");

    let (mut browser, csrf) = sign_in(&w).await;
    let page = browser
        .json(
            "POST",
            "/api/v1/domain/notices",
            Some(&csrf),
            r#"{"off": ["app-password-created"]}"#,
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let body: Value = serde_json::from_str(&page.body).expect("json");
    assert_eq!(body["notices"]["app-password-created"], false);
    assert_eq!(body["notices"]["app-password-revoked"], true);
    let card = browser.get("/domain").await;
    assert!(card.body.contains("Security notices"));
    assert!(
        !card
            .body
            .contains(r#"name="app-password-created" value="on" checked"#)
    );
    assert!(
        card.body
            .contains(r#"name="app-password-revoked" value="on" checked"#)
    );

    let page = browser
        .json(
            "POST",
            "/api/v1/account/app-passwords",
            Some(&csrf),
            r#"{"name": "laptop"}"#,
        )
        .await;
    assert_eq!(page.status, StatusCode::CREATED, "{}", page.body);
    let id = serde_json::from_str::<Value>(&page.body).expect("json")["id"]
        .as_i64()
        .expect("id");
    let queued = w.gateway.store().notices_of(ALICE).await.expect("notices");
    assert!(
        queued
            .iter()
            .all(|n| n.notice.kind != NoticeKind::AppPasswordCreated),
        "{queued:?}"
    );
    assert!(deliver(&sender, &mut sink).await.is_empty());

    // Revoking is still told.
    let page = browser
        .json(
            "DELETE",
            &format!("/api/v1/account/app-passwords/{id}"),
            Some(&csrf),
            "",
        )
        .await;
    assert_eq!(page.status, StatusCode::NO_CONTENT, "{}", page.body);
    assert_one_notice(
        &deliver(&sender, &mut sink).await,
        "An application password was revoked",
    );

    // The card's form turns it back on: a ticked box is sent.
    let card = browser.get("/domain").await;
    let fields: Vec<(&str, &str)> = NoticeKind::ALL
        .iter()
        .map(|k| (k.as_str(), "on"))
        .chain([("csrf", csrf.as_str())])
        .collect();
    let page = browser.post("/domain/notices", &fields).await;
    assert_eq!(page.location(), "/domain", "{}", page.body);
    drop(card);
    let domain = w
        .gateway
        .store()
        .domain("example.test")
        .await
        .expect("store")
        .expect("domain");
    assert!(domain.notices_off.is_empty());
}

#[tokio::test]
async fn a_relay_that_is_down_does_not_hold_up_the_change_and_the_notice_is_retried() {
    let w = world().await;
    let mut sink = SmtpSink::start().await;
    let down = sender(w.gateway.store(), &closed_port().await);
    let up = sender(w.gateway.store(), &sink.addr.to_string());
    with_recovery_address(&w, &up, &mut sink).await;
    w.gateway.enroll(ALICE).await;
    deliver(&up, &mut sink).await;

    let (mut browser, csrf) = sign_in(&w).await;
    let page = browser
        .json(
            "POST",
            "/api/v1/account/app-passwords",
            Some(&csrf),
            r#"{"name": "phone"}"#,
        )
        .await;
    // The usual answer: the password, whatever the relay does.
    assert_eq!(page.status, StatusCode::CREATED, "{}", page.body);

    let t = now();
    let pass = down.run_once(t).await.expect("sender");
    assert_eq!((pass.sent, pass.retried, pass.failed), (0, 2, 0));
    let rows = w.gateway.store().notices_of(ALICE).await.expect("notices");
    let pending: Vec<_> = rows.iter().filter(|r| r.state == "queued").collect();
    assert_eq!(pending.len(), 2, "{rows:?}");
    assert!(
        pending
            .iter()
            .all(|r| r.notice.attempts == 1 && r.next_attempt_at > t)
    );
    // Not due yet: the next pass leaves them alone.
    assert_eq!(down.run_once(t).await.expect("sender").retried, 0);
    let metrics = postern::metrics::render();
    assert!(
        metrics.contains(r#"postern_notices_total{kind="app-password-created",result="retried"}"#),
        "{metrics}"
    );

    // The relay is back by the time they are due.
    let pass = up.run_once(t + 61).await.expect("sender");
    assert_eq!(pass.sent, 2);
    let sent = mails(&mut sink).await;
    assert_eq!(sent.len(), 2);
    assert!(
        sent.iter()
            .all(|m| subject(m) == "An application password was created")
    );

    // A relay down for good: given up after the last attempt.
    let page = browser
        .json(
            "POST",
            "/api/v1/account/app-passwords",
            Some(&csrf),
            r#"{"name": "watch"}"#,
        )
        .await;
    assert_eq!(page.status, StatusCode::CREATED, "{}", page.body);
    let mut at = t;
    let mut failed = 0;
    for _ in 0..MAX_ATTEMPTS {
        at += 10_000;
        failed += down.run_once(at).await.expect("sender").failed;
    }
    assert_eq!(failed, 2);
    assert_eq!(up.run_once(at + 10_000).await.expect("sender").sent, 0);
    assert!(mails(&mut sink).await.is_empty());
}

#[tokio::test]
async fn a_user_gets_at_most_ten_notices_an_hour() {
    let w = world().await;
    let mut sink = SmtpSink::start().await;
    let sender = sender(w.gateway.store(), &sink.addr.to_string());
    let store = w.gateway.store();
    let user = store.ensure_user(BOB).await.expect("user");
    for n in 0..NOTICES_PER_HOUR + 3 {
        store
            .create_app_password(
                user.id,
                NewAppPassword {
                    name: format!("device {n}"),
                    lookup: format!("{n:02}"),
                    scopes: "imap".parse().expect("scopes"),
                    expires_at: None,
                    networks: Default::default(),
                },
                "user:bob@example.test",
            )
            .await
            .expect("created all the same");
    }
    let pass = sender.run_once(now()).await.expect("sender");
    assert_eq!(pass.sent, usize::try_from(NOTICES_PER_HOUR).expect("small"));
    assert_eq!(mails(&mut sink).await.len(), pass.sent);
    let metrics = postern::metrics::render();
    assert!(
        metrics.contains(
            r#"postern_notices_total{kind="app-password-created",result="rate-limited"}"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn two_nodes_on_one_store_send_each_notice_once() {
    let w = world().await;
    let other = w.gateway.another_node().await;
    let mut sink = SmtpSink::start().await;
    let addr = sink.addr.to_string();
    let mut expected = 0;
    for n in 0..4 {
        let address = format!("user{n}@example.test");
        let user = w.gateway.store().ensure_user(&address).await.expect("user");
        for d in 0..NOTICES_PER_HOUR {
            w.gateway
                .store()
                .create_app_password(
                    user.id,
                    NewAppPassword {
                        name: format!("device {d}"),
                        lookup: format!("{d:02}"),
                        scopes: "imap".parse().expect("scopes"),
                        expires_at: None,
                        networks: Default::default(),
                    },
                    "test",
                )
                .await
                .expect("created");
            expected += 1;
        }
    }
    let (a, b) = (
        sender(w.gateway.store(), &addr),
        sender(other.store(), &addr),
    );
    let t = now();
    let (pa, pb) = tokio::join!(a.run_once(t), b.run_once(t));
    let (pa, pb) = (pa.expect("node a"), pb.expect("node b"));
    assert_eq!(pa.sent + pb.sent, expected);
    let got = mails(&mut sink).await;
    assert_eq!(got.len(), expected);
    let distinct: BTreeSet<(String, String)> = got
        .iter()
        .map(|m| {
            let line = m
                .data
                .lines()
                .find(|l| l.contains("named \""))
                .unwrap_or_default()
                .to_owned();
            (m.to[0].clone(), line)
        })
        .collect();
    assert_eq!(distinct.len(), expected, "no notice was sent twice");
}
