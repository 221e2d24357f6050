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
    assert!(w.gateway.runtime.penalties.delay(client).is_zero());
    let mut browser = Browser::new(&w.app);
    let page = browser.password_step(ALICE, "not-it").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    // The next answer to this client, on the web or a mail port, waits.
    assert_eq!(
        w.gateway.runtime.penalties.delay(client),
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
    let revoke = browser
        .post(
            &format!("/account/app-passwords/{}/revoke", record.id),
            &[("csrf", &list.csrf())],
        )
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

    let forced = browser
        .post(
            "/domain/two-step",
            &[
                ("csrf", &page.csrf()),
                ("status", "forced"),
                ("grace_days", ""),
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
}

#[tokio::test]
async fn a_first_start_creates_one_system_administrator_only_once() {
    let w = world().await;
    let store = w.gateway.store();
    assert_eq!(store.sysadmin_count().await.unwrap(), 0);
    postern::web::ops::ensure_first_sysadmin(store).await;
    let hash = store.sysadmin_hash("admin").await.unwrap().expect("admin");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    postern::web::ops::ensure_first_sysadmin(store).await;
    assert_eq!(store.sysadmin_count().await.unwrap(), 1);
    assert_eq!(store.sysadmin_hash("admin").await.unwrap(), Some(hash));
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
