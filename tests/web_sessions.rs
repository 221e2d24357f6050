//! Web sign-in sessions live in the store: what is at rest, what survives a
//! restart (a second node built on the same SQLite file, as `serve` does at
//! start), and what ends them (sign-out, sign-out-everywhere, a disabled or
//! reset user, expiry).

mod common;

use axum::Router;
use axum::http::StatusCode;
use common::Gateway;
use common::browser::Browser;
use common::fake_imap::FakeImap;
use postern::credentials::totp;
use postern::policy::DomainStatus;
use postern::web::{WebState, router};
use sqlx::{Connection, Row};

const ALICE: &str = "alice@example.test";
/// The secret `Gateway::enroll` provisions.
const SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

struct World {
    _fake: FakeImap,
    gateway: Gateway,
    app: Router,
}

async fn world() -> World {
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    let gateway = Gateway::start_imap(fake.addr, "allow_plaintext_auth = true").await;
    gateway.domain("example.test", DomainStatus::Enabled).await;
    let app = web(&gateway);
    World {
        _fake: fake,
        gateway,
        app,
    }
}

fn web(gateway: &Gateway) -> Router {
    router(WebState::from_runtime(&gateway.runtime, &gateway.config).expect("web state"))
}

/// The same browser (its cookie) in front of another node's router.
fn moved(browser: &Browser, app: &Router) -> Browser {
    let mut other = Browser::new(app);
    other.cookie = browser.cookie.clone();
    other.cookie_name = browser.cookie_name.clone();
    other
}

async fn signed_in(app: &Router) -> Browser {
    let mut browser = Browser::new(app);
    let page = browser.password_step(ALICE, "alice-primary").await;
    assert_eq!(page.location(), "/account", "{}", page.body);
    browser
}

/// Whether the browser's session shows the account page.
async fn on_account(browser: &mut Browser) -> bool {
    let page = browser.get("/account").await;
    match page.status {
        StatusCode::OK => {
            assert!(page.body.contains(ALICE), "{}", page.body);
            true
        }
        _ => {
            assert_eq!(page.location(), "/login");
            false
        }
    }
}

/// A direct connection to the gateway's SQLite file, to look at what is at rest.
async fn database(gateway: &Gateway) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&gateway.config.store.url)
        .await
        .expect("sqlite")
}

fn code_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    totp::code_at(SECRET, now).expect("code")
}

#[tokio::test]
async fn the_cookie_at_rest_is_not_the_session_id() {
    let w = world().await;
    let browser = signed_in(&w.app).await;
    let cookie = browser.cookie.clone().expect("a session cookie");
    let mut db = database(&w.gateway).await;
    let rows = sqlx::query("SELECT id_hash, kind, subject FROM web_sessions")
        .fetch_all(&mut db)
        .await
        .expect("rows");
    // The anonymous session of the login form was replaced at sign-in.
    assert_eq!(rows.len(), 1);
    let id_hash: String = rows[0].get("id_hash");
    assert_eq!(rows[0].get::<String, _>("kind"), "user");
    assert_eq!(rows[0].get::<String, _>("subject"), ALICE);
    assert_ne!(id_hash, cookie);
    assert!(!id_hash.contains(&cookie) && !cookie.contains(&id_hash));
    // Pasting the stored value into a cookie signs nobody in.
    let mut thief = Browser::new(&w.app);
    thief.cookie = Some(id_hash);
    assert!(!on_account(&mut thief).await);
}

/// Every `web_sessions` row.
async fn session_rows(db: &mut sqlx::SqliteConnection) -> i64 {
    sqlx::query("SELECT COUNT(*) AS n FROM web_sessions")
        .fetch_one(db)
        .await
        .expect("count")
        .get("n")
}

