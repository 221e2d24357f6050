//! Trusted browsers ("Don't ask again on this browser for 30 days") through the
//! router, as a browser would use them: a fake IMAP upstream checks primary
//! passwords, the store is a real SQLite file.

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::Gateway;
use common::browser::{Browser, Page};
use common::fake_imap::FakeImap;
use postern::credentials::totp;
use postern::policy::DomainStatus;
use postern::store::AuditFilter;
use postern::web::{WebState, router};
use sqlx::Connection;

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";
/// The secret `Gateway::enroll` provisions.
const SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
/// The trusted-browser cookie over plain HTTP.
const TRUSTED: &str = "postern_trusted";
const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";

struct World {
    gateway: Gateway,
    app: Router,
}

async fn world() -> World {
    let fake = FakeImap::start(&[(ALICE, "alice-primary"), (BOB, "bob-primary")]).await;
    let gateway = Gateway::start_imap(fake.addr, "allow_plaintext_auth = true").await;
    gateway.domain("example.test", DomainStatus::Enabled).await;
    gateway.enroll(ALICE).await;
    gateway.enroll(BOB).await;
    let state = WebState::from_runtime(&gateway.runtime, &gateway.config).expect("web state");
    World {
        app: router(state),
        gateway,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A TOTP code `steps` steps from now (each step is accepted once).
fn code(steps: u64) -> String {
    totp::code_at(SECRET, now() + 30 * steps).expect("code")
}

/// The second step with a code, "Don't ask again" ticked or not, as Firefox.
async fn second_step(browser: &mut Browser, code: &str, remember: bool) -> Page {
    let form = browser.get("/login/code").await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    let csrf = form.csrf();
    let mut fields = vec![("csrf", csrf.as_str()), ("code", code)];
    if remember {
        fields.push(("remember", "on"));
    }
    let body = serde_urlencoded::to_string(&fields).expect("form");
    browser
        .send(
            Request::post("/login/code")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(header::USER_AGENT, FIREFOX)
                .body(Body::from(body))
                .expect("request"),
        )
        .await
}

/// Signs `address` in with the TOTP code `steps` steps from now and "Don't ask
/// again" ticked; returns the trusted-browser cookie's id.
async fn sign_in_trusting(
    browser: &mut Browser,
    address: &str,
    password: &str,
    steps: u64,
) -> String {
    let page = browser.password_step(address, password).await;
    assert_eq!(page.location(), "/login/code", "{}", page.body);
    let page = second_step(browser, &code(steps), true).await;
    assert_eq!(page.location(), "/account", "{}", page.body);
    browser
        .others
        .get(TRUSTED)
        .cloned()
        .expect("trusted cookie")
}

async fn sign_out(browser: &mut Browser) {
    let csrf = browser.get("/account").await.csrf();
    browser.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(browser.get("/account").await.location(), "/login");
}

async fn audit(w: &World, action: &str) -> Vec<String> {
    w.gateway
        .store()
        .list_audit(AuditFilter {
            user: None,
            since: None,
            limit: 1000,
        })
        .await
        .expect("audit")
        .into_iter()
        .filter(|r| r.action == action)
        .map(|r| r.detail)
        .collect()
}

async fn rows(w: &World, address: &str) -> usize {
    let user = w.gateway.store().ensure_user(address).await.expect("user");
    w.gateway
        .store()
        .trusted_browsers(user.id, now() as i64)
        .await
        .expect("list")
        .len()
}

/// Runs SQL on the gateway's database, to age a row.
async fn raw(w: &World, sql: &'static str) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&w.gateway.config.store.url)
        .await
        .expect("connect");
    sqlx::query(sql).execute(&mut conn).await.expect("sql");
}

#[tokio::test]
async fn a_trusted_browser_signs_in_without_the_second_step() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    let page = browser.password_step(ALICE, "alice-primary").await;
    assert_eq!(page.location(), "/login/code");
    let form = browser.get("/login/code").await;
    assert!(
        form.body
            .contains("Don&#39;t ask again on this browser for 30 days")
            || form
                .body
                .contains("Don't ask again on this browser for 30 days"),
        "{}",
        form.body
    );
    let page = second_step(&mut browser, &code(0), true).await;
    assert_eq!(page.location(), "/account", "{}", page.body);
    // A cookie of its own, long-lived, beside the session's.
    let set: Vec<&str> = page
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("ascii"))
        .collect();
    let trusted = set
        .iter()
        .find(|c| c.starts_with("postern_trusted="))
        .unwrap_or_else(|| panic!("{set:?}"));
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=2592000"] {
        assert!(trusted.contains(flag), "{trusted}");
    }
    assert!(
        set.iter().any(|c| c.starts_with("postern_session=")),
        "{set:?}"
    );
    let id = browser.others[TRUSTED].clone();
    assert_eq!(id.len(), 64);

    sign_out(&mut browser).await;
    assert!(
        browser.others.contains_key(TRUSTED),
        "signing out keeps the trust"
    );
    let page = browser.password_step(ALICE, "alice-primary").await;
    assert_eq!(page.location(), "/account", "{}", page.body);
    let account = browser.get("/account").await;
    assert_eq!(account.status, StatusCode::OK);
    assert!(
        account.body.contains("Firefox on Linux"),
        "{}",
        account.body
    );
    assert!(account.body.contains("(this browser)"), "{}", account.body);
    let signed_in = audit(&w, "web.login.trusted_browser").await;
    assert_eq!(signed_in.len(), 1, "{signed_in:?}");
    assert!(signed_in[0].contains("Firefox on Linux"), "{signed_in:?}");
    assert_eq!(audit(&w, "trusted_browser.add").await.len(), 1);

    // The sign-in proved the password only: a sensitive action asks for a code.
    let csrf = account.csrf();
    let page = browser
        .post("/account/two-step/backup-codes", &[("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.body);

    // The store keeps the keyed hash, never the cookie's id (nor the password).
    w.gateway.store().close().await;
    let path = w
        .gateway
        .config
        .store
        .url
        .strip_prefix("sqlite://")
        .expect("sqlite")
        .to_owned();
    for file in [path.clone(), format!("{path}-wal")] {
        if let Ok(bytes) = std::fs::read(&file) {
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(&id), "the cookie's id is in {file}");
            assert!(!text.contains("alice-primary"), "the password is in {file}");
        }
    }
}

#[tokio::test]
async fn without_the_box_ticked_the_browser_is_not_trusted() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    browser.password_step(ALICE, "alice-primary").await;
    let page = second_step(&mut browser, &code(0), false).await;
    assert_eq!(page.location(), "/account");
    assert!(browser.others.is_empty(), "{:?}", browser.others);
    sign_out(&mut browser).await;
    let page = browser.password_step(ALICE, "alice-primary").await;
    assert_eq!(page.location(), "/login/code");
    assert_eq!(rows(&w, ALICE).await, 0);
}

