//! The web UI and API through the router, as a browser would use them: a fake IMAP
//! upstream checks primary passwords, the store is a real SQLite file.

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::browser::{Browser, CLIENT, between};
use common::fake_imap::FakeImap;
use common::{Gateway, connect};
use postern::credentials::{CanonicalAppPassword, totp};
use postern::policy::{DomainStatus, Protocol};
use postern::store::{AuditFilter, FactorKind};
use postern::web::{WebState, router};

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";
const DAVE: &str = "dave@forced.test";
/// The secret `Gateway::enroll` provisions.
const SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
struct World {
    fake: FakeImap,
    gateway: Gateway,
    app: Router,
}

async fn world() -> World {
    let fake = FakeImap::start(&[
        (ALICE, "alice-primary"),
        (BOB, "bob-primary"),
        (DAVE, "dave-primary"),
    ])
    .await;
    let gateway = Gateway::start_imap(fake.addr, "allow_plaintext_auth = true").await;
    gateway.domain("example.test", DomainStatus::Enabled).await;
    gateway.domain("forced.test", DomainStatus::Forced).await;
    let state = WebState::from_runtime(&gateway.runtime, &gateway.config).expect("web state");
    World {
        app: router(state),
        fake,
        gateway,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A code for the step after the current one, so a test never collides with
/// another use of the same step.
fn code_now() -> String {
    totp::code_at(SECRET, now()).expect("code")
}

#[tokio::test]
async fn a_wrong_primary_password_is_refused_by_the_upstream() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    let page = browser.password_step(ALICE, "not-it").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.body.contains("Wrong address or password"));
    assert_eq!(w.fake.refused(), 1);
    // Not logged in.
    assert_eq!(browser.get("/account").await.location(), "/login");
    // And a refused address leaves no user behind (none is listed for the domain).
    let stored = w.gateway.store().user(ALICE).await.expect("store");
    assert!(stored.is_none(), "{stored:?}");
}

#[tokio::test]
async fn a_wrong_web_password_delays_that_client_like_a_wrong_mail_password() {
    let w = world().await;
    let client: std::net::IpAddr = CLIENT.parse::<std::net::SocketAddr>().expect("addr").ip();
    assert!(w.gateway.runtime.penalties.delay(client).await.is_zero());
    let mut browser = Browser::new(&w.app);
    let page = browser.password_step(ALICE, "not-it").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    // The next answer to this client, on the web or a mail port, waits.
    assert_eq!(
        w.gateway.runtime.penalties.delay(client).await,
        postern::penalty::BASE_DELAY
    );
    // And it counts toward the account's block, which every node shares.
    let failures = w
        .gateway
        .store()
        .login_failures(ALICE)
        .await
        .expect("store");
    assert_eq!(failures.count, 1);
}

#[tokio::test]
async fn a_blocked_account_cannot_sign_in_on_the_web_and_upstream_is_not_asked() {
    let w = world().await;
    // An attacker used up the account's failures on the mail ports of any node.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    w.gateway.store().ensure_user(ALICE).await.expect("user");
    for _ in 0..postern::penalty::BLOCK_AFTER {
        w.gateway
            .store()
            .count_login_failure(ALICE, now, postern::penalty::forget_failures_before(now))
            .await
            .expect("count");
    }
    let mut browser = Browser::new(&w.app);
    let page = browser.password_step(ALICE, "alice-primary").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.body.contains("Wrong address or password"));
    assert!(w.fake.logins().is_empty(), "{:?}", w.fake.logins());
    assert_eq!(w.fake.refused(), 0);
    assert_eq!(browser.get("/account").await.location(), "/login");
}

#[tokio::test]
async fn an_enrolled_user_needs_a_totp_code_and_a_code_works_once() {
    let w = world().await;
    w.gateway.enroll(ALICE).await;
    let mut browser = Browser::new(&w.app);
    browser.get("/login").await;
    let anonymous_cookie = browser.cookie.clone();
    let page = browser.password_step(ALICE, "alice-primary").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location(), "/login/code");
    // The upstream verified the password (and postern logged out again).
    assert_eq!(w.fake.logins(), vec![ALICE]);
    // The session id changed with the login step.
    assert_ne!(browser.cookie, anonymous_cookie);

    // Half logged in: nothing but the second step.
    for path in [
        "/account",
        "/account/app-passwords",
        "/account/two-step",
        "/domain",
    ] {
        let page = browser.get(path).await;
        assert_eq!(page.location(), "/login/code", "{path}");
    }
    let api = browser
        .json("GET", "/api/v1/account/app-passwords", None, "")
        .await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);

    let code = code_now();
    let before = browser.cookie.clone();
    let page = browser.code_step(&code).await;
    assert_eq!(page.location(), "/account", "{}", page.body);
    assert_ne!(browser.cookie, before);
    let account = browser.get("/account").await;
    assert_eq!(account.status, StatusCode::OK);
    assert!(account.body.contains(ALICE));

    // Someone who saw the code cannot use it again.
    let mut thief = Browser::new(&w.app);
    thief.password_step(ALICE, "alice-primary").await;
    let page = thief.code_step(&code).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(page.body.contains("already used"), "{}", page.body);
    assert_eq!(thief.get("/account").await.location(), "/login/code");
}

#[tokio::test]
async fn five_wrong_codes_lock_the_second_step() {
    let w = world().await;
    w.gateway.enroll(ALICE).await;
    let mut browser = Browser::new(&w.app);
    browser.password_step(ALICE, "alice-primary").await;
    for _ in 0..5 {
        let page = browser.code_step("000000").await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    }
    // Even the right code is refused now.
    let page = browser.code_step(&code_now()).await;
    assert!(page.body.contains("Too many wrong codes"), "{}", page.body);
    assert_eq!(browser.get("/account").await.location(), "/login/code");
}

#[tokio::test]
async fn a_backup_code_works_once_as_the_second_step() {
    let w = world().await;
    w.gateway.enroll(ALICE).await;
    let mut browser = Browser::new(&w.app);
    browser.password_step(ALICE, "alice-primary").await;
    browser.code_step(&code_now()).await;
    let page = browser.get("/account/two-step").await;
    let csrf = page.csrf();
    let codes = browser
        .post("/account/two-step/backup-codes", &[("csrf", &csrf)])
        .await;
    assert_eq!(codes.status, StatusCode::OK);
    assert_eq!(codes.headers[header::CACHE_CONTROL], "no-store");
    let first = between(&codes.body, "<ul class=\"codes\"><li>", "</li>");
    assert_eq!(first.len(), 11, "{first}");

    let mut phone_lost = Browser::new(&w.app);
    phone_lost.password_step(ALICE, "alice-primary").await;
    let page = phone_lost.code_step(&first.to_uppercase()).await;
    assert_eq!(page.location(), "/account", "{}", page.body);

    let mut again = Browser::new(&w.app);
    again.password_step(ALICE, "alice-primary").await;
    let page = again.code_step(&first).await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_forced_user_must_enroll_before_anything_else() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    let page = browser.password_step(DAVE, "dave-primary").await;
    assert_eq!(page.location(), "/login/enroll");
    assert_eq!(browser.get("/account").await.location(), "/login/enroll");
    assert_eq!(
        browser.get("/account/app-passwords").await.location(),
        "/login/enroll"
    );

    let page = browser.get("/login/enroll").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("<svg"), "QR code inline");
    assert!(page.body.contains("otpauth") || page.body.contains("Key:"));
    let secret: String = page.secret().split_whitespace().collect();
    // The same pending secret on a reload: the QR code a user scanned stays valid.
    let again: String = browser
        .get("/login/enroll")
        .await
        .secret()
        .split_whitespace()
        .collect();
    assert_eq!(secret, again);

    let code = totp::code_at(&secret, now()).expect("code");
    let page = browser
        .post("/login/enroll", &[("csrf", &page.csrf()), ("code", &code)])
        .await;
    assert_eq!(page.location(), "/account/two-step", "{}", page.body);
    let user = w.gateway.store().user(DAVE).await.unwrap().unwrap();
    assert!(user.enrolled);
    assert_eq!(browser.get("/account").await.status, StatusCode::OK);
}