#[tokio::test]
async fn visitors_of_the_login_forms_write_nothing_until_they_sign_in() {
    let w = world().await;
    let mut db = database(&w.gateway).await;
    // A flood of visitors: each gets a form, none a row.
    for path in ["/login", "/admin/login", "/login", "/admin/login"] {
        for _ in 0..25 {
            let mut visitor = Browser::new(&w.app);
            let page = visitor.get(path).await;
            assert_eq!(page.status, StatusCode::OK, "{path}");
            assert!(!page.csrf().is_empty(), "{path} carries a form token");
        }
    }
    assert_eq!(
        session_rows(&mut db).await,
        0,
        "anonymous visits are not stored"
    );
    // The form still works, and still needs its own token.
    let mut visitor = Browser::new(&w.app);
    let form = visitor.get("/login").await;
    let mut forger = Browser::new(&w.app);
    forger.get("/login").await;
    let forged = forger
        .post(
            "/login",
            &[
                ("csrf", &form.csrf()),
                ("address", ALICE),
                ("password", "alice-primary"),
            ],
        )
        .await;
    assert_ne!(
        forged.location(),
        "/account",
        "another visitor's token signs nobody in"
    );
    let page = visitor.password_step(ALICE, "alice-primary").await;
    assert_eq!(page.location(), "/account", "{}", page.body);
    assert_eq!(session_rows(&mut db).await, 1, "the sign-in made one row");
    // A login form older than ten minutes is a new visit (a fresh cookie).
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let stale = format!("a.{}.{}", now - 601, "0".repeat(64));
    let mut late = Browser::new(&w.app);
    late.cookie = Some(stale.clone());
    late.get("/login").await;
    assert_ne!(late.cookie.as_deref(), Some(stale.as_str()));
}

#[tokio::test]
async fn a_signed_in_browser_stays_signed_in_after_a_restart_and_on_another_node() {
    let w = world().await;
    let browser = signed_in(&w.app).await;
    let restarted = w.gateway.another_node().await;
    let mut after = moved(&browser, &web(&restarted));
    assert!(on_account(&mut after).await);
    // A form of the page served before the restart still posts: the CSRF
    // token is in the row too.
    let form = after.get("/account").await;
    let page = after.post("/logout", &[("csrf", &form.csrf())]).await;
    assert_eq!(page.location(), "/login");
    assert!(!on_account(&mut moved(&browser, &w.app)).await);
}

#[tokio::test]
async fn a_half_done_second_step_continues_after_a_restart() {
    let w = world().await;
    w.gateway.enroll(ALICE).await;
    let mut browser = Browser::new(&w.app);
    let page = browser.password_step(ALICE, "alice-primary").await;
    assert_eq!(page.location(), "/login/code");
    let restarted = w.gateway.another_node().await;
    let mut after = moved(&browser, &web(&restarted));
    let page = after.code_step(&code_now()).await;
    assert_eq!(page.location(), "/account", "{}", page.body);
    assert!(on_account(&mut after).await);
}