#[tokio::test]
async fn a_browser_trusted_for_one_user_vouches_for_no_other() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    sign_in_trusting(&mut browser, ALICE, "alice-primary", 0).await;
    sign_out(&mut browser).await;
    let page = browser.password_step(BOB, "bob-primary").await;
    assert_eq!(page.location(), "/login/code", "{}", page.body);
    assert!(audit(&w, "web.login.trusted_browser").await.is_empty());
    // And a wrong password never gets past the first step, cookie or not.
    let mut browser = Browser::new(&w.app);
    sign_in_trusting(&mut browser, ALICE, "alice-primary", 1).await;
    sign_out(&mut browser).await;
    let page = browser.password_step(ALICE, "not-it").await;
    assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    // Alice's browser is still hers.
    assert_eq!(rows(&w, ALICE).await, 2);
}

#[tokio::test]
async fn an_expired_trusted_browser_asks_again_and_is_forgotten() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    sign_in_trusting(&mut browser, ALICE, "alice-primary", 0).await;
    sign_out(&mut browser).await;
    raw(&w, "UPDATE trusted_browsers SET expires_at = 1").await;
    let page = browser.password_step(ALICE, "alice-primary").await;
    assert_eq!(page.location(), "/login/code", "{}", page.body);
    let forgotten = audit(&w, "trusted_browser.forget").await;
    assert!(forgotten[0].ends_with(": expired"), "{forgotten:?}");
    // Gone from the store, not just refused.
    assert_eq!(
        w.gateway
            .store()
            .sweep_trusted_browsers(now() as i64)
            .await
            .expect("sweep"),
        0
    );
}

