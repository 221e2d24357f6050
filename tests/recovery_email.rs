//! The recovery e-mail second factor through the router, as a browser and an API
//! client would use it: codes travel through a fake SMTP relay on loopback and
//! are read out of the captured mail, the primary password is checked by a fake
//! IMAP upstream, the store is a real SQLite file.

mod common;

use axum::Router;
use axum::http::StatusCode;
use common::Gateway;
use common::browser::{Browser, Page};
use common::fake_imap::FakeImap;
use common::smtp_sink::SmtpSink;
use postern::policy::DomainStatus;
use postern::store::{AuditFilter, EventKind, FactorKind};
use postern::web::{WebState, router};
use serde_json::Value;
use sqlx::{AssertSqlSafe, Connection};

const ALICE: &str = "alice@example.test";
const DAVE: &str = "dave@forced.test";
/// A mailbox whose name has a letter beyond ASCII.
const JURGEN: &str = "jürgen@example.test";
const RECOVERY: &str = "alice.home@elsewhere.test";
const MASKED: &str = "a***@elsewhere.test";

struct World {
    gateway: Gateway,
    app: Router,
    _fake: FakeImap,
}

/// postern whose `[relay]` is `relay`.
async fn world_with_relay(relay: &str) -> World {
    let fake = FakeImap::start(&[
        (ALICE, "alice-primary"),
        (DAVE, "dave-primary"),
        (JURGEN, "jurgen-primary"),
    ])
    .await;
    let gateway = Gateway::start_imap(fake.addr, "allow_plaintext_auth = true").await;
    gateway.domain("example.test", DomainStatus::Enabled).await;
    gateway.domain("forced.test", DomainStatus::Forced).await;
    let mut config = gateway.config.clone();
    config.relay.smtp = relay.to_owned();
    config.relay.from = "postern@gateway.test".to_owned();
    let state = WebState::from_runtime(&gateway.runtime, &config).expect("web state");
    World {
        app: router(state),
        gateway,
        _fake: fake,
    }
}

async fn world() -> (World, SmtpSink) {
    let sink = SmtpSink::start().await;
    (world_with_relay(&sink.addr.to_string()).await, sink)
}

/// Runs SQL against the gateway's database, as an operator with a shell could.
async fn raw_sql(gateway: &Gateway, sql: &str) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&gateway.config.store.url)
        .await
        .expect("database");
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .expect("sql");
}

/// Gives `user` a confirmed recovery address.
async fn provision(gateway: &Gateway, user: &str) {
    let record = gateway.store().ensure_user(user).await.expect("user");
    gateway
        .store()
        .add_second_factor(record.id, FactorKind::Email, RECOVERY, true, "test")
        .await
        .expect("factor");
}

async fn enrolled(gateway: &Gateway, user: &str) -> bool {
    gateway
        .store()
        .user(user)
        .await
        .expect("store")
        .is_some_and(|u| u.enrolled)
}

async fn login(app: &Router, user: &str, password: &str) -> Browser {
    let mut browser = Browser::new(app);
    let page = browser.password_step(user, password).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    browser
}

/// On the second-step page: asks for an e-mail code.
async fn ask_for_code(browser: &mut Browser) -> Page {
    let form = browser.get("/login/code").await;
    assert_eq!(form.status, StatusCode::OK);
    browser
        .post("/login/email", &[("csrf", &form.csrf())])
        .await
}

/// On the 2-Step page: adds a recovery address.
async fn add_address(browser: &mut Browser, address: &str) -> Page {
    let form = browser.get("/account/two-step").await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    browser
        .post(
            "/account/two-step/email",
            &[("csrf", &form.csrf()), ("address", address)],
        )
        .await
}

async fn confirm_address(browser: &mut Browser, code: &str) -> Page {
    let form = browser.get("/account/two-step").await;
    browser
        .post(
            "/account/two-step/email/confirm",
            &[("csrf", &form.csrf()), ("code", code)],
        )
        .await
}

/// A code of the right shape that is not `code`.
fn other_than(code: &str) -> String {
    if code == "11111111" {
        "22222222".into()
    } else {
        "11111111".into()
    }
}

