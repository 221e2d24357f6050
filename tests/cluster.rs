//! Several nodes on one PostgreSQL: a change made through `postern admin` (another
//! process) drops the matching sessions held by every node. Runs when
//! `POSTERN_TEST_DATABASE_URL` names a PostgreSQL database (`.ci/run` sets it).

mod common;

use common::fake_imap::FakeImap;
use common::{Gateway, LineClient, connect};
use postern::policy::{DomainStatus, Protocol};
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

async fn session(gateway: &Gateway, user: &str, password: &str) -> LineClient<TcpStream> {
    let mut client = connect(gateway.addr(Protocol::Imap, false)).await;
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
    let extra = "allow_plaintext_auth = true";
    let node_a =
        Gateway::start_on(fake.addr, extra, "[node]\nname = \"a\"", Some(&schema.url)).await;
    let node_b =
        Gateway::start_on(fake.addr, extra, "[node]\nname = \"b\"", Some(&schema.url)).await;
    node_a.domain("example.test", DomainStatus::Enabled).await;

    let mut on_b = session(&node_b, ALICE, "alice-primary").await;
    let mut also_on_a = session(&node_a, BOB, "bob-primary").await;
    // Every node's sessions are listed from any node.
    let mut listed: Vec<(String, String)> = node_a
        .store()
        .list_sessions()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.node, s.user_address))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![("a".into(), BOB.into()), ("b".into(), ALICE.into())]
    );

    // Node A's operator, in another process.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("postern.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"{}\"\n[secrets]\nkey_file = \"{}\"\n",
            schema.url,
            dir.path().join("k").display()
        ),
    )
    .unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .args([
            "admin",
            "domain",
            "status",
            "example.test",
            "forced",
            "--config",
        ])
        .arg(&config)
        .status()
        .unwrap();
    assert!(status.success());

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