#[tokio::test]
async fn expired_trusted_browsers_are_swept() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    sign_in_trusting(&mut browser, ALICE, "alice-primary", 0).await;
    assert_eq!(rows(&w, ALICE).await, 1);
    raw(&w, "UPDATE trusted_browsers SET expires_at = 1").await;
    // Listed no more, and swept.
    assert_eq!(rows(&w, ALICE).await, 0);
    let store = w.gateway.store();
    assert_eq!(
        store
            .sweep_trusted_browsers(now() as i64)
            .await
            .expect("sweep"),
        1
    );
    assert_eq!(
        store
            .sweep_trusted_browsers(now() as i64)
            .await
            .expect("sweep"),
        0
    );
}

#[tokio::test]
async fn a_user_reset_forgets_the_trusted_browsers() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    sign_in_trusting(&mut browser, ALICE, "alice-primary", 0).await;
    w.gateway
        .store()
        .reset_user(ALICE, "cli")
        .await
        .expect("reset");
    assert_eq!(rows(&w, ALICE).await, 0);
    let reset = audit(&w, "user.reset").await;
    assert!(reset[0].contains("trusted_browsers=1"), "{reset:?}");
    // Enrolled again, the browser is asked for the second step.
    w.gateway.enroll(ALICE).await;
    let mut browser_again = Browser::new(&w.app);
    browser_again.others = browser.others.clone();
    let page = browser_again.password_step(ALICE, "alice-primary").await;
    assert_eq!(page.location(), "/login/code", "{}", page.body);
}

#[tokio::test]
async fn the_domain_administrators_reset_forgets_the_trusted_browsers() {
    let w = world().await;
    w.gateway
        .store()
        .set_domain_admin("example.test", BOB, "test")
        .await
        .expect("admin");
    let mut alice = Browser::new(&w.app);
    sign_in_trusting(&mut alice, ALICE, "alice-primary", 0).await;
    let mut bob = Browser::new(&w.app);
    bob.password_step(BOB, "bob-primary").await;
    second_step(&mut bob, &code(1), false).await;
    let csrf = bob.get("/domain").await.csrf();
    let page = bob
        .post(
            "/domain/users/reset",
            &[("csrf", &csrf), ("address", ALICE), ("confirm", "yes")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(rows(&w, ALICE).await, 0);
}

#[tokio::test]
async fn turning_2_step_off_forgets_the_trusted_browsers() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    sign_in_trusting(&mut browser, ALICE, "alice-primary", 0).await;
    // Fresh from the second step, the session may turn 2-Step off.
    let csrf = browser.get("/account/two-step").await.csrf();
    let page = browser
        .post("/account/two-step/off", &[("csrf", &csrf)])
        .await;
    assert_eq!(page.location(), "/account/two-step", "{}", page.body);
    assert_eq!(rows(&w, ALICE).await, 0);
    let off = audit(&w, "trusted_browser.forget_all").await;
    assert_eq!(off, vec!["1 browsers: 2-Step turned off".to_owned()]);
    // Turned on again, the browser is asked for the second step.
    w.gateway.enroll(ALICE).await;
    sign_out(&mut browser).await;
    let page = browser.password_step(ALICE, "alice-primary").await;
    assert_eq!(page.location(), "/login/code", "{}", page.body);
}

#[tokio::test]
async fn a_changed_password_voids_the_trusted_browser() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    sign_in_trusting(&mut browser, ALICE, "alice-primary", 0).await;
    sign_out(&mut browser).await;
    // The password is reset on the mail server, which postern never sees: the
    // same postern now finds the new password there.
    let reset = FakeImap::start(&[(ALICE, "alice-new-password")]).await;
    let mut config = w.gateway.config.clone();
    if let Some(imap) = config.imap.as_mut() {
        imap.upstream = Some(reset.addr.to_string());
    }
    let state = WebState::from_runtime(&w.gateway.runtime, &config).expect("web state");
    let app = router(state);
    let mut same_browser = Browser::new(&app);
    same_browser.others = browser.others.clone();
    let page = same_browser
        .password_step(ALICE, "alice-new-password")
        .await;
    assert_eq!(page.location(), "/login/code", "{}", page.body);
    assert_eq!(rows(&w, ALICE).await, 0);
    let voided = audit(&w, "trusted_browser.forget").await;
    assert!(voided[0].ends_with(": password changed"), "{voided:?}");
    assert!(audit(&w, "web.login.trusted_browser").await.is_empty());
}