#[tokio::test]
async fn a_recovery_address_is_added_with_the_code_mailed_to_it() {
    let (w, mut sink) = world().await;
    let mut browser = login(&w.app, ALICE, "alice-primary").await;
    let before = w.gateway.store().last_event_id().await.expect("events");

    let page = add_address(&mut browser, RECOVERY).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body
            .contains(&format!("We sent a code to <strong>{MASKED}</strong>"))
    );
    let mail = sink.next_mail().await;
    assert_eq!(mail.from, "postern@gateway.test");
    assert_eq!(mail.to, vec![RECOVERY.to_owned()]);
    assert!(
        mail.data
            .contains("Subject: Confirm your recovery e-mail address")
    );
    let code = mail.code();
    assert_eq!(code.len(), 8, "{}", mail.data);
    // Sent, not yet confirmed: not enrolled.
    assert!(!enrolled(&w.gateway, ALICE).await);

    let page = confirm_address(&mut browser, &code).await;
    assert_eq!(page.location(), "/account/two-step", "{}", page.body);
    assert!(enrolled(&w.gateway, ALICE).await);
    let page = browser.get("/account/two-step").await;
    assert!(page.body.contains("2-Step Authentication is on."));
    assert!(page.body.contains(&format!("Recovery e-mail {MASKED}")));
    // Live sessions re-check themselves, and the audit log says who did it.
    let events = w
        .gateway
        .store()
        .events_after(before, 100)
        .await
        .expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::UserEnrolled && e.user_address.as_deref() == Some(ALICE)),
        "{events:?}"
    );
    let audit = w
        .gateway
        .store()
        .list_audit(AuditFilter {
            user: Some(ALICE.into()),
            since: None,
            limit: 100,
        })
        .await
        .expect("audit");
    let actions: Vec<&str> = audit.iter().map(|r| r.action.as_str()).collect();
    assert!(actions.contains(&"second_factor.confirm"), "{actions:?}");
    assert!(actions.contains(&"email_code.sent"), "{actions:?}");
    assert!(
        audit.iter().all(|r| !r.detail.contains(&code)),
        "the code is never logged"
    );
}

#[tokio::test]
async fn the_mailbox_itself_cannot_be_its_recovery_address() {
    let (w, mut sink) = world().await;
    let mut browser = login(&w.app, ALICE, "alice-primary").await;
    let page = add_address(&mut browser, ALICE).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.body.contains("outside this mailbox"), "{}", page.body);
    let page = add_address(&mut browser, "not an address").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    // Nor the mailbox spelled in capitals, beyond ASCII too.
    let mut browser = login(&w.app, JURGEN, "jurgen-primary").await;
    let page = add_address(&mut browser, "JÜRGEN@Example.test").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
    assert!(page.body.contains("outside this mailbox"), "{}", page.body);
    assert_eq!(sink.waiting(), 0);
}

#[tokio::test]
async fn a_login_with_password_then_an_e_mail_code() {
    let (w, mut sink) = world().await;
    provision(&w.gateway, ALICE).await;
    let mut browser = login(&w.app, ALICE, "alice-primary").await;

    let form = browser.get("/login/code").await;
    assert!(
        form.body
            .contains(&format!("Send a code to my recovery e-mail ({MASKED})")),
        "{}",
        form.body
    );
    let before = browser.cookie.clone();
    let page = ask_for_code(&mut browser).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body
            .contains(&format!("We sent a code to <strong>{MASKED}</strong>"))
    );
    // Each step rotates the session id.
    assert_ne!(browser.cookie, before);
    let mail = sink.next_mail().await;
    assert_eq!(mail.to, vec![RECOVERY.to_owned()]);
    assert!(mail.data.contains("Subject: Your sign-in code"));

    // Still half logged in: nothing but the second step.
    assert_eq!(browser.get("/account").await.location(), "/login/code");
    assert_eq!(
        browser.get("/account/two-step").await.location(),
        "/login/code"
    );

    let code = mail.code();
    let before = browser.cookie.clone();
    let page = browser.code_step(&code[..4]).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED, "a partial code");
    let spaced = format!("{} {}", &code[..4], &code[4..]);
    let page = browser.code_step(&spaced).await;
    assert_eq!(page.location(), "/account", "{}", page.body);
    assert_ne!(browser.cookie, before);
    assert_eq!(browser.get("/account").await.status, StatusCode::OK);

    // The code works once.
    let mut thief = login(&w.app, ALICE, "alice-primary").await;
    let page = thief.code_step(&code).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(
        page.body.contains("expired or was already used"),
        "{}",
        page.body
    );
    assert_eq!(thief.get("/account").await.location(), "/login/code");
}

