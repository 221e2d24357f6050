//! Several nodes on one PostgreSQL: two real `postern serve` processes (nodes `a`
//! and `b`) share a fresh schema and one secrets key; `postern admin` (a third
//! process) lists the sessions of both and a change made through it drops the
//! matching sessions held by every node. Runs when `POSTERN_TEST_DATABASE_URL`
//! names a PostgreSQL database (`.ci/run` sets it).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::fake_imap::FakeImap;
use common::process::{ServeProcess, write_config};
use common::{LineClient, connect};
use serde_json::Value;
use sqlx::{AssertSqlSafe, Connection};
use tokio::net::TcpStream;

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";

/// A fresh schema on the test database, dropped at the end.
struct Schema {
    base: String,
    name: String,
    url: String,
}

impl Schema {
    async fn create() -> Option<Schema> {
        let base = std::env::var("POSTERN_TEST_DATABASE_URL").ok()?;
        let name = format!("c_{:016x}", rand::random::<u64>());
        let mut conn = sqlx::PgConnection::connect(&base).await.expect("postgres");
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .expect("schema");
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
        Some(Schema { base, name, url })
    }

    async fn drop(self) {
        let mut conn = sqlx::PgConnection::connect(&self.base)
            .await
            .expect("postgres");
        let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {} CASCADE", self.name)))
            .execute(&mut conn)
            .await;
    }
}