#[tokio::test]
async fn the_domain_administrator_can_require_the_second_step_on_every_sign_in() {
    let w = world().await;
    w.gateway
        .store()
        .set_domain_admin("example.test", BOB, "test")
        .await
        .expect("admin");
    let mut alice = Browser::new(&w.app);
    sign_in_trusting(&mut alice, ALICE, "alice-primary", 0).await;
    sign_out(&mut alice).await;

    let mut bob = Browser::new(&w.app);
    bob.password_step(BOB, "bob-primary").await;
    second_step(&mut bob, &code(1), false).await;
    let card = bob.get("/domain").await;
    assert!(
        card.body.contains("Remember trusted browsers"),
        "{}",
        card.body
    );
    let csrf = card.csrf();
    let page = bob
        .post(
            "/domain/trusted-browsers",
            &[("csrf", &csrf), ("allowed", "off")],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(rows(&w, ALICE).await, 0, "turning it off forgets them");
    let setting = audit(&w, "domain.trusted_browsers").await;
    assert_eq!(
        setting,
        vec!["not allowed (1 browsers forgotten)".to_owned()]
    );
    let domain = w
        .gateway
        .store()
        .domain("example.test")
        .await
        .expect("store")
        .expect("domain");
    assert!(!domain.trusted_browsers);

    // Asked again, and the second step no longer offers to remember.
    let page = alice.password_step(ALICE, "alice-primary").await;
    assert_eq!(page.location(), "/login/code");
    let form = alice.get("/login/code").await;
    assert!(!form.body.contains("name=\"remember\""), "{}", form.body);
    // A ticked box sent anyway is ignored.
    let before = alice.others.clone();
    let page = second_step(&mut alice, &code(1), true).await;
    assert_eq!(page.location(), "/account");
    assert_eq!(alice.others, before);
    assert_eq!(rows(&w, ALICE).await, 0);

    // The API shows and changes the setting too.
    let csrf = bob.json("GET", "/api/v1/session", None, "").await;
    let csrf = common::browser::between(&csrf.body, "\"csrf\":\"", "\"");
    let domain = bob.json("GET", "/api/v1/domain", None, "").await;
    assert!(
        domain.body.contains("\"trusted_browsers\":false"),
        "{}",
        domain.body
    );
    let page = bob
        .json(
            "POST",
            "/api/v1/domain/trusted-browsers",
            Some(&csrf),
            r#"{"allowed": true}"#,
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("\"allowed\":true"), "{}", page.body);
}

#[tokio::test]
async fn browsers_are_forgotten_one_by_one_or_all_at_once() {
    let w = world().await;
    let mut laptop = Browser::new(&w.app);
    sign_in_trusting(&mut laptop, ALICE, "alice-primary", 0).await;
    let mut phone = Browser::new(&w.app);
    phone.password_step(ALICE, "alice-primary").await;
    let page = second_step(&mut phone, &code(1), true).await;
    assert_eq!(page.location(), "/account", "{}", page.body);
    assert_eq!(rows(&w, ALICE).await, 2);

    // The laptop forgets the phone: the phone is asked again, the laptop not.
    let csrf = laptop.get("/api/v1/session").await;
    let csrf = common::browser::between(&csrf.body, "\"csrf\":\"", "\"");
    let list = laptop
        .json("GET", "/api/v1/account/trusted-browsers", None, "")
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    let list: serde_json::Value = serde_json::from_str(&list.body).expect("json");
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 2);
    let phone_row = list
        .iter()
        .find(|b| b["this_browser"] == false)
        .expect("the phone");
    assert_eq!(phone_row["browser"], "Firefox on Linux");
    assert!(phone_row["last_used_at"].is_null());
    let account = laptop.get("/account").await;
    let action = format!("/account/trusted-browsers/{}/forget", phone_row["id"]);
    assert!(account.body.contains(&action), "{}", account.body);
    let page = laptop.post(&action, &[("csrf", &account.csrf())]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert!(
        laptop.others.contains_key(TRUSTED),
        "the laptop keeps its cookie"
    );
    assert_eq!(rows(&w, ALICE).await, 1);
    sign_out(&mut phone).await;
    let page = phone.password_step(ALICE, "alice-primary").await;
    assert_eq!(page.location(), "/login/code");

    // Forgetting the same row again is not found.
    let page = laptop
        .json(
            "DELETE",
            &format!("/api/v1/account/trusted-browsers/{}", phone_row["id"]),
            Some(&csrf),
            "",
        )
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND, "{}", page.body);

    // "Forget all browsers" also clears this browser's cookie.
    let page = laptop
        .json(
            "DELETE",
            "/api/v1/account/trusted-browsers",
            Some(&csrf),
            "",
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("\"forgotten\":1"), "{}", page.body);
    assert!(!laptop.others.contains_key(TRUSTED), "{:?}", laptop.others);
    assert_eq!(rows(&w, ALICE).await, 0);
    let forgotten = audit(&w, "trusted_browser.forget").await;
    assert_eq!(forgotten.len(), 1);
    assert_eq!(audit(&w, "trusted_browser.forget_all").await.len(), 1);
}

