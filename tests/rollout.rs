//! A Forced roll-out scheduled for a date: the switch happens by itself at
//! that instant (live password sessions dropped, new ones refused), and the
//! users without 2-Step are mailed the notice and the reminder once each.

mod common;

use std::sync::Arc;

use common::fake_imap::FakeImap;
use common::smtp_sink::{ReceivedMail, SmtpSink};
use common::{Gateway, LineClient, connect};
use postern::clock::unix_now;
use postern::config::RelayConfig;
use postern::policy::{DomainStatus, Protocol, ROLLOUT_REMINDER_SECS};
use postern::recovery_mail::RecoveryMailer;
use postern::rollout::{PassReport, RETRY_SECS, RolloutMailer, format_date};
use tokio::net::TcpStream;

const IVY: &str = "ivy@rollout.test";
const HENRY: &str = "henry@rollout.test";

async fn setup() -> (FakeImap, Gateway) {
    let fake = FakeImap::start(&[(IVY, "ivy-primary"), (HENRY, "henry-primary")]).await;
    let gateway = Gateway::start_imap(fake.addr, "allow_plaintext_auth = true").await;
    gateway.domain("rollout.test", DomainStatus::Enabled).await;
    (fake, gateway)
}

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

async fn session(gateway: &Gateway, user: &str, password: &str) -> LineClient<TcpStream> {
    let (reply, mut client) = try_login(gateway, user, password).await;
    assert!(reply.starts_with("a OK"), "{reply}");
    // A round trip through the relay: the session is registered by now.
    client.send(b"b NOOP\r\n").await;
    client.until("b OK").await;
    client
}

#[tokio::test]
async fn on_the_date_a_password_session_without_2_step_is_dropped_and_logins_refused() {
    let (_fake, gateway) = setup().await;
    gateway.enroll(HENRY).await;
    let (_, henrys) = gateway.app_password(HENRY, "imap", None).await;
    let mut ivy = session(&gateway, IVY, "ivy-primary").await;
    let mut henry = session(&gateway, HENRY, &henrys).await;

    // Two seconds ahead: the session learns its deadline from the event and
    // nothing else is stored at the instant itself.
    let at = unix_now() + 2;
    gateway
        .store()
        .schedule_forced("rollout.test", at, "test")
        .await
        .unwrap();
    // Before the date ivy's password still works for a new login.
    let (reply, _early) = try_login(&gateway, IVY, "ivy-primary").await;
    if unix_now() < at {
        assert!(reply.starts_with("a OK"), "{reply}");
    }

    let line = ivy.line().await;
    assert!(
        line.starts_with("* BYE [ALERT] ") && line.contains("requires 2-Step Authentication"),
        "{line:?}"
    );
    assert!(ivy.closed().await);
    assert!(unix_now() >= at, "dropped before the date");

    let (reply, _) = try_login(&gateway, IVY, "ivy-primary").await;
    assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    // The app-password session of an enrolled user goes on.
    henry.send(b"z NOOP\r\n").await;
    assert_eq!(henry.line().await, "z OK NOOP completed\r\n");
}

/// Scheduled through one node, the switch happens on another by itself: a
/// password session there is dropped at the date, its new logins refused.
#[tokio::test]
async fn the_switch_happens_on_every_node() {
    let (_fake, gateway) = setup().await;
    let other = gateway.another_node().await;
    let mut ivy = session(&other, IVY, "ivy-primary").await;
    let at = unix_now() + 2;
    gateway
        .store()
        .schedule_forced("rollout.test", at, "test")
        .await
        .unwrap();
    let line = ivy.line().await;
    assert!(
        line.starts_with("* BYE [ALERT] ") && line.contains("requires 2-Step Authentication"),
        "{line:?}"
    );
    assert!(ivy.closed().await);
    assert!(unix_now() >= at, "dropped before the date");
    for node in [&other, &gateway] {
        let (reply, _) = try_login(node, IVY, "ivy-primary").await;
        assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    }
}

fn relay(addr: std::net::SocketAddr) -> RecoveryMailer {
    RecoveryMailer::from_config(&RelayConfig {
        smtp: addr.to_string(),
        from: "postern@rollout.test".into(),
    })
    .expect("relay")
}