#[tokio::test]
async fn an_e_mail_code_older_than_ten_minutes_is_refused() {
    let (w, mut sink) = world().await;
    provision(&w.gateway, ALICE).await;
    let mut browser = login(&w.app, ALICE, "alice-primary").await;
    ask_for_code(&mut browser).await;
    let code = sink.next_mail().await.code();
    raw_sql(
        &w.gateway,
        "UPDATE email_codes SET created_at = created_at - 601",
    )
    .await;
    let page = browser.code_step(&code).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.body.contains("has expired"), "{}", page.body);
    assert_eq!(browser.get("/account").await.location(), "/login/code");

    // A new code (the old one no longer counts against the limit) works.
    ask_for_code(&mut browser).await;
    let code = sink.next_mail().await.code();
    let page = browser.code_step(&code).await;
    assert_eq!(page.location(), "/account", "{}", page.body);
}

#[tokio::test]
async fn five_wrong_guesses_void_a_code() {
    let (w, mut sink) = world().await;
    let mut browser = login(&w.app, ALICE, "alice-primary").await;
    add_address(&mut browser, RECOVERY).await;
    let code = sink.next_mail().await.code();
    let wrong = other_than(&code);
    for left in (1..5).rev() {
        let page = confirm_address(&mut browser, &wrong).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
        assert!(
            page.body.contains(&format!("{left} more tries")),
            "{}",
            page.body
        );
    }
    let page = confirm_address(&mut browser, &wrong).await;
    assert!(page.body.contains("it is now void"), "{}", page.body);
    // The sixth try, with the right code, finds it void.
    let page = confirm_address(&mut browser, &code).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.body.contains("Send a new one"), "{}", page.body);
    assert!(!enrolled(&w.gateway, ALICE).await);
}

#[tokio::test]
async fn a_second_code_within_a_minute_is_refused_with_a_clear_message() {
    let (w, mut sink) = world().await;
    provision(&w.gateway, ALICE).await;
    let mut browser = login(&w.app, ALICE, "alice-primary").await;
    let page = ask_for_code(&mut browser).await;
    assert_eq!(page.status, StatusCode::OK);
    let first = sink.next_mail().await.code();

    let page = ask_for_code(&mut browser).await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        page.body.contains("A code was sent less than a minute ago"),
        "{}",
        page.body
    );
    assert_eq!(sink.waiting(), 0, "no second mail");
    // Another session of the same user is limited as well.
    let mut other = login(&w.app, ALICE, "alice-primary").await;
    assert_eq!(
        ask_for_code(&mut other).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The code that was sent still works.
    let page = browser.code_step(&first).await;
    assert_eq!(page.location(), "/account", "{}", page.body);
}

#[tokio::test]
async fn at_most_five_codes_an_hour() {
    let (w, mut sink) = world().await;
    provision(&w.gateway, ALICE).await;
    let mut browser = login(&w.app, ALICE, "alice-primary").await;
    for _ in 0..5 {
        assert_eq!(ask_for_code(&mut browser).await.status, StatusCode::OK);
        sink.next_mail().await;
        // Past the one-minute spacing, within the hour.
        raw_sql(
            &w.gateway,
            "UPDATE email_codes SET created_at = created_at - 61",
        )
        .await;
    }
    let page = ask_for_code(&mut browser).await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        page.body
            .contains("Too many codes were sent in the last hour"),
        "{}",
        page.body
    );
    assert_eq!(sink.waiting(), 0);
}