#[tokio::test]
async fn the_api_trusts_a_browser_at_the_second_step() {
    let w = world().await;
    let mut client = Browser::new(&w.app);
    let session = client.json("GET", "/api/v1/session", None, "").await;
    let csrf = common::browser::between(&session.body, "\"csrf\":\"", "\"");
    let body = format!(r#"{{"address": "{ALICE}", "password": "alice-primary"}}"#);
    let page = client
        .json("POST", "/api/v1/login", Some(&csrf), &body)
        .await;
    assert!(page.body.contains("second_step"), "{}", page.body);
    let csrf = common::browser::between(&page.body, "\"csrf\":\"", "\"");
    let body = format!(r#"{{"code": "{}", "remember": true}}"#, code(0));
    let page = client
        .json("POST", "/api/v1/login/code", Some(&csrf), &body)
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(client.others.contains_key(TRUSTED));
    let csrf = common::browser::between(&page.body, "\"csrf\":\"", "\"");
    client.json("POST", "/api/v1/logout", Some(&csrf), "").await;

    let session = client.json("GET", "/api/v1/session", None, "").await;
    let csrf = common::browser::between(&session.body, "\"csrf\":\"", "\"");
    let body = format!(r#"{{"address": "{ALICE}", "password": "alice-primary"}}"#);
    let page = client
        .json("POST", "/api/v1/login", Some(&csrf), &body)
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("\"state\":\"user\""), "{}", page.body);
}