#[tokio::test]
async fn logout_ends_only_its_own_session_and_sign_out_everywhere_ends_all() {
    let w = world().await;
    let mut laptop = signed_in(&w.app).await;
    let mut phone = signed_in(&w.app).await;
    let form = laptop.get("/account").await;
    assert!(form.body.contains("Sign out everywhere"), "{}", form.body);
    laptop.post("/logout", &[("csrf", &form.csrf())]).await;
    assert!(!on_account(&mut laptop).await);
    assert!(on_account(&mut phone).await);

    // From another node, through the account page: the phone is signed out
    // on the first node too.
    let other = w.gateway.another_node().await;
    let mut laptop = signed_in(&web(&other)).await;
    let form = laptop.get("/account").await;
    let page = laptop
        .post("/account/sign-out-everywhere", &[("csrf", &form.csrf())])
        .await;
    assert_eq!(page.location(), "/login");
    assert!(!on_account(&mut laptop).await);
    assert!(!on_account(&mut phone).await);

    // And through the API.
    let mut phone = signed_in(&w.app).await;
    let mut api = Browser::new(&w.app);
    let session = api.json("GET", "/api/v1/session", None, "").await;
    let csrf: serde_json::Value = serde_json::from_str(&session.body).expect("json");
    let csrf = csrf["csrf"].as_str().expect("csrf").to_owned();
    let login = api
        .json(
            "POST",
            "/api/v1/login",
            Some(&csrf),
            &format!(r#"{{"address":"{ALICE}","password":"alice-primary"}}"#),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let body: serde_json::Value = serde_json::from_str(&login.body).expect("json");
    let csrf = body["csrf"].as_str().expect("csrf").to_owned();
    let ended = api
        .json(
            "POST",
            "/api/v1/account/sign-out-everywhere",
            Some(&csrf),
            "",
        )
        .await;
    assert_eq!(ended.status, StatusCode::OK, "{}", ended.body);
    assert!(ended.body.contains(r#""ended":2"#), "{}", ended.body);
    assert!(!on_account(&mut phone).await);
    let gone = api
        .json("GET", "/api/v1/account/app-passwords", None, "")
        .await;
    assert_eq!(gone.status, StatusCode::UNAUTHORIZED);

    // Both are in the audit log, with the client's address.
    let audited = w
        .gateway
        .store()
        .list_audit(postern::store::AuditFilter {
            user: Some(ALICE.into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("audit");
    let signed_out: Vec<_> = audited
        .iter()
        .filter(|r| r.action == "web.sign_out_everywhere")
        .collect();
    assert_eq!(signed_out.len(), 2, "{audited:?}");
    assert!(
        signed_out
            .iter()
            .any(|r| r.detail == "2 browser sessions ended")
    );
    assert!(
        signed_out
            .iter()
            .all(|r| r.actor == format!("user:{ALICE}") && r.ip.is_some()),
        "{signed_out:?}"
    );
}

#[tokio::test]
async fn disabling_or_resetting_a_user_ends_their_web_sessions() {
    let w = world().await;
    let mut browser = signed_in(&w.app).await;
    w.gateway
        .store()
        .set_user_disabled(ALICE, true, "test")
        .await
        .expect("disable");
    assert!(!on_account(&mut browser).await);
    w.gateway
        .store()
        .set_user_disabled(ALICE, false, "test")
        .await
        .expect("enable");

    let mut browser = signed_in(&w.app).await;
    w.gateway
        .store()
        .reset_user(ALICE, "test")
        .await
        .expect("reset");
    assert!(!on_account(&mut browser).await);
}

#[tokio::test]
async fn an_expired_session_is_not_served_and_the_sweep_deletes_it() {
    let w = world().await;
    let mut browser = signed_in(&w.app).await;
    let mut db = database(&w.gateway).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // Idle for 31 minutes: the deadline written at the last activity passed.
    sqlx::query("UPDATE web_sessions SET last_seen_at = $1, expires_at = $2")
        .bind(now - 31 * 60)
        .bind(now - 60)
        .execute(&mut db)
        .await
        .expect("age the session");
    assert!(!on_account(&mut browser).await);
    let swept = w
        .gateway
        .store()
        .sweep_web_sessions(now)
        .await
        .expect("sweep");
    assert_eq!(swept, 1);
    let left: i64 = sqlx::query("SELECT COUNT(*) AS n FROM web_sessions")
        .fetch_one(&mut db)
        .await
        .expect("count")
        .get("n");
    assert_eq!(left, 0);
}

#[tokio::test]
async fn activity_moves_the_idle_deadline_but_never_past_twelve_hours() {
    let w = world().await;
    let mut browser = signed_in(&w.app).await;
    let mut db = database(&w.gateway).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // Signed in 11 h 50 min ago, last seen five minutes ago.
    sqlx::query("UPDATE web_sessions SET created_at = $1, last_seen_at = $2, expires_at = $3")
        .bind(now - (11 * 3600 + 50 * 60))
        .bind(now - 300)
        .bind(now + 25 * 60)
        .execute(&mut db)
        .await
        .expect("age the session");
    assert!(on_account(&mut browser).await);
    let row = sqlx::query("SELECT created_at, last_seen_at, expires_at FROM web_sessions")
        .fetch_one(&mut db)
        .await
        .expect("row");
    let created: i64 = row.get("created_at");
    assert!(row.get::<i64, _>("last_seen_at") >= now);
    // Thirty idle minutes would pass the absolute limit: it wins.
    assert_eq!(row.get::<i64, _>("expires_at"), created + 12 * 3600);
}