#[tokio::test]
async fn a_relay_that_is_down_gives_a_clear_error_and_enrolls_nothing() {
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        listener.local_addr().expect("addr")
    };
    let w = world_with_relay(&closed.to_string()).await;
    let mut browser = login(&w.app, ALICE, "alice-primary").await;
    let page = add_address(&mut browser, RECOVERY).await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        page.body
            .contains("Could not send the code; try again later."),
        "{}",
        page.body
    );
    assert!(!enrolled(&w.gateway, ALICE).await);
    let user = w.gateway.store().user(ALICE).await.unwrap().unwrap();
    let factors = w.gateway.store().second_factors(user.id).await.unwrap();
    assert!(
        factors.iter().all(|f| f.kind != FactorKind::Email),
        "no half-added address is left"
    );
    // The page offers to add an address again, and a retry is not rate limited.
    let page = add_address(&mut browser, RECOVERY).await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);

    // At sign-in: the same message, and the user stays at the second step.
    provision(&w.gateway, DAVE).await;
    let mut dave = login(&w.app, DAVE, "dave-primary").await;
    let page = ask_for_code(&mut dave).await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        page.body.contains("Could not send the code"),
        "{}",
        page.body
    );
    assert_eq!(dave.get("/account").await.location(), "/login/code");
}

fn json(page: &Page) -> Value {
    serde_json::from_str(&page.body).unwrap_or_else(|_| panic!("JSON: {}", page.body))
}