/// The app passwords a user has, as stored.
async fn app_password_count(w: &World, address: &str) -> usize {
    let store = w.gateway.store();
    let user = store.user(address).await.unwrap().unwrap();
    store.list_app_passwords(user.id).await.unwrap().len()
}

#[tokio::test]
async fn forcing_a_domain_binds_web_sessions_opened_before_it() {
    let w = world().await;
    // Bob, not enrolled, signs in while his domain is Enabled: in a browser, and
    // through the JSON API.
    let mut browser = Browser::new(&w.app);
    assert_eq!(
        browser.password_step(BOB, "bob-primary").await.location(),
        "/account"
    );
    let page = browser.get("/account/app-passwords").await;
    assert_eq!(page.status, StatusCode::OK);
    let csrf = page.csrf();
    let mut api = Browser::new(&w.app);
    let session = api.json("GET", "/api/v1/session", None, "").await;
    let token = between(&session.body, "\"csrf\":\"", "\"");
    let login = api
        .json(
            "POST",
            "/api/v1/login",
            Some(&token),
            &format!(r#"{{"address":"{BOB}","password":"bob-primary"}}"#),
        )
        .await;
    assert!(login.body.contains("\"state\":\"user\""), "{}", login.body);
    let token = between(&login.body, "\"csrf\":\"", "\"");

    // The domain administrator (here the CLI's store path) forces 2-Step.
    w.gateway
        .store()
        .set_domain_status("example.test", DomainStatus::Forced, None, "test")
        .await
        .unwrap();

    // The same cookie may now do nothing but enroll.
    for path in [
        "/account",
        "/account/app-passwords",
        "/account/two-step",
        "/",
    ] {
        assert_eq!(
            browser.get(path).await.location(),
            "/login/enroll",
            "{path}"
        );
    }
    let refused = browser
        .post(
            "/account/app-passwords",
            &[("csrf", &csrf), ("name", "laptop"), ("imap", "on")],
        )
        .await;
    assert_eq!(refused.location(), "/login/enroll");
    let listed = api
        .json("GET", "/api/v1/account/app-passwords", None, "")
        .await;
    assert_eq!(listed.status, StatusCode::FORBIDDEN);
    assert!(listed.body.contains("\"error\":"), "{}", listed.body);
    let created = api
        .json(
            "POST",
            "/api/v1/account/app-passwords",
            Some(&token),
            r#"{"name":"phone"}"#,
        )
        .await;
    assert_eq!(created.status, StatusCode::FORBIDDEN, "{}", created.body);
    assert_eq!(app_password_count(&w, BOB).await, 0);
    let session = api.json("GET", "/api/v1/session", None, "").await;
    assert!(
        session.body.contains("\"state\":\"must_enroll\""),
        "{}",
        session.body
    );

    // Enrolling is what it may do; after it, everything works again.
    let page = browser.get("/login/enroll").await;
    assert_eq!(page.status, StatusCode::OK);
    let secret: String = page.secret().split_whitespace().collect();
    let code = totp::code_at(&secret, now()).expect("code");
    let done = browser
        .post("/login/enroll", &[("csrf", &page.csrf()), ("code", &code)])
        .await;
    assert_eq!(done.location(), "/account/two-step", "{}", done.body);
    let page = browser.get("/account/app-passwords").await;
    assert_eq!(page.status, StatusCode::OK);
    let listed = api
        .json("GET", "/api/v1/account/app-passwords", None, "")
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let created = browser
        .post(
            "/account/app-passwords",
            &[("csrf", &page.csrf()), ("name", "laptop"), ("imap", "on")],
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    assert_eq!(app_password_count(&w, BOB).await, 1);
}

#[tokio::test]
async fn the_end_of_a_grace_period_binds_web_sessions_opened_during_it() {
    let w = world().await;
    let store = w.gateway.store();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    store
        .set_domain_status(
            "example.test",
            DomainStatus::Forced,
            Some(now + 3600),
            "test",
        )
        .await
        .unwrap();
    let mut browser = Browser::new(&w.app);
    // In the grace period: signed in, not enrolled, full access.
    assert_eq!(
        browser.password_step(BOB, "bob-primary").await.location(),
        "/account"
    );
    assert_eq!(
        browser.get("/account/app-passwords").await.status,
        StatusCode::OK
    );
    // The grace period ends (here: the administrator shortens it).
    store
        .set_domain_status("example.test", DomainStatus::Forced, Some(now - 1), "test")
        .await
        .unwrap();
    assert_eq!(
        browser.get("/account/app-passwords").await.location(),
        "/login/enroll"
    );
}

#[tokio::test]
async fn enrolling_from_the_account_page_needs_a_confirming_code() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    let page = browser.password_step(BOB, "bob-primary").await;
    assert_eq!(page.location(), "/account");
    let page = browser.get("/account/two-step").await;
    let secret: String = page.secret().split_whitespace().collect();
    let user = w.gateway.store().user(BOB).await.unwrap().unwrap();
    let factors = w.gateway.store().second_factors(user.id).await.unwrap();
    assert_eq!(factors.len(), 1);
    assert_eq!(factors[0].kind, FactorKind::Totp);
    assert!(!factors[0].confirmed, "not counted before a code");
    assert!(!user.enrolled);

    let wrong = browser
        .post(
            "/account/two-step/confirm",
            &[("csrf", &page.csrf()), ("code", "123456")],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    let code = totp::code_at(&secret, now()).expect("code");
    let ok = browser
        .post(
            "/account/two-step/confirm",
            &[("csrf", &page.csrf()), ("code", &code)],
        )
        .await;
    assert_eq!(ok.location(), "/account/two-step");
    assert!(w.gateway.store().user(BOB).await.unwrap().unwrap().enrolled);

    // Enabled (not Forced): the user may turn it off again.
    let page = browser.get("/account/two-step").await;
    assert!(page.body.contains("Turn off"));
    browser
        .post("/account/two-step/off", &[("csrf", &page.csrf())])
        .await;
    assert!(!w.gateway.store().user(BOB).await.unwrap().unwrap().enrolled);
}

#[tokio::test]
async fn posts_without_the_csrf_token_are_refused() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    // No session at all.
    let page = browser
        .post(
            "/login",
            &[("address", ALICE), ("password", "alice-primary")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    // A session, but no or a wrong token.
    browser.get("/login").await;
    let page = browser
        .post(
            "/login",
            &[("address", ALICE), ("password", "alice-primary")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let page = browser
        .post(
            "/login",
            &[
                ("csrf", "0000"),
                ("address", ALICE),
                ("password", "alice-primary"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(w.fake.logins().is_empty(), "the upstream was never asked");

    browser.password_step(ALICE, "alice-primary").await;
    let page = browser
        .post("/account/app-passwords", &[("name", "x"), ("imap", "on")])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let page = browser
        .json(
            "POST",
            "/api/v1/account/app-passwords",
            None,
            r#"{"name":"x"}"#,
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let user = w.gateway.store().user(ALICE).await.unwrap().unwrap();
    assert!(
        w.gateway
            .store()
            .list_app_passwords(user.id)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn an_app_password_made_on_the_web_logs_in_to_imap_and_revoking_ends_it() {
    let w = world().await;
    w.gateway.enroll(ALICE).await;
    let mut browser = Browser::new(&w.app);
    browser.password_step(ALICE, "alice-primary").await;
    browser.code_step(&code_now()).await;
    let page = browser.get("/account/app-passwords").await;
    let created = browser
        .post(
            "/account/app-passwords",
            &[
                ("csrf", &page.csrf()),
                ("name", "Thunderbird"),
                ("imap", "on"),
                ("smtp", "on"),
                ("expires_days", "30"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    assert_eq!(created.headers[header::CACHE_CONTROL], "no-store");
    assert!(created.body.contains("Thunderbird") && created.body.contains("Outlook"));
    let password = created.secret();

    let user = w.gateway.store().user(ALICE).await.unwrap().unwrap();
    let canonical = CanonicalAppPassword::parse(&password).expect("app password form");
    let record = w
        .gateway
        .store()
        .app_password_by_lookup(user.id, &canonical.lookup_key(&w.gateway.key, ALICE))
        .await
        .unwrap()
        .expect("stored under its keyed lookup");
    assert_eq!(record.name, "Thunderbird");
    assert_eq!(record.scopes.to_string(), "imap,smtp");
    assert!(record.expires_at.is_some());

    // A mail client uses it through the gateway.
    let mut client = connect(w.gateway.addr(Protocol::Imap, false)).await;
    client.line().await;
    client
        .send(format!("a LOGIN \"{ALICE}\" \"{}\"\r\n", password.to_uppercase()).as_bytes())
        .await;
    let reply = client.until("a ").await.concat();
    assert!(reply.starts_with("a OK"), "{reply}");
    assert!(w.fake.logins().contains(&format!("{ALICE} via proxy")));

    // It is listed, and revoking it drops the live session.
    let list = browser.get("/account/app-passwords").await;
    assert!(list.body.contains("Thunderbird"));
    let path = format!("/account/app-passwords/{}/revoke", record.id);
    // The button asks first: one unconfirmed POST revokes nothing.
    let ask = browser.post(&path, &[("csrf", &list.csrf())]).await;
    assert_eq!(ask.status, StatusCode::OK);
    assert!(ask.body.contains("Revoke Thunderbird"), "{}", ask.body);
    assert_eq!(app_password_count(&w, ALICE).await, 1);
    let revoke = browser
        .post(&path, &[("csrf", &ask.csrf()), ("confirm", "yes")])
        .await;
    assert_eq!(revoke.location(), "/account/app-passwords");
    let bye = client.until("* BYE").await.concat();
    assert!(bye.contains("BYE"), "{bye}");
}

async fn hash(password: &str) -> String {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .expect("hash")
        .to_string()
}

#[tokio::test]
async fn a_domain_administrator_forces_2_step_only_once_the_feature_is_on() {
    let w = world().await;
    let store = w.gateway.store();
    store
        .set_domain_admin("example.test", ALICE, "test")
        .await
        .unwrap();
    let mut browser = Browser::new(&w.app);
    browser.password_step(ALICE, "alice-primary").await;
    let page = browser.get("/domain").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("disconnects third-party clients"));
    assert!(page.body.contains(BOB) || page.body.contains(ALICE));

    let ask = browser
        .post(
            "/domain/two-step",
            &[
                ("csrf", &page.csrf()),
                ("status", "forced"),
                ("grace_days", ""),
            ],
        )
        .await;
    // Forcing asks for a confirmation first, and changes nothing until then.
    assert_eq!(ask.status, StatusCode::OK);
    assert!(
        ask.body.contains("Force 2-Step Authentication"),
        "{}",
        ask.body
    );
    let domain = store.domain("example.test").await.unwrap().unwrap();
    assert_eq!(domain.status, DomainStatus::Enabled);
    let forced = browser
        .post(
            "/domain/two-step",
            &[
                ("csrf", &ask.csrf()),
                ("status", "forced"),
                ("grace_days", ""),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(forced.location(), "/domain");
    let domain = store.domain("example.test").await.unwrap().unwrap();
    assert_eq!(domain.status, DomainStatus::Forced);

    store
        .set_domain_feature("example.test", false, "test")
        .await
        .unwrap();
    let page = browser.get("/domain").await;
    assert!(page.body.contains("has not turned on"));
    let refused = browser
        .post(
            "/domain/two-step",
            &[("csrf", &page.csrf()), ("status", "enabled")],
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    // A user who is not an administrator gets nowhere.
    let mut bob = Browser::new(&w.app);
    bob.password_step(BOB, "bob-primary").await;
    assert_eq!(bob.get("/domain").await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_system_administrator_switches_the_feature_and_impersonation_is_audited() {
    let w = world().await;
    let store = w.gateway.store();
    store
        .add_sysadmin("root", &hash("root-secret").await, "test")
        .await
        .unwrap();
    let mut admin = Browser::new(&w.app);
    let form = admin.get("/admin/login").await;
    let wrong = admin
        .post(
            "/admin/login",
            &[
                ("csrf", &form.csrf()),
                ("name", "root"),
                ("password", "nope"),
            ],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let ok = admin
        .post(
            "/admin/login",
            &[
                ("csrf", &form.csrf()),
                ("name", "root"),
                ("password", "root-secret"),
            ],
        )
        .await;
    assert_eq!(ok.location(), "/admin");

    let console = admin.get("/admin").await;
    let csrf = console.csrf();
    admin
        .post("/admin/domains", &[("csrf", &csrf), ("domain", "new.test")])
        .await;
    assert!(!store.domain("new.test").await.unwrap().unwrap().feature);
    admin
        .post(
            "/admin/domains/new.test/feature",
            &[("csrf", &csrf), ("on", "on")],
        )
        .await;
    assert!(store.domain("new.test").await.unwrap().unwrap().feature);
    admin
        .post(
            "/admin/domains/new.test/admins",
            &[("csrf", &csrf), ("address", "boss@new.test")],
        )
        .await;
    let detail = admin.get("/admin/domains/new.test").await;
    assert!(detail.body.contains("boss@new.test"));

    let page = admin
        .post(
            "/admin/impersonate",
            &[("csrf", &csrf), ("address", "boss@new.test")],
        )
        .await;
    assert_eq!(page.location(), "/domain");
    let domain_page = admin.get("/domain").await;
    assert_eq!(domain_page.status, StatusCode::OK, "{}", domain_page.body);
    assert!(domain_page.body.contains("acting as"));

    let audit = store
        .list_audit(AuditFilter {
            user: Some("boss@new.test".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let row = audit
        .iter()
        .find(|r| r.action == "impersonate")
        .expect("audited");
    assert_eq!(row.actor, "sysadmin:root");
    assert_eq!(row.ip.as_deref(), Some("192.0.2.7"));

    // What the impersonator changes is attributed to them.
    let forced = admin
        .post(
            "/domain/two-step",
            &[("csrf", &domain_page.csrf()), ("status", "enabled")],
        )
        .await;
    assert_eq!(forced.location(), "/domain");
    let audit = store.list_audit(AuditFilter::default()).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|r| r.action == "domain.status" && r.actor.starts_with("sysadmin:root as"))
    );

    // A mail user is no system administrator.
    let mut alice = Browser::new(&w.app);
    alice.password_step(ALICE, "alice-primary").await;
    assert_eq!(alice.get("/admin").await.location(), "/admin/login");
}

#[tokio::test]
async fn every_response_carries_the_security_headers_and_a_strict_cookie() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    let page = browser.get("/login").await;
    assert_eq!(
        page.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .split(';')
            .take(2)
            .collect::<Vec<_>>(),
        vec!["default-src 'self'", " frame-ancestors 'none'"]
    );
    assert_eq!(page.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(page.headers[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(page.headers[header::CACHE_CONTROL], "no-store");
    let cookie = page.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(!page.body.contains("<script"), "no script at all");
    assert!(!page.body.contains("style="), "no inline style");

    let css = browser.get("/style.css").await;
    assert_eq!(css.status, StatusCode::OK);
    assert_eq!(css.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");

    let health = browser.get("/healthz").await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (StatusCode::OK, "ok")
    );
    w.gateway.store().close().await;
    let health = browser.get("/healthz").await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn the_json_api_logs_in_and_creates_an_app_password() {
    let w = world().await;
    let mut client = Browser::new(&w.app);
    let session = client.json("GET", "/api/v1/session", None, "").await;
    let csrf = between(&session.body, "\"csrf\":\"", "\"");
    let login = client
        .json(
            "POST",
            "/api/v1/login",
            Some(&csrf),
            &format!(r#"{{"address":"{BOB}","password":"bob-primary"}}"#),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    assert!(login.body.contains("\"state\":\"user\""));
    // The token rotated with the session.
    let csrf2 = between(&login.body, "\"csrf\":\"", "\"");
    assert_ne!(csrf, csrf2);
    let stale = client
        .json(
            "POST",
            "/api/v1/account/app-passwords",
            Some(&csrf),
            r#"{"name":"phone"}"#,
        )
        .await;
    assert_eq!(stale.status, StatusCode::FORBIDDEN);
    let created = client
        .json(
            "POST",
            "/api/v1/account/app-passwords",
            Some(&csrf2),
            r#"{"name":"phone","scopes":["imap"]}"#,
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let list = client
        .json("GET", "/api/v1/account/app-passwords", None, "")
        .await;
    assert!(list.body.contains("\"name\":\"phone\""), "{}", list.body);
    assert!(list.body.contains("\"scopes\":[\"imap\"]"), "{}", list.body);
}

#[tokio::test]
async fn an_app_password_limited_to_networks_is_made_on_the_web_and_the_api() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    browser.password_step(BOB, "bob-primary").await;
    let page = browser.get("/account/app-passwords").await;
    assert!(page.body.contains("name=\"networks\""), "{}", page.body);
    let form = |networks: &'static str, csrf: String| {
        vec![
            ("csrf".to_owned(), csrf),
            ("name".to_owned(), "Office desktop".to_owned()),
            ("imap".to_owned(), "on".to_owned()),
            ("networks".to_owned(), networks.to_owned()),
        ]
    };
    let bad = form("192.0.2.0/24, office", page.csrf());
    let bad: Vec<(&str, &str)> = bad.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let refused = browser.post("/account/app-passwords", &bad).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused.body.contains("is not an IPv4 or IPv6"),
        "{}",
        refused.body
    );
    assert_eq!(app_password_count(&w, BOB).await, 0);
    let good = form("192.0.2.0/24, 2001:db8::/32", page.csrf());
    let good: Vec<(&str, &str)> = good.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let created = browser.post("/account/app-passwords", &good).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    assert!(
        created.body.contains("192.0.2.0/24, 2001:db8::/32"),
        "{}",
        created.body
    );
    let list = browser.get("/account/app-passwords").await;
    assert!(
        list.body.contains("192.0.2.0/24, 2001:db8::/32"),
        "{}",
        list.body
    );

    let csrf = browser.get("/account/app-passwords").await.csrf();
    let api = browser
        .json(
            "POST",
            "/api/v1/account/app-passwords",
            Some(&csrf),
            r#"{"name":"laptop","networks":["198.51.100.0/24"]}"#,
        )
        .await;
    assert_eq!(api.status, StatusCode::CREATED, "{}", api.body);
    let bad = browser
        .json(
            "POST",
            "/api/v1/account/app-passwords",
            Some(&csrf),
            r#"{"name":"laptop","networks":["300.1.1.1"]}"#,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    let listed = browser
        .json("GET", "/api/v1/account/app-passwords", None, "")
        .await;
    assert!(
        listed
            .body
            .contains(r#""networks":["192.0.2.0/24","2001:db8::/32"]"#),
        "{}",
        listed.body
    );
    assert!(
        listed.body.contains(r#""networks":["198.51.100.0/24"]"#),
        "{}",
        listed.body
    );
}

#[tokio::test]
async fn cookies_are_secure_behind_an_https_public_url() {
    let w = world().await;
    let mut config = w.gateway.config.clone();
    config.web.public_url = Some("https://mail.example.test".into());
    let state = WebState::from_runtime(&w.gateway.runtime, &config).expect("state");
    assert_eq!(state.mail_host.as_deref(), Some("mail.example.test"));
    let mut browser = Browser::new(&router(state));
    let page = browser.get("/login").await;
    let cookie = page.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // The __Host- prefix: browsers accept it only Secure, on Path=/ and with no
    // Domain, so a sibling host cannot plant or shadow it.
    assert!(cookie.starts_with("__Host-postern_session="), "{cookie}");
    assert!(
        cookie.contains("Path=/") && !cookie.contains("Domain"),
        "{cookie}"
    );
    // Browsers are told to come back over HTTPS only, on every response.
    assert_eq!(
        page.headers[header::STRICT_TRANSPORT_SECURITY],
        "max-age=31536000"
    );
    let refused = browser.post("/login", &[("csrf", "wrong")]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        refused
            .headers
            .contains_key(header::STRICT_TRANSPORT_SECURITY)
    );
    // Not over plain HTTP, where it would mean nothing.
    let plain = Browser::new(&w.app).get("/login").await;
    assert!(
        !plain
            .headers
            .contains_key(header::STRICT_TRANSPORT_SECURITY)
    );
}

#[tokio::test]
async fn a_first_start_creates_one_system_administrator_only_once() {
    let w = world().await;
    let store = w.gateway.store();
    let file = postern::web::sysadmin::first_password_file(&w.gateway.config.secrets.key_file);
    assert_eq!(store.sysadmin_count().await.unwrap(), 0);
    postern::web::sysadmin::ensure_first_sysadmin(store, &file).await;
    let hash = store.sysadmin_hash("admin").await.unwrap().expect("admin");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    postern::web::sysadmin::ensure_first_sysadmin(store, &file).await;
    assert_eq!(store.sysadmin_count().await.unwrap(), 1);
    assert_eq!(store.sysadmin_hash("admin").await.unwrap(), Some(hash));
}

/// Signs in on `/admin/login`; the page answered.
async fn admin_sign_in(browser: &mut Browser, name: &str, password: &str) -> common::browser::Page {
    let form = browser.get("/admin/login").await;
    browser
        .post(
            "/admin/login",
            &[
                ("csrf", &form.csrf()),
                ("name", name),
                ("password", password),
            ],
        )
        .await
}

/// Posts the password form (`name` only when not signed in).
async fn post_password(
    browser: &mut Browser,
    csrf: &str,
    name: Option<&str>,
    current: &str,
    new: &str,
    confirm: &str,
) -> common::browser::Page {
    let mut fields = vec![
        ("csrf", csrf),
        ("current", current),
        ("new", new),
        ("confirm", confirm),
    ];
    if let Some(name) = name {
        fields.push(("name", name));
    }
    browser.post("/admin/password", &fields).await
}

/// A client the test config exempts from login penalties (127.0.0.0/8), so a
/// test can make many wrong guesses without waiting out the delays; the
/// account locks and the rate limit still apply to it.
const UNDELAYED: &str = "127.0.0.9:40000";

#[tokio::test]
async fn the_first_start_password_works_once_and_only_to_choose_a_new_one() {
    let w = world().await;
    let store = w.gateway.store();
    let file = postern::web::sysadmin::first_password_file(&w.gateway.config.secrets.key_file);
    postern::web::sysadmin::ensure_first_sysadmin(store, &file).await;
    // The password is in a file only its owner can read, not in the log.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let one_time = std::fs::read_to_string(&file)
        .expect("file")
        .trim()
        .to_owned();
    assert!(!one_time.is_empty());

    let mut browser = Browser::from_client(&w.app, UNDELAYED);
    let page = admin_sign_in(&mut browser, "admin", &one_time).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("one-time password"), "{}", page.body);
    assert!(page.body.contains("action=\"/admin/password\""));
    // Not signed in: the console, and the API, stay closed.
    assert_eq!(browser.get("/admin").await.location(), "/admin/login");
    let api = browser
        .json(
            "POST",
            "/api/v1/admin/login",
            Some(&page.csrf()),
            &format!(r#"{{"name":"admin","password":"{one_time}"}}"#),
        )
        .await;
    assert_eq!(api.status, StatusCode::FORBIDDEN, "{}", api.body);
    assert_eq!(browser.get("/admin").await.location(), "/admin/login");

    // A short new password is refused, with the rule.
    let csrf = page.csrf();
    let admin = Some("admin");
    let short = post_password(
        &mut browser,
        &csrf,
        admin,
        &one_time,
        "too-short",
        "too-short",
    )
    .await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST, "{}", short.body);
    assert!(
        short.body.contains("at least 12 characters"),
        "{}",
        short.body
    );
    let common = post_password(
        &mut browser,
        &csrf,
        admin,
        &one_time,
        "password1234",
        "password1234",
    )
    .await;
    assert_eq!(common.status, StatusCode::BAD_REQUEST, "{}", common.body);
    assert!(common.body.contains("too common"), "{}", common.body);
    let new = "my own long passphrase";
    let changed = post_password(&mut browser, &csrf, admin, &one_time, new, new).await;
    assert_eq!(changed.location(), "/admin", "{}", changed.body);
    assert_eq!(browser.get("/admin").await.status, StatusCode::OK);
    assert!(!file.exists(), "the one-time password's file is removed");

    // The one-time password no longer works; the new one does, at once.
    let mut later = Browser::from_client(&w.app, UNDELAYED);
    let old = admin_sign_in(&mut later, "admin", &one_time).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    let new = admin_sign_in(&mut later, "admin", "my own long passphrase").await;
    assert_eq!(new.location(), "/admin");
    let audit = store.list_audit(AuditFilter::default()).await.unwrap();
    assert!(audit.iter().any(|r| r.action == "sysadmin.password"));
}

#[tokio::test]
async fn a_system_administrator_changes_their_own_password_in_the_web_ui() {
    let w = world().await;
    w.gateway
        .store()
        .add_sysadmin("root", &hash("root-secret-1").await, "cli")
        .await
        .unwrap();
    let mut browser = Browser::from_client(&w.app, UNDELAYED);
    assert_eq!(
        admin_sign_in(&mut browser, "root", "root-secret-1")
            .await
            .location(),
        "/admin",
        "a password set with the CLI is not one-time"
    );
    let console = browser.get("/admin").await;
    assert!(console.body.contains("href=\"/admin/password\""));
    let form = browser.get("/admin/password").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains("Current password"));
    let csrf = form.csrf();
    let new = "a brand new secret";
    let wrong = post_password(&mut browser, &csrf, None, "not-it", new, new).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let differ = post_password(
        &mut browser,
        &csrf,
        None,
        "root-secret-1",
        new,
        "a brand new secrets",
    )
    .await;
    assert_eq!(differ.status, StatusCode::BAD_REQUEST);
    assert!(differ.body.contains("differ"));
    let ok = post_password(&mut browser, &csrf, None, "root-secret-1", new, new).await;
    assert_eq!(ok.location(), "/admin", "{}", ok.body);
    // Without the CSRF token nothing changes.
    let forged = browser
        .post(
            "/admin/password",
            &[
                ("current", new),
                ("new", "the attacker's choice"),
                ("confirm", "the attacker's choice"),
            ],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    let mut later = Browser::from_client(&w.app, UNDELAYED);
    assert_eq!(
        admin_sign_in(&mut later, "root", "root-secret-1")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        admin_sign_in(&mut later, "root", "a brand new secret")
            .await
            .location(),
        "/admin"
    );
}

#[tokio::test]
async fn wrong_admin_passwords_lock_the_name_only_for_the_client_that_guessed() {
    let w = world().await;
    w.gateway
        .store()
        .add_sysadmin("admin", &hash("admin-secret").await, "cli")
        .await
        .unwrap();
    let mut attacker = Browser::from_client(&w.app, UNDELAYED);
    for n in 0..postern::web::attempts::MAX_FAILURES {
        let page = admin_sign_in(&mut attacker, "admin", &format!("guess-{n}")).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    }
    // The guessing client is locked out, even with the right password...
    let locked = admin_sign_in(&mut attacker, "admin", "admin-secret").await;
    assert_eq!(locked.status, StatusCode::FORBIDDEN, "{}", locked.body);
    assert!(locked.body.contains("wait 15 minutes"));
    // ...but the administrator, elsewhere, signs in.
    let mut admin = Browser::new(&w.app);
    let page = admin_sign_in(&mut admin, "admin", "admin-secret").await;
    assert_eq!(page.location(), "/admin", "{}", page.body);
}

#[tokio::test]
async fn an_admin_lock_holds_after_a_restart() {
    let w = world().await;
    w.gateway
        .store()
        .add_sysadmin("admin", &hash("admin-secret").await, "cli")
        .await
        .unwrap();
    let mut attacker = Browser::from_client(&w.app, UNDELAYED);
    for n in 0..postern::web::attempts::MAX_FAILURES {
        let page = admin_sign_in(&mut attacker, "admin", &format!("guess-{n}")).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    }
    // A new process on the same store.
    let restarted = w.gateway.another_node().await;
    let app = router(WebState::from_runtime(&restarted.runtime, &restarted.config).expect("web"));
    drop(w);
    let mut attacker = Browser::from_client(&app, UNDELAYED);
    let locked = admin_sign_in(&mut attacker, "admin", "admin-secret").await;
    assert_eq!(locked.status, StatusCode::FORBIDDEN, "{}", locked.body);
    assert!(locked.body.contains("wait 15 minutes"));
    let mut admin = Browser::new(&app);
    let page = admin_sign_in(&mut admin, "admin", "admin-secret").await;
    assert_eq!(page.location(), "/admin", "{}", page.body);
}

#[tokio::test]
async fn a_wrong_admin_password_delays_that_clients_next_answer() {
    let w = world().await;
    let client: std::net::IpAddr = CLIENT.parse::<std::net::SocketAddr>().expect("addr").ip();
    let mut browser = Browser::new(&w.app);
    let page = admin_sign_in(&mut browser, "admin", "guess").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        w.gateway.runtime.penalties.delay(client).await,
        postern::penalty::BASE_DELAY
    );
}

#[tokio::test]
async fn an_unknown_admin_name_costs_the_argon2_run_a_known_one_costs() {
    let w = world().await;
    w.gateway
        .store()
        .add_sysadmin("admin", &hash("admin-secret").await, "cli")
        .await
        .unwrap();
    let mut browser = Browser::from_client(&w.app, UNDELAYED);
    let runs = || w.gateway.runtime.admin_passwords.runs();
    let before = runs();
    let known = admin_sign_in(&mut browser, "admin", "wrong").await;
    assert_eq!(known.status, StatusCode::UNAUTHORIZED);
    assert_eq!(runs(), before + 1);
    let unknown = admin_sign_in(&mut browser, "nobody", "wrong").await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.body, known.body, "the same answer");
    assert_eq!(runs(), before + 2, "the same Argon2 work");
}

#[tokio::test]
async fn over_long_admin_sign_in_fields_are_refused_and_nothing_is_stored_or_locked() {
    let w = world().await;
    let store = w.gateway.store();
    store
        .add_sysadmin("admin", &hash("admin-secret").await, "cli")
        .await
        .unwrap();
    let audit_rows = || async {
        store
            .list_audit(AuditFilter {
                limit: 10_000,
                ..AuditFilter::default()
            })
            .await
            .unwrap()
            .len()
    };
    let rows_before = audit_rows().await;
    let mut browser = Browser::from_client(&w.app, UNDELAYED);
    let long_name = "a".repeat(60_000);
    for _ in 0..postern::web::attempts::MAX_FAILURES + 1 {
        let page = admin_sign_in(&mut browser, &long_name, "x").await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST);
        assert!(page.body.contains("at most 256 bytes"), "{}", page.body);
    }
    let long_password = "p".repeat(2000);
    let page = admin_sign_in(&mut browser, "admin", &long_password).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.body.contains("at most 1024 bytes"), "{}", page.body);
    assert_eq!(audit_rows().await, rows_before, "nothing written");
    // Nothing counted either: the right password works at once.
    let page = admin_sign_in(&mut browser, "admin", "admin-secret").await;
    assert_eq!(page.location(), "/admin");
    // The web login's fields are capped the same way.
    let mut user = Browser::from_client(&w.app, UNDELAYED);
    let page = user
        .password_step(&format!("{}@example.test", "a".repeat(60_000)), "x")
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert_eq!(w.fake.refused(), 0, "the upstream was not asked");
}

#[tokio::test]
async fn a_client_flooding_the_admin_sign_in_is_rate_limited() {
    let w = world().await;
    w.gateway
        .store()
        .add_sysadmin("admin", &hash("admin-secret").await, "cli")
        .await
        .unwrap();
    let mut flood = Browser::from_client(&w.app, "127.0.0.10:1");
    let mut limited = 0;
    for n in 0..postern::web::attempts::RATE_LIMIT + 5 {
        // Another name each time: no lock applies, only the rate limit.
        let page = admin_sign_in(&mut flood, &format!("name-{n}"), "x").await;
        if page.status == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
        }
    }
    assert_eq!(limited, 5);
    // Past the limit the right password waits too; other clients do not.
    let page = admin_sign_in(&mut flood, "admin", "admin-secret").await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    let mut other = Browser::from_client(&w.app, "127.0.1.10:1");
    let page = admin_sign_in(&mut other, "admin", "admin-secret").await;
    assert_eq!(page.location(), "/admin");
}

#[tokio::test]
async fn metrics_show_connections_logins_and_upstream_latency_after_a_login() {
    let w = world().await;
    let mut client = connect(w.gateway.addr(Protocol::Imap, false)).await;
    client.line().await;
    client
        .send(format!("a LOGIN \"{ALICE}\" \"alice-primary\"\r\n").as_bytes())
        .await;
    let reply = client.until("a ").await.concat();
    assert!(reply.starts_with("a OK"), "{reply}");

    let mut browser = Browser::new(&w.app);
    // The session is registered (and counted active) just after the client has
    // its reply: give it a moment.
    let mut page = browser.get("/metrics").await;
    for _ in 0..50 {
        if page.body.lines().any(|l| {
            l.starts_with("postern_sessions_active{protocol=\"imap\"}") && !l.ends_with(" 0")
        }) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        page = browser.get("/metrics").await;
    }
    assert_eq!(page.status, StatusCode::OK);
    let content_type = page.headers.get(header::CONTENT_TYPE).unwrap();
    assert!(content_type.to_str().unwrap().starts_with("text/plain"));
    let text = &page.body;
    // Other tests in this process log in too: counts are at least one.
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} not in {text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(value("postern_connections_total{protocol=\"imap\"}") >= 1.0);
    assert!(value("postern_logins_total{protocol=\"imap\",result=\"ok\"}") >= 1.0);
    assert!(value("postern_upstream_login_seconds_count{protocol=\"imap\"}") >= 1.0);
    assert!(text.contains("postern_upstream_login_seconds_bucket{protocol=\"imap\",le=\"0.1\"}"));
    assert!(value("postern_sessions_active{protocol=\"imap\"}") >= 1.0);
    assert!(text.contains("# TYPE postern_logins_total counter"));
}

#[tokio::test]
async fn metrics_require_the_bearer_token_when_one_is_configured() {
    let w = world().await;
    let mut config = w.gateway.config.clone();
    config.web.metrics_token = Some("metrics-s3cret".into());
    let app = router(WebState::from_runtime(&w.gateway.runtime, &config).expect("web state"));
    let mut browser = Browser::new(&app);
    let with = |value: Option<&str>| {
        let mut request = Request::get("/metrics");
        if let Some(value) = value {
            request = request.header(header::AUTHORIZATION, value);
        }
        request.body(Body::empty()).expect("request")
    };
    for refused in [
        None,
        Some("Bearer wrong"),
        Some("Bearer metrics-s3cre"),
        Some("Basic bWV0cmljcy1zM2NyZXQ="),
    ] {
        let page = browser.send(with(refused)).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{refused:?}");
        assert!(!page.body.contains("postern_"), "{refused:?}");
    }
    let page = browser.send(with(Some("Bearer metrics-s3cret"))).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("# TYPE"), "{}", page.body);
    // Without a token configured, /metrics stays open (the default).
    let page = Browser::new(&w.app).get("/metrics").await;
    assert_eq!(page.status, StatusCode::OK);
}

fn content_type(page: &common::browser::Page) -> &str {
    page.headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn a_form_posted_after_the_session_ended_gets_a_page_with_a_link_to_sign_in() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    browser.password_step(BOB, "bob-primary").await;
    let page = browser.get("/account/app-passwords").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let csrf = page.csrf();
    // The session ends (signed out in another tab, idle, signed out everywhere) while
    // the form is open; then the form is sent.
    let logout = browser.post("/logout", &[("csrf", &csrf)]).await;
    assert!(logout.status.is_redirection(), "{}", logout.status);
    let page = browser
        .post(
            "/account/app-passwords",
            &[("csrf", &csrf), ("name", "phone"), ("imap", "on")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(
        content_type(&page).starts_with("text/html"),
        "{:?}",
        page.headers
    );
    assert!(page.body.contains("session has ended"), "{}", page.body);
    assert!(page.body.contains("href=\"/login\""), "{}", page.body);

    // The system administrator's console links to its own sign-in.
    let mut stranger = Browser::new(&w.app);
    let page = stranger
        .post("/admin/domains", &[("csrf", "x"), ("domain", "new.test")])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(
        content_type(&page).starts_with("text/html"),
        "{:?}",
        page.headers
    );
    assert!(page.body.contains("href=\"/admin/login\""), "{}", page.body);

    // A live session with a form from an earlier one: a page too, not plain text.
    stranger.get("/login").await;
    let page = stranger
        .post(
            "/login",
            &[
                ("csrf", "stale"),
                ("address", BOB),
                ("password", "bob-primary"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert!(
        content_type(&page).starts_with("text/html"),
        "{:?}",
        page.headers
    );
    assert!(page.body.contains("out of date"), "{}", page.body);
}

/// Asserts `page` is `{"error": "<some text>"}` with `status`; returns the text.
fn api_error(page: &common::browser::Page, status: StatusCode) -> String {
    assert_eq!(page.status, status, "{}", page.body);
    assert!(
        content_type(page).starts_with("application/json"),
        "{status}: {:?} {}",
        page.headers,
        page.body
    );
    let value: serde_json::Value = serde_json::from_str(&page.body)
        .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {}", page.body));
    let error = value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", page.body));
    assert!(!error.is_empty(), "{}", page.body);
    error.to_owned()
}

#[tokio::test]
async fn malformed_api_requests_get_the_documented_json_error() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    // No session, and a wrong token: refused before any handler.
    let page = browser
        .json(
            "POST",
            "/api/v1/login",
            None,
            r#"{"address":"a","password":"b"}"#,
        )
        .await;
    api_error(&page, StatusCode::FORBIDDEN);
    let session = browser.get("/api/v1/session").await;
    let csrf = between(&session.body, "\"csrf\":\"", "\"");
    let page = browser
        .json(
            "POST",
            "/api/v1/login",
            Some("wrong"),
            r#"{"address":"a","password":"b"}"#,
        )
        .await;
    api_error(&page, StatusCode::FORBIDDEN);

    // Bodies: not JSON, JSON of the wrong shape or types, not sent as JSON.
    for (body, status) in [
        ("{", StatusCode::BAD_REQUEST),
        ("", StatusCode::BAD_REQUEST),
        (
            r#"{"address":"alice@example.test"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"address":1,"password":2}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("[]", StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let page = browser
            .json("POST", "/api/v1/login", Some(&csrf), body)
            .await;
        api_error(&page, status);
    }
    let page = browser
        .send(
            Request::post("/api/v1/login")
                .header("x-csrf-token", &csrf)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from(r#"{"address":"a","password":"b"}"#))
                .expect("request"),
        )
        .await;
    let error = api_error(&page, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(error.contains("application/json"), "{error}");
    assert!(w.fake.logins().is_empty(), "the upstream was never asked");

    // Signed in: a path segment that does not parse, unknown paths and methods,
    // and no sign-in at all.
    let page = browser
        .json(
            "POST",
            "/api/v1/login",
            Some(&csrf),
            r#"{"address":"bob@example.test","password":"bob-primary"}"#,
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let csrf = between(&page.body, "\"csrf\":\"", "\"");
    let page = browser
        .json(
            "DELETE",
            "/api/v1/account/app-passwords/abc",
            Some(&csrf),
            "",
        )
        .await;
    api_error(&page, StatusCode::BAD_REQUEST);
    let page = browser
        .json("GET", "/api/v1/admin/audit?limit=many", None, "")
        .await;
    api_error(&page, StatusCode::BAD_REQUEST);
    let page = browser.get("/api/v1/no-such-thing").await;
    api_error(&page, StatusCode::NOT_FOUND);
    let page = browser
        .json("PUT", "/api/v1/account/app-passwords", Some(&csrf), "{}")
        .await;
    api_error(&page, StatusCode::METHOD_NOT_ALLOWED);
    let mut stranger = Browser::new(&w.app);
    let page = stranger.get("/api/v1/account/app-passwords").await;
    api_error(&page, StatusCode::UNAUTHORIZED);
}

/// The `<input ...>` tag with `id="<id>"` on `page`.
fn input_tag(page: &common::browser::Page, id: &str) -> String {
    let start = page
        .body
        .find(&format!("<input id=\"{id}\""))
        .unwrap_or_else(|| panic!("no input #{id} in {}", page.body));
    let len = page.body[start..].find('>').expect("tag end");
    page.body[start..start + len].to_owned()
}

#[tokio::test]
async fn the_second_step_field_takes_backup_codes_on_a_phone_keyboard() {
    let w = world().await;
    w.gateway.enroll(ALICE).await;
    let mut browser = Browser::new(&w.app);
    browser.password_step(ALICE, "alice-primary").await;
    let page = browser.get("/login/code").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    // A backup code has letters: a digits-only keypad could not type it, and a
    // capitalised or "corrected" first letter would be a wrong code.
    let field = input_tag(&page, "code");
    assert!(field.contains("inputmode=\"text\""), "{field}");
    assert!(!field.contains("numeric"), "{field}");
    assert!(field.contains("autocapitalize=\"off\""), "{field}");
    assert!(field.contains("autocomplete=\"one-time-code\""), "{field}");

    // Where only a 6-digit app code is valid (confirming a new app), the keypad
    // stays numeric.
    let mut forced = Browser::new(&w.app);
    let page = forced.password_step(DAVE, "dave-primary").await;
    assert_eq!(page.location(), "/login/enroll");
    let page = forced.get("/login/enroll").await;
    let field = input_tag(&page, "code");
    assert!(field.contains("inputmode=\"numeric\""), "{field}");
}

#[tokio::test]
async fn sensitive_actions_ask_for_a_fresh_second_step_first() {
    let w = world().await;
    // Alice signs in with her password alone (not enrolled yet), in a browser
    // and through the API; then she is enrolled elsewhere (the CLI).
    let mut browser = Browser::new(&w.app);
    assert_eq!(
        browser
            .password_step(ALICE, "alice-primary")
            .await
            .location(),
        "/account"
    );
    let mut api = Browser::new(&w.app);
    let session = api.json("GET", "/api/v1/session", None, "").await;
    let token = between(&session.body, "\"csrf\":\"", "\"");
    let login = api
        .json(
            "POST",
            "/api/v1/login",
            Some(&token),
            &format!(r#"{{"address":"{ALICE}","password":"alice-primary"}}"#),
        )
        .await;
    let token = between(&login.body, "\"csrf\":\"", "\"");
    w.gateway.enroll(ALICE).await;

    // These sessions never passed a second step: no new mail credential, no
    // turning 2-Step off, until they do.
    let page = browser.get("/account/app-passwords").await;
    assert_eq!(page.status, StatusCode::OK);
    let csrf = page.csrf();
    let create = [("csrf", csrf.as_str()), ("name", "laptop"), ("imap", "on")];
    let asked = browser.post("/account/app-passwords", &create).await;
    assert_eq!(asked.status, StatusCode::FORBIDDEN);
    assert!(asked.body.contains("Confirm it is you"), "{}", asked.body);
    assert!(asked.body.contains("authenticator app"), "{}", asked.body);
    let off = browser
        .post("/account/two-step/off", &[("csrf", &csrf)])
        .await;
    assert_eq!(off.status, StatusCode::FORBIDDEN);
    assert!(
        w.gateway
            .store()
            .user(ALICE)
            .await
            .unwrap()
            .unwrap()
            .enrolled
    );
    let refused = api
        .json(
            "POST",
            "/api/v1/account/app-passwords",
            Some(&token),
            r#"{"name":"phone"}"#,
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        refused.body.contains("confirm it is you"),
        "{}",
        refused.body
    );
    assert_eq!(app_password_count(&w, ALICE).await, 0);

    // A wrong code does not count; a right one lets the action through.
    let wrong = browser
        .post(
            "/account/reauthenticate",
            &[
                ("csrf", &csrf),
                ("secret", "000000"),
                ("next", "/account/app-passwords"),
            ],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let right = browser
        .post(
            "/account/reauthenticate",
            &[
                ("csrf", &csrf),
                ("secret", &code_now()),
                ("next", "/account/app-passwords"),
            ],
        )
        .await;
    assert_eq!(right.location(), "/account/app-passwords", "{}", right.body);
    let created = browser.post("/account/app-passwords", &create).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    assert!(!created.secret().is_empty());

    let next_code = totp::code_at(SECRET, now() + 30).expect("code");
    let confirmed = api
        .json(
            "POST",
            "/api/v1/account/reauthenticate",
            Some(&token),
            &format!(r#"{{"code":"{next_code}"}}"#),
        )
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.body);
    let created = api
        .json(
            "POST",
            "/api/v1/account/app-passwords",
            Some(&token),
            r#"{"name":"phone"}"#,
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(app_password_count(&w, ALICE).await, 2);
    let audit = w
        .gateway
        .store()
        .list_audit(AuditFilter::default())
        .await
        .unwrap();
    assert!(audit.iter().any(|r| r.action == "web.reauth"));
}

/// A browser signed in as the system administrator `root` (created here).
async fn signed_in_root(w: &World) -> Browser {
    w.gateway
        .store()
        .add_sysadmin("root", &hash("root-secret").await, "test")
        .await
        .unwrap();
    let mut admin = Browser::new(&w.app);
    let form = admin.get("/admin/login").await;
    let ok = admin
        .post(
            "/admin/login",
            &[
                ("csrf", &form.csrf()),
                ("name", "root"),
                ("password", "root-secret"),
            ],
        )
        .await;
    assert_eq!(ok.location(), "/admin");
    admin
}

/// Signs a system administrator in and impersonates `target`.
async fn impersonating(w: &World, target: &str) -> Browser {
    let mut admin = signed_in_root(w).await;
    let console = admin.get("/admin").await;
    let page = admin
        .post(
            "/admin/impersonate",
            &[("csrf", &console.csrf()), ("address", target)],
        )
        .await;
    assert_eq!(page.location(), "/domain");
    admin
}

#[tokio::test]
async fn an_impersonating_administrator_cannot_create_credentials_for_the_user() {
    let w = world().await;
    let store = w.gateway.store();
    store
        .set_domain_admin("example.test", ALICE, "test")
        .await
        .unwrap();
    let mut admin = impersonating(&w, ALICE).await;

    let page = admin.get("/account/app-passwords").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("acting as a user cannot"),
        "{}",
        page.body
    );
    let refused = admin
        .post(
            "/account/app-passwords",
            &[("csrf", &page.csrf()), ("name", "mine"), ("imap", "on")],
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        refused.body.contains("acting as a user cannot"),
        "{}",
        refused.body
    );
    let api = admin
        .json(
            "POST",
            "/api/v1/account/app-passwords",
            Some(&page.csrf()),
            r#"{"name":"mine"}"#,
        )
        .await;
    assert_eq!(api.status, StatusCode::FORBIDDEN);
    assert!(api.body.contains("acting as a user cannot"), "{}", api.body);
    assert_eq!(app_password_count(&w, ALICE).await, 0);

    // No factor either: the 2-Step page shows no secret, and none is stored.
    let two_step = admin.get("/account/two-step").await;
    assert_eq!(two_step.status, StatusCode::OK);
    assert!(
        !two_step.body.contains("class=\"secret\""),
        "{}",
        two_step.body
    );
    let api = admin
        .json(
            "POST",
            "/api/v1/account/two-step/totp",
            Some(&page.csrf()),
            "",
        )
        .await;
    assert_eq!(api.status, StatusCode::FORBIDDEN, "{}", api.body);
    let user = store.user(ALICE).await.unwrap().unwrap();
    assert!(store.second_factors(user.id).await.unwrap().is_empty());
}

#[tokio::test]
async fn resetting_a_user_asks_for_a_confirmation_first() {
    let w = world().await;
    let store = w.gateway.store();
    store
        .set_domain_admin("example.test", ALICE, "test")
        .await
        .unwrap();
    w.gateway.enroll(BOB).await;
    let mut browser = Browser::new(&w.app);
    browser.password_step(ALICE, "alice-primary").await;
    let page = browser.get("/domain").await;
    let ask = browser
        .post(
            "/domain/users/reset",
            &[("csrf", &page.csrf()), ("address", BOB)],
        )
        .await;
    assert_eq!(ask.status, StatusCode::OK);
    assert!(
        ask.body.contains("Reset 2-Step Authentication"),
        "{}",
        ask.body
    );
    assert!(store.user(BOB).await.unwrap().unwrap().enrolled);
    let done = browser
        .post(
            "/domain/users/reset",
            &[("csrf", &ask.csrf()), ("address", BOB), ("confirm", "yes")],
        )
        .await;
    assert_eq!(done.location(), "/domain");
    assert!(!store.user(BOB).await.unwrap().unwrap().enrolled);
}

#[tokio::test]
async fn the_console_and_the_api_refuse_a_domain_that_is_no_host_name() {
    let w = world().await;
    let store = w.gateway.store();
    let mut admin = signed_in_root(&w).await;
    let console = admin.get("/admin").await;
    let page = admin
        .post(
            "/admin/domains",
            &[("csrf", &console.csrf()), ("domain", "javascript:alert(1)")],
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(page.body.contains("is not a domain name"), "{}", page.body);
    let api = admin
        .json(
            "POST",
            "/api/v1/admin/domains",
            Some(&console.csrf()),
            r#"{"domain":"<b>x</b>.org"}"#,
        )
        .await;
    assert_eq!(api.status, StatusCode::BAD_REQUEST);
    assert!(api.body.contains("is not a domain name"), "{}", api.body);
    let names: Vec<String> = store
        .list_domains()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, vec!["example.test", "forced.test"]);
}

#[tokio::test]
async fn an_expiry_of_zero_days_is_refused_on_the_page_and_in_the_api() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    browser.password_step(BOB, "bob-primary").await;
    let page = browser.get("/account/app-passwords").await;
    for days in ["0", "3651"] {
        let refused = browser
            .post(
                "/account/app-passwords",
                &[
                    ("csrf", &page.csrf()),
                    ("name", "laptop"),
                    ("imap", "on"),
                    ("expires_days", days),
                ],
            )
            .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{days}");
        assert!(refused.body.contains("from 1 to 3650"), "{}", refused.body);
        let api = browser
            .json(
                "POST",
                "/api/v1/account/app-passwords",
                Some(&page.csrf()),
                &format!(r#"{{"name":"phone","expires_days":{days}}}"#),
            )
            .await;
        assert_eq!(api.status, StatusCode::BAD_REQUEST, "{days}");
        assert!(api.body.contains("from 1 to 3650"), "{}", api.body);
    }
    assert_eq!(app_password_count(&w, BOB).await, 0);
}

#[tokio::test]
async fn changes_made_on_the_web_are_audited_with_the_client_address() {
    let w = world().await;
    let store = w.gateway.store();
    store
        .set_domain_admin("example.test", ALICE, "test")
        .await
        .unwrap();
    let mut browser = Browser::new(&w.app);
    browser.password_step(ALICE, "alice-primary").await;
    let page = browser.get("/account/app-passwords").await;
    let created = browser
        .post(
            "/account/app-passwords",
            &[("csrf", &page.csrf()), ("name", "laptop"), ("imap", "on")],
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    let page = browser.get("/account/two-step").await;
    let secret: String = page.secret().split_whitespace().collect();
    let code = totp::code_at(&secret, now()).expect("code");
    browser
        .post(
            "/account/two-step/confirm",
            &[("csrf", &page.csrf()), ("code", &code)],
        )
        .await;
    let page = browser.get("/domain").await;
    browser
        .post(
            "/domain/two-step",
            &[("csrf", &page.csrf()), ("status", "enabled")],
        )
        .await;
    let client = CLIENT.split(':').next().unwrap();
    let audit = store.list_audit(AuditFilter::default()).await.unwrap();
    for action in [
        "app_password.create",
        "second_factor.add",
        "second_factor.confirm",
        "domain.status",
    ] {
        let row = audit
            .iter()
            .find(|r| r.action == action && r.actor == format!("user:{ALICE}"))
            .unwrap_or_else(|| panic!("no {action} row in {audit:?}"));
        assert_eq!(row.ip.as_deref(), Some(client), "{action}");
    }
}

/// `postern_web_logins_total{result}` in this process's `/metrics` (other tests
/// in this process count too: compare before and after).
fn web_logins(result: &str) -> f64 {
    let series = format!("postern_web_logins_total{{result=\"{result}\"}}");
    postern::metrics::render()
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn web_and_api_sign_ins_are_counted_by_result() {
    let w = world().await;
    let refused = web_logins("refused");
    let page = Browser::new(&w.app).password_step(ALICE, "not-it").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    assert!(web_logins("refused") >= refused + 1.0);

    let ok = web_logins("ok");
    let mut client = Browser::new(&w.app);
    let session = client.json("GET", "/api/v1/session", None, "").await;
    let csrf = between(&session.body, "\"csrf\":\"", "\"");
    let login = client
        .json(
            "POST",
            "/api/v1/login",
            Some(&csrf),
            &format!(r#"{{"address":"{BOB}","password":"bob-primary"}}"#),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    assert!(web_logins("ok") >= ok + 1.0);
}