/// `postern --config CONFIG <args>`; asserts success; returns stdout.
fn admin(config: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("POSTERN_CONFIG")
        .output()
        .expect("run postern admin");
    assert!(
        out.status.success(),
        "postern {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A node's config under `dir/name`: its own listeners, certificate and `[node]
/// name`, the shared store and key.
fn node_config(dir: &Path, name: &str, upstream: SocketAddr, url: &str, key: &Path) -> PathBuf {
    let home = dir.join(name);
    std::fs::create_dir(&home).expect("node dir");
    let extra = format!("[node]\nname = \"{name}\"");
    write_config(&home, upstream, Some(url), Some(key), "", &extra)
}

/// The operator's CLI config in `dir`: the shared store and key, nothing else.
fn cli_config(dir: &Path, url: &str, key: &Path) -> PathBuf {
    let cli = dir.join("admin.toml");
    std::fs::write(
        &cli,
        format!(
            "[store]\nurl = \"{url}\"\n[secrets]\nkey_file = \"{}\"\n",
            key.display()
        ),
    )
    .expect("write the CLI config");
    cli
}

/// Two nodes' configs on one schema and key, in front of `upstream`, with
/// example.test Enabled. The CLI runs first: it creates the tables and the key,
/// so the nodes never race to make them.
struct TwoNodes {
    dir: tempfile::TempDir,
    cli: PathBuf,
    configs: [PathBuf; 2],
}

fn two_nodes(schema: &Schema, upstream: SocketAddr) -> TwoNodes {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("k");
    let cli = cli_config(dir.path(), &schema.url, &key);
    admin(&cli, &["admin", "domain", "add", "example.test"]);
    admin(&cli, &["admin", "domain", "feature", "example.test", "on"]);
    admin(
        &cli,
        &["admin", "domain", "status", "example.test", "enabled"],
    );
    let configs = [
        node_config(dir.path(), "a", upstream, &schema.url, &key),
        node_config(dir.path(), "b", upstream, &schema.url, &key),
    ];
    TwoNodes { dir, cli, configs }
}

async fn session(addr: SocketAddr, user: &str, password: &str) -> LineClient<TcpStream> {
    let mut client = connect(addr).await;
    client.line().await;
    client
        .send(format!("a LOGIN {user} {password}\r\nb NOOP\r\n").as_bytes())
        .await;
    assert!(client.until("a ").await.concat().starts_with("a OK"));
    client.until("b OK").await;
    client
}

#[tokio::test]
async fn a_cli_change_on_one_node_drops_sessions_on_another() {
    let Some(schema) = Schema::create().await else {
        eprintln!("POSTERN_TEST_DATABASE_URL not set: cluster test skipped");
        return;
    };
    let fake = FakeImap::start(&[(ALICE, "alice-primary"), (BOB, "bob-primary")]).await;
    let TwoNodes {
        dir: _dir,
        cli,
        configs: [config_a, config_b],
    } = two_nodes(&schema, fake.addr);
    let node_a = ServeProcess::start(&config_a, 2).await;
    let node_b = ServeProcess::start(&config_b, 2).await;
    assert_ne!(node_a.addr(false), node_b.addr(false));

    let mut on_b = session(node_b.addr(false), ALICE, "alice-primary").await;
    let mut also_on_a = session(node_a.addr(false), BOB, "bob-primary").await;

    // Every node's sessions are listed, by a process that is neither node. Each
    // node writes its session rows in batches, a moment after the login: poll
    // the listing until both are there (bounded).
    let list = || {
        let listed: Value =
            serde_json::from_str(&admin(&cli, &["admin", "session", "list", "--json"])).unwrap();
        let mut listed: Vec<(String, String)> = listed
            .as_array()
            .expect("a JSON array")
            .iter()
            .map(|s| {
                (
                    s["node"].as_str().unwrap().to_owned(),
                    s["user"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        listed.sort();
        listed
    };
    let mut listed = list();
    for _ in 0..100 {
        if listed.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        listed = list();
    }
    assert_eq!(
        listed,
        vec![("a".into(), BOB.into()), ("b".into(), ALICE.into())]
    );

    admin(
        &cli,
        &["admin", "domain", "status", "example.test", "forced"],
    );

    for client in [&mut on_b, &mut also_on_a] {
        let line = client.line().await;
        assert!(
            line.starts_with("* BYE [ALERT]") && line.contains("2-Step"),
            "{line:?}"
        );
        assert!(client.closed().await);
    }

    drop((node_a, node_b));
    schema.drop().await;
}

/// One attempt from client number `n` (a PROXY header from a trusted proxy, so
/// each guess comes from its own address, as in a distributed attack).
async fn guess(addr: SocketAddr, n: u32, password: &str) -> String {
    let mut client = LineClient::new(TcpStream::connect(addr).await.expect("connect"));
    client
        .send(
            format!(
                "PROXY TCP4 10.9.{}.{} 127.0.0.1 4000 143\r\n",
                n / 250,
                n % 250 + 1
            )
            .as_bytes(),
        )
        .await;
    client.line().await;
    client
        .send(format!("a LOGIN {ALICE} {password}\r\n").as_bytes())
        .await;
    client.until("a ").await.concat()
}

#[tokio::test]
async fn an_account_block_counts_failures_on_every_node() {
    let Some(schema) = Schema::create().await else {
        eprintln!("POSTERN_TEST_DATABASE_URL not set: cluster test skipped");
        return;
    };
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    let first = common::Gateway::start_on(
        fake.addr,
        "allow_plaintext_auth = true",
        "[limits]\ntrusted_networks = []\n[proxy_protocol]\ntrusted_proxies = [\"127.0.0.0/8\"]",
        Some(&schema.url),
    )
    .await;
    let second = first.another_node().await;
    let nodes = [
        first.addr(postern::policy::Protocol::Imap, false),
        second.addr(postern::policy::Protocol::Imap, false),
    ];
    // 50 guesses on each node: 100 for the account.
    for n in 0..100 {
        let reply = guess(nodes[n as usize % 2], n, &format!("guess-{n}")).await;
        assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    }
    let upstream_logins = fake.logins().len();
    for (n, addr) in nodes.iter().enumerate() {
        let reply = guess(*addr, 1000 + n as u32, "alice-primary").await;
        assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    }
    assert_eq!(
        fake.logins().len(),
        upstream_logins,
        "the upstream was not asked"
    );

    // The operator's `postern admin user enable`, from a third process.
    let dir = tempfile::tempdir().unwrap();
    let cli = cli_config(dir.path(), &schema.url, &first.config.secrets.key_file);
    admin(&cli, &["admin", "user", "enable", ALICE]);
    for (n, addr) in nodes.iter().enumerate() {
        let reply = guess(*addr, 2000 + n as u32, "alice-primary").await;
        assert!(reply.starts_with("a OK"), "{reply}");
    }

    drop((first, second));
    schema.drop().await;
}

/// A minimal HTTP/1.1 client with a one-cookie jar, for the web UI of real
/// nodes: each request may go to another node, as behind a load balancer with
/// no affinity.
struct CookieClient {
    cookie: Option<(String, String)>,
}

struct HttpAnswer {
    status: u16,
    body: String,
}

impl HttpAnswer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

impl CookieClient {
    fn new() -> Self {
        Self { cookie: None }
    }

    /// `method path` on `node` with a JSON body and the CSRF header.
    async fn call(
        &mut self,
        node: SocketAddr,
        method: &str,
        path: &str,
        csrf: Option<&str>,
        body: &str,
    ) -> HttpAnswer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {node}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some((name, value)) = &self.cookie {
            request.push_str(&format!("Cookie: {name}={value}\r\n"));
        }
        if let Some(token) = csrf {
            request.push_str(&format!("X-CSRF-Token: {token}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        let mut stream = TcpStream::connect(node)
            .await
            .expect("connect to the web UI");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .await
            .expect("read answer");
        let (head, body) = answer.split_once("\r\n\r\n").expect("HTTP head");
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.eq_ignore_ascii_case("set-cookie") {
                let pair = value.trim().split(';').next().unwrap_or("");
                let (name, value) = pair.split_once('=').expect("cookie pair");
                self.cookie = (!value.is_empty()).then(|| (name.to_owned(), value.to_owned()));
            }
        }
        HttpAnswer {
            status,
            body: body.to_owned(),
        }
    }
}

/// The TOTP code of `secret` at `now + offset` seconds.
fn totp_code(secret: &str, offset: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    postern::credentials::totp::code_at(secret, now + offset).expect("code")
}

#[tokio::test]
async fn a_browser_alternating_nodes_signs_in_enrolls_and_manages_app_passwords() {
    let Some(schema) = Schema::create().await else {
        eprintln!("POSTERN_TEST_DATABASE_URL not set: cluster test skipped");
        return;
    };
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    let TwoNodes {
        dir: _dir,
        cli: _,
        configs: [config_a, config_b],
    } = two_nodes(&schema, fake.addr);
    let mut nodes = [
        ServeProcess::start(&config_a, 2).await,
        ServeProcess::start(&config_b, 2).await,
    ];
    // Every request goes to the other node than the one before.
    let mut turn = 0usize;
    fn next(turn: &mut usize, nodes: &[ServeProcess; 2]) -> SocketAddr {
        *turn += 1;
        nodes[*turn % 2].web
    }
    let mut browser = CookieClient::new();

    // Sign in with the password (no second factor yet).
    let session = browser
        .call(next(&mut turn, &nodes), "GET", "/api/v1/session", None, "")
        .await;
    assert_eq!(session.status, 200, "{}", session.body);
    let csrf = session.json()["csrf"].as_str().expect("csrf").to_owned();
    let login = browser
        .call(
            next(&mut turn, &nodes),
            "POST",
            "/api/v1/login",
            Some(&csrf),
            &format!(r#"{{"address":"{ALICE}","password":"alice-primary"}}"#),
        )
        .await;
    assert_eq!(login.status, 200, "{}", login.body);
    let csrf = login.json()["csrf"].as_str().expect("csrf").to_owned();

    // Enroll an authenticator.
    let start = browser
        .call(
            next(&mut turn, &nodes),
            "POST",
            "/api/v1/account/two-step/totp",
            Some(&csrf),
            "",
        )
        .await;
    assert_eq!(start.status, 200, "{}", start.body);
    let secret = start.json()["secret"].as_str().expect("secret").to_owned();
    let confirm = browser
        .call(
            next(&mut turn, &nodes),
            "POST",
            "/api/v1/account/two-step/totp/confirm",
            Some(&csrf),
            &format!(r#"{{"code":"{}"}}"#, totp_code(&secret, 0)),
        )
        .await;
    assert!(confirm.status == 200, "{} {}", confirm.status, confirm.body);
    let csrf = confirm.json()["csrf"].as_str().unwrap_or(&csrf).to_owned();
    let out = browser
        .call(
            next(&mut turn, &nodes),
            "POST",
            "/api/v1/logout",
            Some(&csrf),
            "",
        )
        .await;
    assert_eq!(out.status, 204, "{}", out.body);

    // Sign in again: password on one node, the code on the other.
    let session = browser
        .call(next(&mut turn, &nodes), "GET", "/api/v1/session", None, "")
        .await;
    let csrf = session.json()["csrf"].as_str().expect("csrf").to_owned();
    let login = browser
        .call(
            next(&mut turn, &nodes),
            "POST",
            "/api/v1/login",
            Some(&csrf),
            &format!(r#"{{"address":"{ALICE}","password":"alice-primary"}}"#),
        )
        .await;
    assert_eq!(login.status, 200, "{}", login.body);
    assert!(login.body.contains("second"), "{}", login.body);
    let csrf = login.json()["csrf"].as_str().expect("csrf").to_owned();

    // A restart of node a in the middle of the second step loses nothing.
    let config = [&config_a, &config_b];
    let restarted = (turn + 1) % 2;
    nodes[restarted].signal("TERM");
    nodes[restarted]
        .wait_exit(common::process::PROCESS_TIMEOUT)
        .await;
    nodes[restarted] = ServeProcess::start(config[restarted], 2).await;

    let code = browser
        .call(
            next(&mut turn, &nodes),
            "POST",
            "/api/v1/login/code",
            Some(&csrf),
            &format!(r#"{{"code":"{}"}}"#, totp_code(&secret, 30)),
        )
        .await;
    assert_eq!(code.status, 200, "{}", code.body);
    assert!(code.body.contains("\"state\":\"user\""), "{}", code.body);
    let csrf = code.json()["csrf"].as_str().expect("csrf").to_owned();

    // An application password, made on one node, works over IMAP on the other.
    let created = browser
        .call(
            next(&mut turn, &nodes),
            "POST",
            "/api/v1/account/app-passwords",
            Some(&csrf),
            r#"{"name":"phone","scopes":["imap"]}"#,
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_i64().expect("id");
    let password = created.json()["password"]
        .as_str()
        .expect("password")
        .to_owned();
    let web_node = turn % 2;
    let imap_node = nodes[(web_node + 1) % 2].addr(false);
    let mut phone = connect(imap_node).await;
    phone.line().await;
    phone
        .send(format!("a LOGIN {ALICE} \"{password}\"\r\n").as_bytes())
        .await;
    assert!(phone.until("a ").await.concat().starts_with("a OK"));

    let listed = browser
        .call(
            next(&mut turn, &nodes),
            "GET",
            "/api/v1/account/app-passwords",
            None,
            "",
        )
        .await;
    assert!(
        listed.body.contains("\"name\":\"phone\""),
        "{}",
        listed.body
    );

    // Revoked on the web of the node that made it: the phone's session on the
    // other node ends, and the password no longer logs in there.
    assert_eq!((turn + 1) % 2, web_node);
    let revoked = browser
        .call(
            next(&mut turn, &nodes),
            "DELETE",
            &format!("/api/v1/account/app-passwords/{id}"),
            Some(&csrf),
            "",
        )
        .await;
    assert_eq!(revoked.status, 204, "{}", revoked.body);
    let bye = phone.line().await;
    assert!(bye.starts_with("* BYE"), "{bye:?}");
    let mut again = connect(imap_node).await;
    again.line().await;
    again
        .send(format!("a LOGIN {ALICE} \"{password}\"\r\n").as_bytes())
        .await;
    assert!(again.until("a ").await.concat().starts_with("a NO"));

    // Still signed in, on both nodes.
    for _ in 0..2 {
        let list = browser
            .call(
                next(&mut turn, &nodes),
                "GET",
                "/api/v1/account/app-passwords",
                None,
                "",
            )
            .await;
        assert_eq!(list.status, 200, "{}", list.body);
    }

    drop(nodes);
    schema.drop().await;
}

/// One login as `user` from `client` (a PROXY header from a trusted proxy):
/// the reply, and how long the client waited for it.
async fn timed_guess(
    addr: SocketAddr,
    client: &str,
    user: &str,
    password: &str,
) -> (String, std::time::Duration) {
    let mut connection = LineClient::new(TcpStream::connect(addr).await.expect("connect"));
    connection
        .send(format!("PROXY TCP4 {client} 127.0.0.1 4000 143\r\n").as_bytes())
        .await;
    connection.line().await;
    let started = std::time::Instant::now();
    connection
        .send(format!("a LOGIN {user} {password}\r\n").as_bytes())
        .await;
    let reply = connection.until("a ").await.concat();
    (reply, started.elapsed())
}

/// Until `node` has learnt (through the event log) that `client` failed.
async fn knows_of_failure(node: &common::Gateway, client: &str) {
    let ip: std::net::IpAddr = client.parse().unwrap();
    for _ in 0..100 {
        if !node.runtime.penalties.delay(ip).await.is_zero() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the failure on the other node never reached this one");
}

#[tokio::test]
async fn guesses_spread_over_two_nodes_meet_one_client_delay() {
    let Some(schema) = Schema::create().await else {
        eprintln!("POSTERN_TEST_DATABASE_URL not set: cluster test skipped");
        return;
    };
    let fake = FakeImap::start(&[(ALICE, "alice-primary"), (BOB, "bob-primary")]).await;
    let first = common::Gateway::start_on(
        fake.addr,
        "allow_plaintext_auth = true",
        "[limits]\ntrusted_networks = []\n[proxy_protocol]\ntrusted_proxies = [\"127.0.0.0/8\"]",
        Some(&schema.url),
    )
    .await;
    let second = first.another_node().await;
    let a = first.addr(postern::policy::Protocol::Imap, false);
    let b = second.addr(postern::policy::Protocol::Imap, false);
    let attacker = "10.79.0.1";
    let (reply, waited) = timed_guess(a, attacker, BOB, "guess-1").await;
    assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    assert!(waited < postern::penalty::BASE_DELAY, "{waited:?}");
    knows_of_failure(&second, attacker).await;
    // The next guess, on the other node, waits as it would on the first...
    let (reply, waited) = timed_guess(b, attacker, BOB, "guess-2").await;
    assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    assert!(waited >= postern::penalty::BASE_DELAY, "{waited:?}");
    // ...and back on the first, the delay has doubled.
    let (reply, waited) = timed_guess(a, attacker, BOB, "guess-3").await;
    assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    assert!(waited >= postern::penalty::BASE_DELAY * 2, "{waited:?}");
    // The attacker's own account forgives nothing of the guesses on bob.
    let (reply, _) = timed_guess(b, attacker, ALICE, "alice-primary").await;
    assert!(reply.starts_with("a OK"), "{reply}");
    let (reply, waited) = timed_guess(b, attacker, BOB, "guess-4").await;
    assert!(reply.starts_with("a NO [AUTHENTICATIONFAILED]"), "{reply}");
    assert!(waited >= postern::penalty::BASE_DELAY * 2, "{waited:?}");
    // Another client is not delayed on either node.
    let (_, waited) = timed_guess(b, "10.79.1.1", ALICE, "alice-primary").await;
    assert!(waited < postern::penalty::BASE_DELAY, "{waited:?}");

    drop((first, second));
    schema.drop().await;
}

#[tokio::test]
async fn admin_sign_in_guesses_spread_over_two_nodes_meet_one_lock() {
    use axum::http::StatusCode;
    use common::browser::Browser;
    let Some(schema) = Schema::create().await else {
        eprintln!("POSTERN_TEST_DATABASE_URL not set: cluster test skipped");
        return;
    };
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    let first = common::Gateway::start_on(
        fake.addr,
        "allow_plaintext_auth = true",
        "",
        Some(&schema.url),
    )
    .await;
    let second = first.another_node().await;
    let hash = postern::credentials::admin_password::hash_blocking("admin-secret").expect("hash");
    first
        .store()
        .add_sysadmin("admin", &hash, "cli")
        .await
        .unwrap();
    let apps = [&first, &second].map(|node| {
        postern::web::router(
            postern::web::WebState::from_runtime(&node.runtime, &node.config).expect("web"),
        )
    });
    // A client the config exempts from the delay (127.0.0.0/8); the lock
    // still applies to it.
    let attacker = "127.0.0.9:40000";
    let sign_in = |n: usize, password: String| {
        let app = apps[n % 2].clone();
        async move {
            let mut browser = Browser::from_client(&app, attacker);
            let form = browser.get("/admin/login").await;
            browser
                .post(
                    "/admin/login",
                    &[
                        ("csrf", &form.csrf()),
                        ("name", "admin"),
                        ("password", &password),
                    ],
                )
                .await
        }
    };
    for n in 0..postern::web::attempts::MAX_FAILURES as usize {
        let page = sign_in(n, format!("guess-{n}")).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED);
    }
    for n in 0..2 {
        let locked = sign_in(n, "admin-secret".into()).await;
        assert_eq!(locked.status, StatusCode::FORBIDDEN, "{}", locked.body);
        assert!(locked.body.contains("wait 15 minutes"));
    }

    drop((first, second));
    schema.drop().await;
}