fn mailer(gateway: &Gateway, relay: RecoveryMailer) -> RolloutMailer {
    RolloutMailer::new(
        gateway.store().clone(),
        relay,
        Some("https://mail.rollout.test/".into()),
        Arc::default(),
    )
}

/// The text as a reader sees it (folded headers and quoted-printable soft
/// breaks joined).
fn text(mail: &ReceivedMail) -> String {
    mail.data.replace("\r\n ", " ").replace("=\r\n", "")
}

#[tokio::test]
async fn users_without_2_step_get_the_notice_and_the_reminder_once() {
    let (_fake, gateway) = setup().await;
    let mut sink = SmtpSink::start().await;
    let store = gateway.store();
    store.ensure_user(IVY).await.unwrap();
    gateway.enroll(HENRY).await;
    store
        .set_user_disabled("gone@rollout.test", true, "test")
        .await
        .unwrap();
    let now = unix_now();
    let at = now + 10 * 86_400;
    store
        .schedule_forced("rollout.test", at, "user:henry@rollout.test")
        .await
        .unwrap();

    // The relay is down: the failure is kept for later, nothing is lost.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let report = mailer(&gateway, relay(dead)).run_once(now).await.unwrap();
    assert_eq!(report, PassReport { sent: 0, failed: 1 });
    let node = mailer(&gateway, relay(sink.addr));
    // Not before its retry time, then once.
    assert_eq!(node.run_once(now + 1).await.unwrap(), PassReport::default());
    let retry = now + RETRY_SECS;
    assert_eq!(node.run_once(retry).await.unwrap().sent, 1);
    let notice = sink.next_mail().await;
    assert_eq!(notice.to, [IVY]);
    let body = text(&notice);
    let date = format_date(at);
    assert!(
        body.contains(&format!(
            "Subject: 2-Step Authentication will be required from {date}"
        )),
        "{body}"
    );
    for step in [
        "Sign in at https://mail.rollout.test/ with your address ivy@rollout.test",
        "Turn on 2-Step Authentication",
        "create one for each device or mail app",
    ] {
        assert!(body.contains(step), "{step:?} missing: {body}");
    }
    // Another node, or a restart, sends nothing more.
    let second_node = mailer(&gateway, relay(sink.addr));
    for when in [retry + 1, retry + 86_400] {
        assert_eq!(
            second_node.run_once(when).await.unwrap(),
            PassReport::default()
        );
    }

    // The reminder, once, three days before the date.
    let window = at - ROLLOUT_REMINDER_SECS;
    assert_eq!(second_node.run_once(window).await.unwrap().sent, 1);
    let reminder = sink.next_mail().await;
    assert_eq!(reminder.to, [IVY]);
    assert!(
        text(&reminder).contains(&format!(
            "Subject: Reminder: 2-Step Authentication is required from {date}"
        )),
        "{}",
        text(&reminder)
    );
    assert_eq!(
        node.run_once(window + 60).await.unwrap(),
        PassReport::default()
    );
    // Neither the enrolled nor the disabled user got anything.
    assert_eq!(sink.waiting(), 0);

    // The audit log names every mail.
    let actions: Vec<String> = store
        .list_audit(postern::store::AuditFilter {
            user: None,
            since: None,
            limit: 100,
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.target == IVY)
        .map(|r| r.action)
        .collect();
    assert_eq!(actions, ["rollout.reminder", "rollout.notice"]);
}

#[tokio::test]
async fn a_user_first_seen_in_the_last_days_gets_one_notice_and_no_reminder() {
    let (_fake, gateway) = setup().await;
    let mut sink = SmtpSink::start().await;
    let now = unix_now();
    let at = now + ROLLOUT_REMINDER_SECS - 3_600;
    gateway
        .store()
        .schedule_forced("rollout.test", at, "test")
        .await
        .unwrap();
    gateway.store().ensure_user(IVY).await.unwrap();
    let node = mailer(&gateway, relay(sink.addr));
    assert_eq!(node.run_once(now).await.unwrap().sent, 1);
    assert!(text(&sink.next_mail().await).contains("will be required from"));
    assert_eq!(
        node.run_once(now + 60).await.unwrap(),
        PassReport::default()
    );
    // Once the date has come nothing more is sent.
    assert_eq!(node.run_once(at).await.unwrap(), PassReport::default());
    assert_eq!(sink.waiting(), 0);
}

/// The domain administrator schedules, reads, moves and cancels a roll-out
/// through the JSON API.
#[tokio::test]
async fn the_api_schedules_shows_and_cancels_a_roll_out() {
    use axum::http::StatusCode;
    use common::browser::{Browser, between};
    let (_fake, gateway) = setup().await;
    let store = gateway.store();
    store
        .set_domain_admin("rollout.test", HENRY, "test")
        .await
        .unwrap();
    store.ensure_user(IVY).await.unwrap();
    let app = postern::web::router(
        postern::web::WebState::from_runtime(&gateway.runtime, &gateway.config).expect("web"),
    );
    let mut api = Browser::new(&app);
    let session = api.json("GET", "/api/v1/session", None, "").await;
    let csrf = between(&session.body, "\"csrf\":\"", "\"");
    let login = api
        .json(
            "POST",
            "/api/v1/login",
            Some(&csrf),
            &format!(r#"{{"address":"{HENRY}","password":"henry-primary"}}"#),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let csrf = between(&login.body, "\"csrf\":\"", "\"");
    const STATUS: &str = "/api/v1/domain/two-step";
    for bad in [
        r#"{"status":"forced","forced_from":"2001-01-01"}"#,
        r#"{"status":"forced","forced_from":"next week"}"#,
        r#"{"status":"enabled","forced_from":"2099-01-01"}"#,
    ] {
        let page = api.json("POST", STATUS, Some(&csrf), bad).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{bad}: {}", page.body);
    }
    assert_eq!(
        store.domain("rollout.test").await.unwrap().unwrap().status,
        DomainStatus::Enabled,
        "a refused date changes nothing"
    );
    let in_a_week = time::OffsetDateTime::now_utc().date() + time::Duration::days(7);
    let day = in_a_week.to_string();
    let at = in_a_week.midnight().assume_utc().unix_timestamp();
    let body = format!(r#"{{"status":"forced","forced_from":"{day}"}}"#);
    let page = api.json("POST", STATUS, Some(&csrf), &body).await;
    assert_eq!(page.status, StatusCode::NO_CONTENT, "{}", page.body);
    // This node's mailer is woken at once for the notices.
    tokio::time::timeout(
        std::time::Duration::from_secs(1),
        gateway.runtime.rollout_wake.notified(),
    )
    .await
    .expect("the roll-out mailer is woken");

    let card = api.json("GET", "/api/v1/domain", None, "").await;
    let card: serde_json::Value = serde_json::from_str(&card.body).unwrap();
    assert_eq!(card["domain"]["forced_from"], at);
    assert_eq!(card["domain"]["effective_status"], "forced");
    assert_eq!(card["enrolled_users"], 0);
    assert_eq!(card["not_enrolled_users"], 2);
    let mine = api.json("GET", "/api/v1/account/two-step", None, "").await;
    let mine: serde_json::Value = serde_json::from_str(&mine.body).unwrap();
    assert_eq!(mine["forced_from"], at);

    const CANCEL: &str = "/api/v1/domain/two-step/forced-from";
    let page = api.json("DELETE", CANCEL, Some(&csrf), "").await;
    assert_eq!(page.status, StatusCode::NO_CONTENT, "{}", page.body);
    let d = store.domain("rollout.test").await.unwrap().unwrap();
    assert_eq!((d.status, d.grace_until), (DomainStatus::Enabled, None));
    let page = api.json("DELETE", CANCEL, Some(&csrf), "").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);

    let actions: Vec<(String, String)> = store
        .list_audit(postern::store::AuditFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action.starts_with("domain.schedule"))
        .map(|r| (r.action, r.actor))
        .collect();
    let henry = format!("user:{HENRY}");
    assert_eq!(
        actions,
        [
            ("domain.schedule_cancel".to_owned(), henry.clone()),
            ("domain.schedule_forced".to_owned(), henry),
        ]
    );
}