#[tokio::test]
async fn the_json_api_adds_confirms_logs_in_with_and_removes_a_recovery_address() {
    let (w, mut sink) = world().await;
    let mut api = Browser::new(&w.app);
    let session = api.json("GET", "/api/v1/session", None, "").await;
    let csrf = json(&session)["csrf"].as_str().expect("csrf").to_owned();
    let body = format!(r#"{{"address":"{ALICE}","password":"alice-primary"}}"#);
    let page = api.json("POST", "/api/v1/login", Some(&csrf), &body).await;
    let csrf = json(&page)["csrf"].as_str().expect("csrf").to_owned();

    let body = format!(r#"{{"address":"{RECOVERY}"}}"#);
    let page = api
        .json("POST", "/api/v1/account/two-step/email", Some(&csrf), &body)
        .await;
    assert_eq!(page.status, StatusCode::ACCEPTED, "{}", page.body);
    assert_eq!(json(&page)["sent_to"], MASKED);
    let code = sink.next_mail().await.code();
    let page = api.json("GET", "/api/v1/account/two-step", None, "").await;
    assert_eq!(json(&page)["recovery_email"]["confirmed"], false);
    let page = api
        .json(
            "POST",
            "/api/v1/account/two-step/email/confirm",
            Some(&csrf),
            &format!(r#"{{"code":"{}"}}"#, other_than(&code)),
        )
        .await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    let page = api
        .json(
            "POST",
            "/api/v1/account/two-step/email/confirm",
            Some(&csrf),
            &format!(r#"{{"code":"{code}"}}"#),
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(json(&page)["enrolled"], true);
    let page = api.json("GET", "/api/v1/account/two-step", None, "").await;
    assert_eq!(json(&page)["recovery_email"]["address"], MASKED);
    assert_eq!(json(&page)["recovery_email"]["confirmed"], true);

    // Sign in again through the API with an e-mail code.
    let mut phone = Browser::new(&w.app);
    let session = phone.json("GET", "/api/v1/session", None, "").await;
    let csrf2 = json(&session)["csrf"].as_str().expect("csrf").to_owned();
    let body = format!(r#"{{"address":"{ALICE}","password":"alice-primary"}}"#);
    let page = phone
        .json("POST", "/api/v1/login", Some(&csrf2), &body)
        .await;
    assert_eq!(json(&page)["session"]["state"], "second_step");
    let csrf2 = json(&page)["csrf"].as_str().expect("csrf").to_owned();
    let page = phone
        .json("POST", "/api/v1/login/email-code", Some(&csrf2), "")
        .await;
    assert_eq!(page.status, StatusCode::ACCEPTED, "{}", page.body);
    assert_eq!(json(&page)["sent_to"], MASKED);
    let rotated = json(&page)["csrf"].as_str().expect("csrf").to_owned();
    assert_ne!(rotated, csrf2);
    let code = sink.next_mail().await.code();
    let page = phone
        .json(
            "POST",
            "/api/v1/login/code",
            Some(&rotated),
            &format!(r#"{{"code":"{code}"}}"#),
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(json(&page)["session"]["state"], "user");

    // Removing the only factor (the domain allows it) turns 2-Step off.
    let page = api
        .json("DELETE", "/api/v1/account/two-step/email", Some(&csrf), "")
        .await;
    assert_eq!(page.status, StatusCode::NO_CONTENT, "{}", page.body);
    assert!(!enrolled(&w.gateway, ALICE).await);
}

#[tokio::test]
async fn a_forced_user_keeps_the_last_recovery_address() {
    let (w, mut sink) = world().await;
    provision(&w.gateway, DAVE).await;
    let mut api = Browser::new(&w.app);
    let session = api.json("GET", "/api/v1/session", None, "").await;
    let csrf = json(&session)["csrf"].as_str().expect("csrf").to_owned();
    let body = format!(r#"{{"address":"{DAVE}","password":"dave-primary"}}"#);
    let page = api.json("POST", "/api/v1/login", Some(&csrf), &body).await;
    let csrf = json(&page)["csrf"].as_str().expect("csrf").to_owned();
    let page = api
        .json("POST", "/api/v1/login/email-code", Some(&csrf), "")
        .await;
    let csrf = json(&page)["csrf"].as_str().expect("csrf").to_owned();
    let code = sink.next_mail().await.code();
    let page = api
        .json(
            "POST",
            "/api/v1/login/code",
            Some(&csrf),
            &format!(r#"{{"code":"{code}"}}"#),
        )
        .await;
    let csrf = json(&page)["csrf"].as_str().expect("csrf").to_owned();
    let page = api
        .json("DELETE", "/api/v1/account/two-step/email", Some(&csrf), "")
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);
    assert!(
        json(&page)["error"]
            .as_str()
            .unwrap_or("")
            .contains("requires 2-Step"),
        "{}",
        page.body
    );
    assert!(enrolled(&w.gateway, DAVE).await);
}

#[tokio::test]
async fn a_forced_user_may_enroll_with_a_recovery_address() {
    let (w, mut sink) = world().await;
    let mut browser = login(&w.app, DAVE, "dave-primary").await;
    let form = browser.get("/login/enroll").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(
        form.body.contains("Recovery e-mail address"),
        "{}",
        form.body
    );
    let page = browser
        .post(
            "/login/enroll/email",
            &[("csrf", &form.csrf()), ("address", "dave@home.test")],
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body
            .contains("We sent a code to <strong>d***@home.test</strong>")
    );
    let code = sink.next_mail().await.code();
    // Still nothing but the enrollment.
    assert_eq!(browser.get("/account").await.location(), "/login/enroll");

    let before = browser.cookie.clone();
    let page = browser
        .post(
            "/login/enroll/email/confirm",
            &[("csrf", &page.csrf()), ("code", &code)],
        )
        .await;
    assert_eq!(page.location(), "/account/two-step", "{}", page.body);
    assert_ne!(browser.cookie, before);
    assert!(enrolled(&w.gateway, DAVE).await);
    assert_eq!(browser.get("/account").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_mailed_code_re_authenticates_before_a_sensitive_action() {
    let (w, mut sink) = world().await;
    // Signed in with the password alone, then enrolled with a recovery address.
    let mut browser = login(&w.app, ALICE, "alice-primary").await;
    provision(&w.gateway, ALICE).await;
    let page = browser.get("/account/app-passwords").await;
    let create = [
        ("csrf", page.csrf()),
        ("name", "laptop".into()),
        ("imap", "on".into()),
    ];
    let create: Vec<(&str, &str)> = create.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let asked = browser.post("/account/app-passwords", &create).await;
    assert_eq!(asked.status, StatusCode::FORBIDDEN);
    assert!(
        asked
            .body
            .contains(&format!("Send a code to my recovery e-mail ({MASKED})")),
        "{}",
        asked.body
    );
    let sent = browser
        .post(
            "/account/reauthenticate/email",
            &[("csrf", &page.csrf()), ("next", "/account/app-passwords")],
        )
        .await;
    assert!(
        sent.body
            .contains(&format!("We sent a code to <strong>{MASKED}</strong>")),
        "{}",
        sent.body
    );
    let code = sink.next_mail().await.code();
    let confirmed = browser
        .post(
            "/account/reauthenticate",
            &[
                ("csrf", &page.csrf()),
                ("secret", &code),
                ("next", "/account/app-passwords"),
            ],
        )
        .await;
    assert_eq!(
        confirmed.location(),
        "/account/app-passwords",
        "{}",
        confirmed.body
    );
    let created = browser.post("/account/app-passwords", &create).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
}
