//! The store, as the CLI, the web UI and the gateway use it. Every test runs on a
//! fresh SQLite file, and again on PostgreSQL (in a schema of its own) when
//! `POSTERN_TEST_DATABASE_URL` names a server.

use postern::policy::{DomainStatus, Protocol, Scopes};
use postern::store::{
    AuditFilter, Backend, EventKind, EventRecord, FactorKind, MAX_APP_PASSWORDS, NewAppPassword,
    NewAudit, SessionRow, Store, StoreError,
};
use sqlx::{AssertSqlSafe, Connection};

/// One database under test.
struct TestDb {
    store: Store,
    /// The URL the store was opened with, for tests that reach past the store.
    url: String,
    _dir: Option<tempfile::TempDir>,
    /// (server URL, schema) to drop at the end, on PostgreSQL.
    pg_schema: Option<(String, String)>,
}

impl TestDb {
    async fn finish(self) {
        self.store.close().await;
        if let Some((base, schema)) = self.pg_schema {
            let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
            sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }

    /// Runs SQL straight on the database, to plant data the store would not write.
    async fn raw(&self, sql: &str) {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.url).await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

/// A fresh SQLite store, plus a fresh PostgreSQL one if configured.
async fn test_dbs() -> Vec<TestDb> {
    let mut dbs = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("postern.db").display());
    dbs.push(TestDb {
        store: Store::connect(&url).await.unwrap(),
        url,
        _dir: Some(dir),
        pg_schema: None,
    });
    if let Ok(base) = std::env::var("POSTERN_TEST_DATABASE_URL")
        && !base.is_empty()
    {
        let schema = format!("t_{:016x}", rand::random::<u64>());
        let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let store = Store::connect(&url).await.unwrap();
        assert_eq!(store.backend(), Backend::Postgres);
        dbs.push(TestDb {
            store,
            url,
            _dir: None,
            pg_schema: Some((base, schema)),
        });
    }
    dbs
}

/// Runs the body once per database; failures name the backend.
macro_rules! on_each_db {
    (|$s:ident, $db:ident| $body:block) => {
        for $db in test_dbs().await {
            eprintln!("backend: {:?}", $db.store.backend());
            let $s: &Store = &$db.store;
            $body
            $db.finish().await;
        }
    };
    (|$s:ident| $body:block) => {
        on_each_db!(|$s, db| $body)
    };
}

async fn events(s: &Store) -> Vec<EventRecord> {
    s.events_after(0, 1000).await.unwrap()
}

async fn audit_actions(s: &Store, target: &str) -> Vec<String> {
    s.list_audit(AuditFilter {
        user: None,
        since: None,
        limit: 1000,
    })
    .await
    .unwrap()
    .into_iter()
    .filter(|r| r.target == target)
    .map(|r| r.action)
    .collect()
}

fn new_app_password(name: &str, lookup: &str) -> NewAppPassword {
    NewAppPassword {
        name: name.into(),
        lookup: lookup.into(),
        scopes: Scopes::ALL,
        expires_at: None,
        networks: Default::default(),
    }
}

#[tokio::test]
async fn sqlite_file_and_folder_are_created_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/sub/postern.db");
    let url = format!("sqlite://{}", path.display());
    let first = Store::connect(&url).await.unwrap();
    assert_eq!(first.backend(), Backend::Sqlite);
    assert!(path.exists());
    assert!(first.add_domain("example.org", "cli").await.unwrap());
    // A second process (`postern admin` while `serve` runs) opens the same file.
    let second = Store::connect(&url).await.unwrap();
    assert!(!second.add_domain("example.org", "cli").await.unwrap());
    assert_eq!(second.list_domains().await.unwrap().len(), 1);
    // WAL lets `serve` read while `admin` writes.
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    first.close().await;
    second.close().await;
}

#[tokio::test]
async fn sqlite_in_memory_works_for_demos() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    assert!(store.add_domain("demo.test", "system").await.unwrap());
    let user = store.ensure_user("demo@demo.test").await.unwrap();
    store
        .create_app_password(user.id, new_app_password("demo", "ff66"), "system")
        .await
        .unwrap();
    assert_eq!(
        store.list_users("demo.test").await.unwrap()[0].app_passwords,
        1
    );
    store.close().await;
}

#[tokio::test]
async fn two_processes_write_the_same_sqlite_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("postern.db").display());
    let serve = Store::connect(&url).await.unwrap();
    let admin = Store::connect(&url).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = if i % 2 == 0 {
            serve.clone()
        } else {
            admin.clone()
        };
        tasks.push(tokio::spawn(async move {
            let address = format!("u{}@example.org", i % 5);
            store.set_user_disabled(&address, i % 3 == 0, "cli").await?;
            let user = store.ensure_user(&address).await?;
            store
                .create_app_password(user.id, new_app_password("phone", &format!("l{i}")), "cli")
                .await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let users = serve.list_users("example.org").await.unwrap();
    assert_eq!(users.len(), 5);
    assert_eq!(users.iter().map(|u| u.app_passwords).sum::<i64>(), 20);
    assert_eq!(serve.events_after(0, 100).await.unwrap().len(), 20);
}

#[tokio::test]
async fn domain_add_is_idempotent() {
    on_each_db!(|s| {
        assert!(s.add_domain(" Example.ORG ", "cli").await.unwrap());
        let before = s.domain("example.org").await.unwrap().unwrap();
        s.set_domain_status("example.org", DomainStatus::Enabled, None, "cli")
            .await
            .unwrap();
        assert!(!s.add_domain("example.org", "sysadmin:admin").await.unwrap());
        let after = s.domain("EXAMPLE.org").await.unwrap().unwrap();
        assert_eq!(after.name, "example.org");
        assert_eq!(
            after.status,
            DomainStatus::Enabled,
            "a re-add changes nothing"
        );
        assert_eq!(after.created_at, before.created_at);
        assert!(!after.feature);
        assert_eq!(s.list_domains().await.unwrap().len(), 1);
        assert_eq!(
            audit_actions(s, "example.org").await,
            ["domain.status", "domain.add"],
            "one audit row for the add, none for the re-add"
        );
        assert_eq!(s.domain("unknown.org").await.unwrap(), None);
    });
}

#[tokio::test]
async fn unknown_domain_errors_name_domain_add() {
    on_each_db!(|s| {
        let err = s
            .set_domain_feature("nowhere.org", true, "cli")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::UnknownDomain(ref d) if d == "nowhere.org"));
        assert!(
            err.to_string()
                .contains("postern admin domain add nowhere.org"),
            "{err}"
        );
        let err = s
            .set_domain_status("Nowhere.org", DomainStatus::Forced, None, "cli")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("domain add"), "{err}");
        let err = s
            .set_domain_admin("nowhere.org", "a@nowhere.org", "cli")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::UnknownDomain(_)), "{err}");
        assert!(events(s).await.is_empty());
        assert!(s.list_domains().await.unwrap().is_empty());
    });
}

#[tokio::test]
async fn domain_feature_status_and_grace() {
    on_each_db!(|s| {
        for name in ["b.org", "a.org", "c.org"] {
            s.add_domain(name, "cli").await.unwrap();
        }
        let names: Vec<String> = s
            .list_domains()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, ["a.org", "b.org", "c.org"]);

        // Status may be set while the feature is off; it applies once it is on.
        s.set_domain_status("a.org", DomainStatus::Forced, Some(1_900_000_000), "cli")
            .await
            .unwrap();
        let a = s.domain("a.org").await.unwrap().unwrap();
        assert_eq!(a.status, DomainStatus::Forced);
        assert_eq!(a.grace_until, Some(1_900_000_000));
        assert_eq!(a.policy().effective_status(), DomainStatus::Disabled);

        s.set_domain_feature("a.org", true, "sysadmin:admin")
            .await
            .unwrap();
        let a = s.domain("a.org").await.unwrap().unwrap();
        assert!(a.feature);
        assert_eq!(a.policy().effective_status(), DomainStatus::Forced);

        // Setting the status without grace clears it.
        s.set_domain_status("a.org", DomainStatus::Forced, None, "cli")
            .await
            .unwrap();
        assert_eq!(s.domain("a.org").await.unwrap().unwrap().grace_until, None);

        s.set_domain_feature("a.org", false, "cli").await.unwrap();
        assert!(!s.domain("a.org").await.unwrap().unwrap().feature);

        let kinds: Vec<(EventKind, Option<String>)> = events(s)
            .await
            .into_iter()
            .map(|e| (e.kind, e.domain))
            .collect();
        let a = Some("a.org".to_owned());
        assert_eq!(
            kinds,
            [
                (EventKind::DomainStatus, a.clone()),
                (EventKind::DomainFeature, a.clone()),
                (EventKind::DomainStatus, a.clone()),
                (EventKind::DomainFeature, a),
            ]
        );
        let audit = s
            .list_audit(AuditFilter {
                user: None,
                since: None,
                limit: 1,
            })
            .await
            .unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].action, "domain.feature");
        assert_eq!(audit[0].detail, "off");
        assert_eq!(audit[0].actor, "cli");
    });
}

#[tokio::test]
async fn domain_admin_must_belong_to_the_domain() {
    on_each_db!(|s| {
        s.add_domain("example.org", "cli").await.unwrap();
        let err = s
            .set_domain_admin("example.org", "boss@other.org", "cli")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidAddress(_)), "{err}");
        assert_eq!(s.user("boss@other.org").await.unwrap(), None);

        s.set_domain_admin("example.org", "Boss@Example.org", "sysadmin:admin")
            .await
            .unwrap();
        let boss = s.user("boss@example.org").await.unwrap().unwrap();
        assert!(boss.domain_admin);
        let users = s.list_users("example.org").await.unwrap();
        assert_eq!(users.len(), 1);
        assert!(users[0].domain_admin);
        assert_eq!(audit_actions(s, "boss@example.org").await, ["domain.admin"]);
    });
}

#[tokio::test]
async fn users_are_created_on_first_sight_and_normalised() {
    on_each_db!(|s| {
        assert_eq!(s.user("alice@example.org").await.unwrap(), None);
        let alice = s.ensure_user("  Alice@Example.ORG ").await.unwrap();
        assert_eq!(alice.address, "alice@example.org");
        assert_eq!(alice.domain, "example.org");
        assert!(!alice.enrolled && !alice.disabled && !alice.domain_admin);
        assert!(alice.created_at > 1_700_000_000);
        let again = s.ensure_user("alice@example.org").await.unwrap();
        assert_eq!(again, alice);
        assert_eq!(s.user_by_id(alice.id).await.unwrap(), Some(alice.clone()));
        assert_eq!(s.user_by_id(alice.id + 1000).await.unwrap(), None);
        for bad in ["alice", "a@b@c", "a b@c.org", "@c.org", "a@"] {
            let err = s.ensure_user(bad).await.unwrap_err();
            assert!(matches!(err, StoreError::InvalidAddress(_)), "{bad}: {err}");
        }
        // Creating a user on sight is not an administrative change.
        assert!(audit_actions(s, "alice@example.org").await.is_empty());
    });
}

#[tokio::test]
async fn concurrent_first_sight_creates_one_user() {
    on_each_db!(|s| {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.ensure_user("race@example.org").await })
            })
            .collect();
        let mut ids = Vec::new();
        for task in tasks {
            ids.push(task.await.unwrap().unwrap().id);
        }
        ids.dedup();
        assert_eq!(ids.len(), 1);
    });
}

#[tokio::test]
async fn login_context_reads_domain_and_user() {
    on_each_db!(|s| {
        let (domain, user) = s
            .login_context("Carol@Unknown.org", "unknown.org")
            .await
            .unwrap();
        assert_eq!(domain, None, "unknown domains behave as Disabled");
        assert_eq!(user.address, "carol@unknown.org");
        assert_eq!(s.user("carol@unknown.org").await.unwrap(), Some(user));

        s.add_domain("example.org", "cli").await.unwrap();
        s.set_domain_feature("example.org", true, "cli")
            .await
            .unwrap();
        s.set_domain_status("example.org", DomainStatus::Forced, Some(42), "cli")
            .await
            .unwrap();
        let dave = s.ensure_user("dave@example.org").await.unwrap();
        s.set_user_disabled("dave@example.org", true, "cli")
            .await
            .unwrap();
        let (domain, user) = s
            .login_context("dave@example.org", "example.org")
            .await
            .unwrap();
        let domain = domain.unwrap();
        assert_eq!(domain.name, "example.org");
        assert_eq!(domain.policy().effective_status(), DomainStatus::Forced);
        assert_eq!(domain.grace_until, Some(42));
        assert_eq!(user.id, dave.id);
        assert!(user.state().disabled);
        assert!(!user.state().enrolled);
    });
}

#[tokio::test]
async fn disabling_a_user_is_audited_and_announced() {
    on_each_db!(|s| {
        s.set_user_disabled("Eve@example.org", true, "sysadmin:admin")
            .await
            .unwrap();
        assert!(s.user("eve@example.org").await.unwrap().unwrap().disabled);
        s.set_user_disabled("eve@example.org", false, "cli")
            .await
            .unwrap();
        assert!(!s.user("eve@example.org").await.unwrap().unwrap().disabled);
        let got: Vec<(EventKind, Option<String>)> = events(s)
            .await
            .into_iter()
            .map(|e| (e.kind, e.user_address))
            .collect();
        let eve = Some("eve@example.org".to_owned());
        assert_eq!(
            got,
            [
                (EventKind::UserDisabled, eve.clone()),
                (EventKind::UserEnabled, eve)
            ]
        );
        assert_eq!(
            audit_actions(s, "eve@example.org").await,
            ["user.enable", "user.disable"]
        );
    });
}

#[tokio::test]
async fn failed_logins_are_counted_forgotten_and_cleared() {
    on_each_db!(|s| {
        let user = s.ensure_user("fay@example.org").await.unwrap();
        let failures = s.login_failures("fay@example.org").await.unwrap();
        assert_eq!((failures.count, failures.last_at), (0, 0));
        for now in [100, 101, 102] {
            s.count_login_failure("Fay@example.org", now, now - 900)
                .await
                .unwrap();
        }
        let failures = s.login_failures("fay@example.org").await.unwrap();
        assert_eq!((failures.count, failures.last_at), (3, 102));
        // The login path reads the count with the user's row.
        let account = s.account("fay@example.org").await.unwrap();
        assert_eq!(account.failures.count, 3);
        // After a quiet period the next failure starts a new count.
        s.count_login_failure("fay@example.org", 2000, 2000 - 900)
            .await
            .unwrap();
        let failures = s.login_failures("fay@example.org").await.unwrap();
        assert_eq!((failures.count, failures.last_at), (1, 2000));
        // A success clears it; so does an administrator's enable or reset.
        s.clear_login_failures(&user.address).await.unwrap();
        assert_eq!(s.login_failures(&user.address).await.unwrap().count, 0);
        s.count_login_failure("fay@example.org", 2001, 0)
            .await
            .unwrap();
        s.set_user_disabled("fay@example.org", true, "cli")
            .await
            .unwrap();
        assert_eq!(s.login_failures(&user.address).await.unwrap().count, 1);
        s.set_user_disabled("fay@example.org", false, "cli")
            .await
            .unwrap();
        assert_eq!(s.login_failures(&user.address).await.unwrap().count, 0);
        s.count_login_failure("fay@example.org", 2002, 0)
            .await
            .unwrap();
        s.reset_user("fay@example.org", "cli").await.unwrap();
        assert_eq!(s.login_failures(&user.address).await.unwrap().count, 0);
        // An address never seen is not created by a failure.
        s.count_login_failure("nobody@example.org", 2003, 0)
            .await
            .unwrap();
        assert!(s.user("nobody@example.org").await.unwrap().is_none());
    });
}

#[tokio::test]
async fn list_users_counts_app_passwords_and_last_use() {
    on_each_db!(|s| {
        let zed = s.ensure_user("zed@example.org").await.unwrap();
        let amy = s.ensure_user("amy@example.org").await.unwrap();
        s.ensure_user("other@elsewhere.org").await.unwrap();
        let a1 = s
            .create_app_password(zed.id, new_app_password("phone", "l1"), "cli")
            .await
            .unwrap();
        let a2 = s
            .create_app_password(zed.id, new_app_password("laptop", "l2"), "cli")
            .await
            .unwrap();
        s.record_app_password_use(a1, 1_800_000_000, "192.0.2.1", Protocol::Imap)
            .await
            .unwrap();
        s.record_app_password_use(a2, 1_800_000_500, "192.0.2.2", Protocol::Smtp)
            .await
            .unwrap();
        let f = s
            .add_second_factor(amy.id, FactorKind::Totp, "JBSWY3DPEHPK3PXP", true, "cli")
            .await
            .unwrap();
        assert!(f > 0);
        s.set_user_disabled("zed@example.org", true, "cli")
            .await
            .unwrap();

        let users = s.list_users("Example.org").await.unwrap();
        let summary: Vec<_> = users
            .iter()
            .map(|u| {
                (
                    u.address.as_str(),
                    u.enrolled,
                    u.disabled,
                    u.app_passwords,
                    u.last_used_at,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("amy@example.org", true, false, 0, None),
                ("zed@example.org", false, true, 2, Some(1_800_000_500)),
            ]
        );
        assert!(s.list_users("nobody.org").await.unwrap().is_empty());
    });
}

#[tokio::test]
async fn enrolled_flips_after_confirm() {
    on_each_db!(|s| {
        let user = s.ensure_user("fay@example.org").await.unwrap();
        let other = s.ensure_user("gus@example.org").await.unwrap();
        let totp = s
            .add_second_factor(
                user.id,
                FactorKind::Totp,
                "JBSWY3DPEHPK3PXP",
                false,
                "user:fay@example.org",
            )
            .await
            .unwrap();
        assert!(!s.user_by_id(user.id).await.unwrap().unwrap().enrolled);
        assert!(
            events(s).await.is_empty(),
            "an unconfirmed factor changes nothing"
        );

        let err = s
            .confirm_second_factor(other.id, totp, "cli")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound), "{err}");

        s.confirm_second_factor(user.id, totp, "user:fay@example.org")
            .await
            .unwrap();
        assert!(s.user("fay@example.org").await.unwrap().unwrap().enrolled);
        let got = events(s).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, EventKind::UserEnrolled);
        assert_eq!(got[0].user_address.as_deref(), Some("fay@example.org"));

        // A second factor for an already enrolled user announces nothing new.
        let email = s
            .add_second_factor(user.id, FactorKind::Email, "fay@home.example", false, "cli")
            .await
            .unwrap();
        s.confirm_second_factor(user.id, email, "cli")
            .await
            .unwrap();
        assert_eq!(events(s).await.len(), 1);

        let factors = s.second_factors(user.id).await.unwrap();
        assert_eq!(factors.len(), 2);
        assert_eq!(factors[0].id, totp);
        assert_eq!(factors[0].kind, FactorKind::Totp);
        assert_eq!(factors[0].secret.expose(), "JBSWY3DPEHPK3PXP");
        assert_eq!(format!("{:?}", factors[0].secret), "REDACTED");
        assert!(factors.iter().all(|f| f.confirmed));
        assert_eq!(factors[1].kind, FactorKind::Email);

        s.remove_second_factor(user.id, totp, "cli").await.unwrap();
        assert!(s.user("fay@example.org").await.unwrap().unwrap().enrolled);
        s.remove_second_factor(user.id, email, "cli").await.unwrap();
        assert!(!s.user("fay@example.org").await.unwrap().unwrap().enrolled);
        let err = s
            .remove_second_factor(user.id, email, "cli")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound));
        let err = s
            .add_second_factor(9999, FactorKind::Totp, "X", false, "cli")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::UnknownUser(_)), "{err}");
        assert_eq!(
            audit_actions(s, "fay@example.org").await,
            [
                "second_factor.remove",
                "second_factor.remove",
                "second_factor.confirm",
                "second_factor.add",
                "second_factor.confirm",
                "second_factor.add",
            ]
        );
    });
}

#[tokio::test]
async fn provisioned_totp_enrolls_at_once() {
    on_each_db!(|s| {
        let user = s.ensure_user("hal@example.org").await.unwrap();
        s.add_second_factor(user.id, FactorKind::Totp, "JBSWY3DPEHPK3PXP", true, "cli")
            .await
            .unwrap();
        assert!(s.user_by_id(user.id).await.unwrap().unwrap().enrolled);
        let got = events(s).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, EventKind::UserEnrolled);
    });
}

#[tokio::test]
async fn totp_step_is_accepted_once() {
    on_each_db!(|s| {
        let user = s.ensure_user("ida@example.org").await.unwrap();
        let f = s
            .add_second_factor(user.id, FactorKind::Totp, "JBSWY3DPEHPK3PXP", true, "cli")
            .await
            .unwrap();
        assert!(s.use_totp_step(f, 1000).await.unwrap());
        assert!(!s.use_totp_step(f, 1000).await.unwrap(), "replay");
        assert!(!s.use_totp_step(f, 999).await.unwrap(), "older step");
        assert!(s.use_totp_step(f, 1001).await.unwrap());
        assert_eq!(
            s.second_factors(user.id).await.unwrap()[0].last_used_step,
            Some(1001)
        );
        assert!(
            !s.use_totp_step(f + 100, 5).await.unwrap(),
            "unknown factor"
        );
    });
}

#[tokio::test]
async fn backup_code_is_used_once() {
    on_each_db!(|s| {
        let user = s.ensure_user("jo@example.org").await.unwrap();
        let hashes: Vec<String> = (0..10).map(|i| format!("hash-{i}")).collect();
        s.replace_backup_codes(user.id, &hashes, "user:jo@example.org")
            .await
            .unwrap();
        let codes = s.backup_code_hashes(user.id).await.unwrap();
        assert_eq!(codes.len(), 10);
        assert_eq!(codes[3].1, "hash-3");
        assert!(s.use_backup_code(codes[3].0).await.unwrap());
        assert!(!s.use_backup_code(codes[3].0).await.unwrap());
        let left = s.backup_code_hashes(user.id).await.unwrap();
        assert_eq!(left.len(), 9);
        assert!(left.iter().all(|(_, h)| h != "hash-3"));

        s.replace_backup_codes(user.id, &["fresh".to_owned()], "cli")
            .await
            .unwrap();
        let codes = s.backup_code_hashes(user.id).await.unwrap();
        assert_eq!(codes.len(), 1);
        assert_eq!(codes[0].1, "fresh");
        assert_eq!(
            audit_actions(s, "jo@example.org").await,
            ["backup_codes.replace", "backup_codes.replace"]
        );
    });
}

#[tokio::test]
async fn app_passwords_are_stored_listed_and_used() {
    on_each_db!(|s| {
        let user = s.ensure_user("kim@example.org").await.unwrap();
        let other = s.ensure_user("lou@example.org").await.unwrap();
        let imap_pop: Scopes = "imap,pop3".parse().unwrap();
        let first = s
            .create_app_password(
                user.id,
                NewAppPassword {
                    scopes: imap_pop,
                    expires_at: Some(1_900_000_000),
                    networks: "192.0.2.0/24, 2001:db8::/32".parse().unwrap(),
                    ..new_app_password("Phone", "aa11")
                },
                "user:kim@example.org",
            )
            .await
            .unwrap();
        let second = s
            .create_app_password(user.id, new_app_password("Laptop", "bb22"), "cli")
            .await
            .unwrap();
        assert!(second > first);

        let found = s
            .app_password_by_lookup(user.id, "aa11")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.id, first);
        assert_eq!(found.user_id, user.id);
        assert_eq!(found.name, "Phone");
        assert_eq!(found.scopes, imap_pop);
        assert_eq!(found.expires_at, Some(1_900_000_000));
        assert_eq!(found.networks.to_string(), "192.0.2.0/24,2001:db8::/32");
        assert_eq!(found.last_used_at, None);
        assert_eq!(
            s.app_password_by_lookup(other.id, "aa11").await.unwrap(),
            None
        );
        assert_eq!(s.app_password(other.id, first).await.unwrap(), None);
        assert_eq!(s.app_password(user.id, first).await.unwrap(), Some(found));

        // The same lookup value cannot be stored twice for one user.
        assert!(
            s.create_app_password(user.id, new_app_password("dup", "aa11"), "cli")
                .await
                .is_err()
        );

        s.record_app_password_use(second, 1_800_000_000, "2001:db8::1", Protocol::Pop3)
            .await
            .unwrap();
        let list = s.list_app_passwords(user.id).await.unwrap();
        assert_eq!(
            list.iter().map(|a| a.id).collect::<Vec<_>>(),
            [first, second]
        );
        assert_eq!(list[1].scopes, Scopes::ALL);
        assert_eq!(list[1].last_used_at, Some(1_800_000_000));
        assert_eq!(list[1].last_used_ip.as_deref(), Some("2001:db8::1"));
        assert_eq!(list[1].last_used_protocol.as_deref(), Some("pop3"));

        let audit = audit_actions(s, "kim@example.org").await;
        assert_eq!(audit, ["app_password.create", "app_password.create"]);
        assert!(events(s).await.is_empty(), "creating one ends no session");
        let err = s
            .create_app_password(9999, new_app_password("x", "x"), "cli")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::UnknownUser(_)), "{err}");
    });
}

#[tokio::test]
async fn the_41st_app_password_is_refused() {
    on_each_db!(|s| {
        let user = s.ensure_user("max@example.org").await.unwrap();
        for i in 0..MAX_APP_PASSWORDS {
            s.create_app_password(user.id, new_app_password("d", &format!("l{i}")), "cli")
                .await
                .unwrap();
        }
        let err = s
            .create_app_password(user.id, new_app_password("d", "one-more"), "cli")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::TooManyAppPasswords), "{err}");
        assert!(err.to_string().contains("40"), "{err}");
        assert_eq!(s.list_app_passwords(user.id).await.unwrap().len(), 40);
        // Revoking one makes room again.
        let first = s.list_app_passwords(user.id).await.unwrap()[0].id;
        s.revoke_app_password(user.id, first, "cli").await.unwrap();
        s.create_app_password(user.id, new_app_password("d", "one-more"), "cli")
            .await
            .unwrap();
    });
}

#[tokio::test]
async fn racing_creations_never_pass_the_limit() {
    on_each_db!(|s| {
        let user = s.ensure_user("ray@example.org").await.unwrap();
        for i in 0..MAX_APP_PASSWORDS - 3 {
            s.create_app_password(user.id, new_app_password("d", &format!("l{i}")), "cli")
                .await
                .unwrap();
        }
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.create_app_password(user.id, new_app_password("d", &format!("r{i}")), "cli")
                        .await
                })
            })
            .collect();
        let mut created = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => created += 1,
                Err(StoreError::TooManyAppPasswords) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(created, 3);
        assert_eq!(
            s.list_app_passwords(user.id).await.unwrap().len() as i64,
            MAX_APP_PASSWORDS
        );
    });
}

#[tokio::test]
async fn revoke_appends_an_event_with_the_id() {
    on_each_db!(|s| {
        let user = s.ensure_user("ned@example.org").await.unwrap();
        let other = s.ensure_user("oz@example.org").await.unwrap();
        let id = s
            .create_app_password(user.id, new_app_password("phone", "cc33"), "cli")
            .await
            .unwrap();
        let err = s
            .revoke_app_password(other.id, id, "cli")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound), "{err}");
        assert!(events(s).await.is_empty());

        s.revoke_app_password(user.id, id, "user:ned@example.org")
            .await
            .unwrap();
        assert_eq!(s.app_password(user.id, id).await.unwrap(), None);
        assert_eq!(
            s.app_password_by_lookup(user.id, "cc33").await.unwrap(),
            None
        );
        let got = events(s).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, EventKind::AppPasswordRevoked);
        assert_eq!(got[0].user_address.as_deref(), Some("ned@example.org"));
        assert_eq!(got[0].app_password_id, Some(id));
        assert_eq!(got[0].domain, None);
        let err = s.revoke_app_password(user.id, id, "cli").await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound));

        let audit = s
            .list_audit(AuditFilter {
                user: Some("ned@example.org".into()),
                since: None,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(audit[0].action, "app_password.revoke");
        assert_eq!(audit[0].actor, "user:ned@example.org");
        assert_eq!(audit[0].detail, format!("id={id}"));
    });
}

#[tokio::test]
async fn reset_removes_second_factors_backup_codes_and_app_passwords() {
    on_each_db!(|s| {
        let user = s.ensure_user("pat@example.org").await.unwrap();
        let keep = s.ensure_user("quin@example.org").await.unwrap();
        for u in [&user, &keep] {
            s.add_second_factor(u.id, FactorKind::Totp, "JBSWY3DPEHPK3PXP", true, "cli")
                .await
                .unwrap();
            s.replace_backup_codes(u.id, &["h1".into(), "h2".into()], "cli")
                .await
                .unwrap();
            s.create_app_password(u.id, new_app_password("phone", "dd44"), "cli")
                .await
                .unwrap();
        }
        let before = s.last_event_id().await.unwrap();
        s.reset_user("PAT@example.org", "user:boss@example.org")
            .await
            .unwrap();

        let pat = s.user("pat@example.org").await.unwrap().unwrap();
        assert!(!pat.enrolled);
        assert!(s.second_factors(pat.id).await.unwrap().is_empty());
        assert!(s.backup_code_hashes(pat.id).await.unwrap().is_empty());
        assert!(s.list_app_passwords(pat.id).await.unwrap().is_empty());
        assert_eq!(
            s.app_password_by_lookup(pat.id, "dd44").await.unwrap(),
            None
        );

        // The other user keeps everything.
        assert!(s.user_by_id(keep.id).await.unwrap().unwrap().enrolled);
        assert_eq!(s.list_app_passwords(keep.id).await.unwrap().len(), 1);
        assert_eq!(s.backup_code_hashes(keep.id).await.unwrap().len(), 2);

        let got = s.events_after(before, 10).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kind, EventKind::UserReset);
        assert_eq!(got[0].user_address.as_deref(), Some("pat@example.org"));
        assert_eq!(audit_actions(s, "pat@example.org").await[0], "user.reset");

        // Resetting someone never seen creates them and succeeds.
        s.reset_user("new@example.org", "cli").await.unwrap();
        assert!(s.user("new@example.org").await.unwrap().is_some());
    });
}

#[tokio::test]
async fn old_events_are_pruned_but_the_newest_always_stays() {
    on_each_db!(|s, db| {
        s.add_domain("example.org", "cli").await.unwrap();
        let change = s
            .append_event(EventKind::SessionKill, None, Some("a@example.org"), None)
            .await
            .unwrap();
        let failure = s
            .append_event(EventKind::ClientFailed, None, None, None)
            .await
            .unwrap();
        let recent = s
            .append_event(EventKind::SessionKill, None, Some("b@example.org"), None)
            .await
            .unwrap();
        let newest = s
            .append_event(EventKind::ClientFailed, None, None, None)
            .await
            .unwrap();
        let now = postern::clock::unix_now();
        // A change two hours old, a client's failure two hours old, a change
        // and a failure 25 hours old.
        db.raw(&format!(
            "UPDATE events SET at = {} WHERE id IN ({change}, {failure}); \
             UPDATE events SET at = {} WHERE id = {newest}",
            now - 7200,
            now - 90_000,
        ))
        .await;
        assert_eq!(s.prune_events(now).await.unwrap(), 1);
        let left: Vec<i64> = events(s).await.iter().map(|e| e.id).collect();
        assert!(left.contains(&change) && left.contains(&recent), "{left:?}");
        assert!(!left.contains(&failure), "a two-hour-old failure goes");
        assert!(left.contains(&newest), "the newest row stays, however old");
        // A day later every change goes, except the newest row.
        s.prune_events(now + 90_000).await.unwrap();
        let left: Vec<i64> = events(s).await.iter().map(|e| e.id).collect();
        assert_eq!(left, vec![newest]);
        assert_eq!(s.last_event_id().await.unwrap(), newest);
    });
}

#[tokio::test]
async fn events_ascend_and_resume_after_an_id() {
    on_each_db!(|s| {
        assert_eq!(s.last_event_id().await.unwrap(), 0);
        assert!(s.events_after(0, 10).await.unwrap().is_empty());
        let mut ids = Vec::new();
        for i in 0..5 {
            let user = format!("u{i}@example.org");
            ids.push(
                s.append_event(EventKind::SessionKill, None, Some(&user), None)
                    .await
                    .unwrap(),
            );
        }
        s.add_domain("example.org", "cli").await.unwrap();
        s.set_domain_feature("example.org", true, "cli")
            .await
            .unwrap();
        let all = s.events_after(0, 100).await.unwrap();
        assert_eq!(all.len(), 6);
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(all[..5].iter().map(|e| e.id).collect::<Vec<_>>(), ids);
        assert_eq!(all[2].user_address.as_deref(), Some("u2@example.org"));
        assert_eq!(all[5].kind, EventKind::DomainFeature);
        assert_eq!(all[5].domain.as_deref(), Some("example.org"));
        assert_eq!(s.last_event_id().await.unwrap(), all[5].id);

        let rest = s.events_after(ids[2], 100).await.unwrap();
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0].id, ids[3]);
        let limited = s.events_after(0, 2).await.unwrap();
        assert_eq!(limited.len(), 2);
        assert_eq!(limited[1].id, ids[1]);
        assert!(s.events_after(all[5].id, 10).await.unwrap().is_empty());

        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
        }
        assert!("nonsense".parse::<EventKind>().is_err());
    });
}

#[tokio::test]
async fn audit_rows_filter_by_user_and_time_newest_first() {
    on_each_db!(|s| {
        s.audit(
            "user:rae@example.org",
            "login",
            "rae@example.org",
            "imap ok",
            Some("192.0.2.7"),
        )
        .await
        .unwrap();
        s.audit("system", "login", "sam@example.org", "pop3 refused", None)
            .await
            .unwrap();
        s.set_user_disabled("rae@example.org", true, "sysadmin:admin")
            .await
            .unwrap();
        s.add_domain("example.org", "user:rae@example.org")
            .await
            .unwrap();

        let rae = s
            .list_audit(AuditFilter {
                user: Some("Rae@example.org".into()),
                since: None,
                limit: 100,
            })
            .await
            .unwrap();
        let actions: Vec<&str> = rae.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(actions, ["domain.add", "user.disable", "login"]);
        assert_eq!(rae[2].ip.as_deref(), Some("192.0.2.7"));
        assert_eq!(rae[2].detail, "imap ok");
        assert!(rae[0].id > rae[1].id && rae[1].id > rae[2].id);

        let all = s.list_audit(AuditFilter::default()).await.unwrap();
        assert_eq!(all.len(), 4);
        let future = s
            .list_audit(AuditFilter {
                user: None,
                since: Some(all[0].at + 3600),
                limit: 100,
            })
            .await
            .unwrap();
        assert!(future.is_empty());
        let recent = s
            .list_audit(AuditFilter {
                user: None,
                since: Some(all[0].at - 3600),
                limit: 2,
            })
            .await
            .unwrap();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0], all[0]);
    });
}

#[tokio::test]
async fn sysadmins_are_added_and_replaced() {
    on_each_db!(|s| {
        assert_eq!(s.sysadmin_count().await.unwrap(), 0);
        assert_eq!(s.sysadmin_hash("admin").await.unwrap(), None);
        s.add_sysadmin("admin", "$argon2id$first", "system")
            .await
            .unwrap();
        assert_eq!(s.sysadmin_count().await.unwrap(), 1);
        s.add_sysadmin("admin", "$argon2id$second", "cli")
            .await
            .unwrap();
        assert_eq!(s.sysadmin_count().await.unwrap(), 1);
        assert_eq!(
            s.sysadmin_hash("admin").await.unwrap().as_deref(),
            Some("$argon2id$second")
        );
        let audit = s.list_audit(AuditFilter::default()).await.unwrap();
        assert_eq!(audit.len(), 2);
        assert!(audit.iter().all(|r| r.action == "sysadmin.add"
            && r.target == "admin"
            && !r.detail.contains("argon2")));
    });
}

#[tokio::test]
async fn the_first_sysadmin_has_a_one_time_password_until_it_is_changed_once() {
    on_each_db!(|s| {
        assert!(
            s.create_first_sysadmin("admin", "$argon2id$otp")
                .await
                .unwrap()
        );
        let admin = s.sysadmin("admin").await.unwrap().expect("admin");
        assert!(admin.must_change_password);
        // Only while no system administrator exists.
        assert!(
            !s.create_first_sysadmin("other", "$argon2id$x")
                .await
                .unwrap()
        );
        assert!(
            !s.create_first_sysadmin("admin", "$argon2id$x")
                .await
                .unwrap()
        );
        assert_eq!(s.sysadmin_count().await.unwrap(), 1);
        // A change from a stale hash (a racing change) does nothing.
        assert!(
            !s.change_sysadmin_password("admin", "$argon2id$stale", "$argon2id$new", None)
                .await
                .unwrap()
        );
        assert!(
            s.sysadmin("admin")
                .await
                .unwrap()
                .expect("admin")
                .must_change_password
        );
        assert!(
            s.change_sysadmin_password(
                "admin",
                "$argon2id$otp",
                "$argon2id$mine",
                Some("192.0.2.1")
            )
            .await
            .unwrap()
        );
        let admin = s.sysadmin("admin").await.unwrap().expect("admin");
        assert_eq!(admin.password_hash, "$argon2id$mine");
        assert!(!admin.must_change_password);
        // The one-time password's hash works for one change only.
        assert!(
            !s.change_sysadmin_password("admin", "$argon2id$otp", "$argon2id$again", None)
                .await
                .unwrap()
        );
        let audit = s.list_audit(AuditFilter::default()).await.unwrap();
        assert!(audit.iter().any(|r| r.action == "sysadmin.password"
            && r.ip.as_deref() == Some("192.0.2.1")
            && !r.detail.contains("argon2")));
    });
}

#[tokio::test]
async fn a_password_set_with_the_cli_is_not_one_time() {
    on_each_db!(|s| {
        assert!(
            s.create_first_sysadmin("admin", "$argon2id$otp")
                .await
                .unwrap()
        );
        // `postern admin sysadmin add admin` replaces the one-time password.
        s.add_sysadmin("admin", "$argon2id$chosen", "cli")
            .await
            .unwrap();
        let admin = s.sysadmin("admin").await.unwrap().expect("admin");
        assert_eq!(admin.password_hash, "$argon2id$chosen");
        assert!(!admin.must_change_password);
        s.add_sysadmin("root", "$argon2id$root", "cli")
            .await
            .unwrap();
        assert!(
            !s.sysadmin("root")
                .await
                .unwrap()
                .expect("root")
                .must_change_password
        );
        assert_eq!(s.sysadmin("nobody").await.unwrap(), None);
    });
}

#[tokio::test]
async fn sessions_of_all_nodes_are_listed_and_removed() {
    on_each_db!(|s| {
        let row = |id: &str, node: &str, at: i64| SessionRow {
            id: id.into(),
            node: node.into(),
            user_address: "tia@example.org".into(),
            protocol: Protocol::Imap,
            credential: "app-password:7".into(),
            client_ip: "192.0.2.9".into(),
            started_at: at,
        };
        s.register_session(&row("s2", "node-a", 20)).await.unwrap();
        s.register_session(&row("s1", "node-a", 10)).await.unwrap();
        s.register_session(&SessionRow {
            protocol: Protocol::Smtp,
            credential: "primary".into(),
            ..row("s3", "node-b", 30)
        })
        .await
        .unwrap();
        let listed = s.list_sessions().await.unwrap();
        assert_eq!(
            listed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["s1", "s2", "s3"]
        );
        assert_eq!(listed[0], row("s1", "node-a", 10));
        assert_eq!(listed[2].protocol, Protocol::Smtp);

        s.unregister_session("s2").await.unwrap();
        s.unregister_session("never").await.unwrap();
        assert_eq!(s.list_sessions().await.unwrap().len(), 2);
        assert_eq!(s.remove_node_sessions("node-a").await.unwrap(), 1);
        let left = s.list_sessions().await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].node, "node-b");
    });
}

#[tokio::test]
async fn bad_stored_values_are_errors_not_panics() {
    on_each_db!(|s, db| {
        let user = s.ensure_user("uma@example.org").await.unwrap();
        s.create_app_password(user.id, new_app_password("phone", "ee55"), "cli")
            .await
            .unwrap();
        s.register_session(&SessionRow {
            id: "s".into(),
            node: "n".into(),
            user_address: "uma@example.org".into(),
            protocol: Protocol::Pop3,
            credential: "primary".into(),
            client_ip: "192.0.2.1".into(),
            started_at: 1,
        })
        .await
        .unwrap();
        db.raw("UPDATE app_passwords SET scopes = 'imap,ftp'").await;
        db.raw("UPDATE sessions SET protocol = 'gopher'").await;
        let err = s.list_app_passwords(user.id).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt { what: "scopes", .. }),
            "{err}"
        );
        assert!(s.app_password_by_lookup(user.id, "ee55").await.is_err());
        assert!(matches!(
            s.list_sessions().await.unwrap_err(),
            StoreError::Corrupt { .. }
        ));
    });
}

#[tokio::test]
async fn postgres_notifies_each_event() {
    let Ok(base) = std::env::var("POSTERN_TEST_DATABASE_URL") else {
        return;
    };
    if base.is_empty() {
        return;
    }
    on_each_db!(|s| {
        if s.backend() != Backend::Postgres {
            continue;
        }
        let mut listener = sqlx::postgres::PgListener::connect(&base).await.unwrap();
        listener
            .listen(postern::store::NOTIFY_CHANNEL)
            .await
            .unwrap();
        let id = s
            .append_event(EventKind::SessionKill, None, Some("vic@example.org"), None)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let note = tokio::time::timeout_at(deadline, listener.recv())
                .await
                .expect("a notification within 5 s")
                .unwrap();
            if note.payload() == id.to_string() {
                break;
            }
        }
    });
}

#[tokio::test]
async fn recovery_e_mail_codes_expire_work_once_and_are_limited() {
    use postern::store::{
        EMAIL_CODE_LIFETIME, EMAIL_CODE_MAX_FAILURES, EmailCodeIssue, EmailCodePurpose,
    };
    on_each_db!(|s| {
        let user = s.ensure_user("erin@example.test").await.unwrap();
        let t0 = 1_900_000_000;
        let issued = s
            .start_email_factor(user.id, "erin@home.test", "hash-a", t0, "test")
            .await
            .unwrap();
        let EmailCodeIssue::Issued { code_id, factor_id } = issued else {
            panic!("{issued:?}");
        };
        let factors = s.second_factors(user.id).await.unwrap();
        assert_eq!(factors.len(), 1);
        assert_eq!(factors[0].kind, FactorKind::Email);
        assert!(
            !factors[0].confirmed,
            "not enrolled before the code is typed"
        );

        // One code a minute: a second one is refused, and nothing changes.
        let again = s
            .start_email_factor(user.id, "erin@other.test", "hash-b", t0 + 30, "test")
            .await
            .unwrap();
        assert_eq!(again, EmailCodeIssue::Limited { retry_after: 30 });
        assert_eq!(s.second_factors(user.id).await.unwrap()[0].id, factor_id);

        // Wrong guesses use the code up.
        let live = s
            .live_email_code(user.id, EmailCodePurpose::Confirm, t0 + 1)
            .await
            .unwrap()
            .expect("live");
        assert_eq!((live.id, live.code_hash.as_str()), (code_id, "hash-a"));
        for left in (0..EMAIL_CODE_MAX_FAILURES).rev() {
            assert_eq!(s.fail_email_code(code_id).await.unwrap(), left);
        }
        assert!(
            s.live_email_code(user.id, EmailCodePurpose::Confirm, t0 + 2)
                .await
                .unwrap()
                .is_none()
        );
        assert!(!s.use_email_code(code_id, t0 + 2).await.unwrap(), "void");

        // A sign-in code: works once, and not after ten minutes.
        s.confirm_second_factor(user.id, factor_id, "test")
            .await
            .unwrap();
        let t1 = t0 + 120;
        let EmailCodeIssue::Issued { code_id, .. } = s
            .issue_email_code(user.id, factor_id, EmailCodePurpose::Login, "h1", t1)
            .await
            .unwrap()
        else {
            panic!("limited");
        };
        assert!(s.use_email_code(code_id, t1 + 5).await.unwrap());
        assert!(!s.use_email_code(code_id, t1 + 6).await.unwrap(), "once");
        let t2 = t1 + 61;
        let EmailCodeIssue::Issued { code_id, .. } = s
            .issue_email_code(user.id, factor_id, EmailCodePurpose::Login, "h2", t2)
            .await
            .unwrap()
        else {
            panic!("limited");
        };
        assert!(
            !s.use_email_code(code_id, t2 + EMAIL_CODE_LIFETIME)
                .await
                .unwrap(),
            "expired"
        );

        // A newer code spends the older one.
        let t3 = t2 + 61;
        let old = match s
            .issue_email_code(user.id, factor_id, EmailCodePurpose::Login, "h3", t3)
            .await
            .unwrap()
        {
            EmailCodeIssue::Issued { code_id, .. } => code_id,
            other => panic!("{other:?}"),
        };
        let t4 = t3 + 61;
        // Five codes in the hour (confirm, h1, h2, h3, and this one) is the cap.
        let newest = match s
            .issue_email_code(user.id, factor_id, EmailCodePurpose::Login, "h4", t4)
            .await
            .unwrap()
        {
            EmailCodeIssue::Issued { code_id, .. } => code_id,
            other => panic!("{other:?}"),
        };
        assert!(!s.use_email_code(old, t4 + 1).await.unwrap());
        let sixth = s
            .issue_email_code(user.id, factor_id, EmailCodePurpose::Login, "h5", t4 + 61)
            .await
            .unwrap();
        assert_eq!(
            sixth,
            EmailCodeIssue::Limited {
                retry_after: t0 + 3600 - (t4 + 61)
            }
        );

        // A reset removes the address, and its codes with it.
        s.reset_user("erin@example.test", "test").await.unwrap();
        assert!(!s.use_email_code(newest, t4 + 2).await.unwrap());
        assert!(s.second_factors(user.id).await.unwrap().is_empty());
    });
}

#[tokio::test]
async fn a_batch_of_audit_rows_is_written_whole_across_statements() {
    on_each_db!(|s| {
        // 300 rows: ten INSERT statements of up to 32 rows, in one transaction.
        let rows: Vec<NewAudit> = (0..300)
            .map(|n| NewAudit {
                actor: "mail-client".into(),
                action: "login".into(),
                target: format!("u{n:03}@example.org"),
                detail: format!("imap ok {n}"),
                ip: (n % 2 == 0).then(|| format!("192.0.2.{}", n % 250)),
            })
            .collect();
        s.audit_batch(&rows).await.unwrap();
        let all = s
            .list_audit(AuditFilter {
                user: None,
                since: None,
                limit: 1000,
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 300);
        // Newest first: the last row of the batch has the highest id.
        for (record, n) in all.iter().zip((0..300).rev()) {
            assert_eq!(record.target, format!("u{n:03}@example.org"));
            assert_eq!(record.detail, format!("imap ok {n}"));
            assert_eq!(
                record.ip,
                (n % 2 == 0).then(|| format!("192.0.2.{}", n % 250))
            );
            assert_eq!(record.actor, "mail-client");
        }
        let one = s
            .list_audit(AuditFilter {
                user: Some("u007@example.org".into()),
                since: None,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(one.len(), 1);
    });
}

/// A SQLite store made by the version before migration 0004, holding `rows`,
/// then opened (and so migrated) by this one.
async fn upgraded_sqlite(rows: &str) -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("migrations");
    std::fs::create_dir(&old).unwrap();
    for name in [
        "0001_init.sql",
        "0002_email_codes.sql",
        "0003_login_failures.sql",
    ] {
        let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations/sqlite")
            .join(name);
        std::fs::copy(from, old.join(name)).unwrap();
    }
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(AssertSqlSafe(rows.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    (Store::connect(&url).await.unwrap(), dir)
}

/// An earlier version's first start created `admin` and logged its password:
/// upgrading makes that password one-time, while a password set with the CLI
/// (for another name, or for `admin` since) stays.
#[tokio::test]
async fn upgrading_makes_an_earlier_first_start_password_one_time() {
    let (store, _dir) = upgraded_sqlite(
        "INSERT INTO sysadmins (name, password_hash, created_at) VALUES \
           ('admin', '$argon2id$logged', 1), ('root', '$argon2id$root', 1); \
         INSERT INTO audit_log (at, actor, action, target, detail) VALUES \
           (1, 'postern', 'sysadmin.add', 'admin', ''), \
           (2, 'cli:ops', 'sysadmin.add', 'root', '');",
    )
    .await;
    assert!(
        store
            .sysadmin("admin")
            .await
            .unwrap()
            .expect("admin")
            .must_change_password
    );
    assert!(
        !store
            .sysadmin("root")
            .await
            .unwrap()
            .expect("root")
            .must_change_password
    );

    let (store, _dir) = upgraded_sqlite(
        "INSERT INTO sysadmins (name, password_hash, created_at) VALUES \
           ('admin', '$argon2id$mine', 1); \
         INSERT INTO audit_log (at, actor, action, target, detail) VALUES \
           (1, 'postern', 'sysadmin.add', 'admin', ''), \
           (2, 'cli:ops', 'sysadmin.add', 'admin', '');",
    )
    .await;
    assert!(
        !store
            .sysadmin("admin")
            .await
            .unwrap()
            .expect("admin")
            .must_change_password
    );
}

#[tokio::test]
async fn the_schema_is_the_binarys_and_one_from_a_newer_postern_is_refused() {
    for db in test_dbs().await {
        let status = db.store.schema_status().await.unwrap();
        assert!(status.is_current(), "{status:?}");
        let known = db.store.known_migrations();
        assert_eq!(status.applied.len(), known.len());
        assert_eq!(status.version(), known.last().unwrap().version);
        assert!(db.store.migrate().await.unwrap().is_empty());

        let checksum = match db.store.backend() {
            Backend::Sqlite => "x'00'",
            Backend::Postgres => "decode('00', 'hex')",
        };
        db.raw(&format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (9999, 'from a newer postern', TRUE, {checksum}, 1)"
        ))
        .await;
        let status = db.store.schema_status().await.unwrap();
        assert_eq!(status.unknown, vec![9999]);
        assert!(status.needs_newer_binary());
        let err = db.store.migrate().await.unwrap_err();
        assert!(matches!(err, StoreError::Schema(_)), "{err}");
        assert!(err.to_string().contains("9999"), "{err}");
        assert!(db.store.require_current_schema().await.is_err());
        // `serve`'s start refuses it too.
        let err = Store::connect(&db.url).await.unwrap_err();
        assert!(err.to_string().contains("newer than this postern"), "{err}");
        db.finish().await;
    }
}

#[tokio::test]
async fn a_passkey_enrolls_its_user_and_a_ceremony_is_taken_once_before_it_expires() {
    use postern::store::CeremonyPurpose;
    on_each_db!(|s| {
        let user = s.ensure_user("pat@example.org").await.unwrap();
        let other = s.ensure_user("sam@example.org").await.unwrap();
        assert!(!s.user("pat@example.org").await.unwrap().unwrap().enrolled);
        let id = s
            .add_passkey(user.id, "laptop", "cred-1", "{}", "test")
            .await
            .unwrap();
        assert!(s.user("pat@example.org").await.unwrap().unwrap().enrolled);
        assert!(
            events(s)
                .await
                .iter()
                .any(|e| e.kind == EventKind::UserEnrolled)
        );
        assert!(
            audit_actions(s, "pat@example.org")
                .await
                .contains(&"passkey.add".to_owned())
        );
        s.passkey_used(id, "{\"counter\":1}").await.unwrap();
        let stored = &s.passkeys(user.id).await.unwrap()[0];
        assert_eq!(stored.name, "laptop");
        assert!(stored.last_used_at.is_some());
        // A credential id belongs to one passkey only.
        assert!(
            s.add_passkey(other.id, "copy", "cred-1", "{}", "test")
                .await
                .is_err()
        );

        let ceremony = s
            .begin_ceremony(user.id, CeremonyPurpose::Login, "state")
            .await
            .unwrap();
        assert_eq!(
            s.take_ceremony(&ceremony, other.id, CeremonyPurpose::Login)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            s.take_ceremony(&ceremony, user.id, CeremonyPurpose::Login)
                .await
                .unwrap()
                .as_deref(),
            Some("state")
        );
        assert_eq!(
            s.take_ceremony(&ceremony, user.id, CeremonyPurpose::Login)
                .await
                .unwrap(),
            None
        );
        let late = s
            .begin_ceremony(user.id, CeremonyPurpose::Register, "state")
            .await
            .unwrap();
        s.expire_ceremony(&late).await.unwrap();
        assert_eq!(
            s.take_ceremony(&late, user.id, CeremonyPurpose::Register)
                .await
                .unwrap(),
            None
        );

        // Reset 2-Step removes passkeys too: no longer enrolled.
        s.reset_user("pat@example.org", "test").await.unwrap();
        assert!(s.passkeys(user.id).await.unwrap().is_empty());
        assert!(!s.user("pat@example.org").await.unwrap().unwrap().enrolled);
    });
}

#[tokio::test]
async fn a_roll_out_is_scheduled_moved_and_cancelled_with_its_audit() {
    on_each_db!(|s| {
        let now = postern::clock::unix_now();
        s.add_domain("r.org", "cli").await.unwrap();
        s.set_domain_feature("r.org", true, "cli").await.unwrap();
        s.set_domain_status("r.org", DomainStatus::Enabled, None, "cli")
            .await
            .unwrap();
        let enrolled = s.ensure_user("e@r.org").await.unwrap();
        s.add_second_factor(enrolled.id, FactorKind::Totp, "GEZDGNBVGY3TQOJQ", true, "t")
            .await
            .unwrap();
        s.ensure_user("n1@r.org").await.unwrap();
        s.ensure_user("n2@r.org").await.unwrap();
        s.set_user_disabled("off@r.org", true, "t").await.unwrap();
        let counts = s.enrollment_counts("r.org").await.unwrap();
        assert_eq!((counts.enrolled, counts.not_enrolled), (1, 2));

        let at = now + 7 * 86_400;
        s.schedule_forced("r.org", at, "user:admin@r.org")
            .await
            .unwrap();
        let d = s.domain("r.org").await.unwrap().unwrap();
        assert_eq!(d.policy().scheduled_forced(now), Some(at));
        assert_eq!(
            d.policy().scheduled_forced(at),
            None,
            "switched at the date"
        );
        // Moved to a later date.
        s.schedule_forced("r.org", at + 86_400, "user:admin@r.org")
            .await
            .unwrap();
        let d = s.domain("r.org").await.unwrap().unwrap();
        assert_eq!(d.policy().scheduled_forced(now), Some(at + 86_400));

        assert!(
            s.cancel_scheduled_forced("r.org", "user:admin@r.org")
                .await
                .unwrap()
        );
        let d = s.domain("r.org").await.unwrap().unwrap();
        assert_eq!((d.status, d.grace_until), (DomainStatus::Enabled, None));
        // Nothing left to cancel; a domain Forced at once is not "scheduled".
        assert!(!s.cancel_scheduled_forced("r.org", "cli").await.unwrap());
        s.set_domain_status("r.org", DomainStatus::Forced, None, "cli")
            .await
            .unwrap();
        assert!(!s.cancel_scheduled_forced("r.org", "cli").await.unwrap());
        assert_eq!(
            s.domain("r.org").await.unwrap().unwrap().status,
            DomainStatus::Forced
        );
        assert!(matches!(
            s.cancel_scheduled_forced("unknown.org", "cli").await,
            Err(StoreError::UnknownDomain(_))
        ));

        let actions = audit_actions(s, "r.org").await;
        assert_eq!(
            actions
                .iter()
                .filter(|a| a.starts_with("domain.schedule"))
                .collect::<Vec<_>>(),
            [
                "domain.schedule_cancel",
                "domain.schedule_forced",
                "domain.schedule_forced"
            ]
        );
        let statuses = events(s)
            .await
            .into_iter()
            .filter(|e| e.kind == EventKind::DomainStatus)
            .count();
        assert_eq!(statuses, 5, "every change re-checks live sessions");
    });
}

#[tokio::test]
async fn roll_out_mails_are_claimed_once_whichever_node_asks() {
    use postern::policy::RolloutMail::{Notice, Reminder};
    on_each_db!(|s, db| {
        // A second node on the same database.
        let other = Store::connect(&db.url).await.unwrap();
        let now = postern::clock::unix_now();
        let at = now + 10 * 86_400;
        s.add_domain("r.org", "cli").await.unwrap();
        s.set_domain_feature("r.org", true, "cli").await.unwrap();
        s.schedule_forced("r.org", at, "cli").await.unwrap();
        let ivy = s.ensure_user("ivy@r.org").await.unwrap();
        let enrolled = s.ensure_user("e@r.org").await.unwrap();
        s.add_second_factor(enrolled.id, FactorKind::Totp, "GEZDGNBVGY3TQOJQ", true, "t")
            .await
            .unwrap();
        s.set_user_disabled("off@r.org", true, "t").await.unwrap();
        s.ensure_user("ivy@elsewhere.org").await.unwrap();

        let who = |list: Vec<postern::store::RolloutRecipient>| {
            list.into_iter().map(|r| r.address).collect::<Vec<_>>()
        };
        assert_eq!(
            who(s.rollout_recipients("r.org", at, now).await.unwrap()),
            ["ivy@r.org"]
        );

        // Both nodes race for ivy's notice: one wins.
        let (a, b) = tokio::join!(
            s.claim_rollout_mail(ivy.id, Notice, at, now),
            other.claim_rollout_mail(ivy.id, Notice, at, now)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a.is_some() != b.is_some(), "exactly one claim: {a:?} {b:?}");
        let (claim, winner, loser) = match a {
            Some(claim) => (claim, s, &other),
            None => (b.unwrap(), &other, s),
        };
        // Held: nobody else takes it while the claim's lease runs.
        assert!(
            loser
                .claim_rollout_mail(ivy.id, Notice, at, now + 1)
                .await
                .unwrap()
                .is_none()
        );
        assert!(winner.rollout_mail_sent(&claim, now).await.unwrap());
        // Sent: never again, even once the lease would have run out.
        let later = now + postern::store::CLAIM_LEASE_SECS + 1;
        for node in [s, &other] {
            assert!(
                node.claim_rollout_mail(ivy.id, Notice, at, later)
                    .await
                    .unwrap()
                    .is_none()
            );
        }
        // Before the reminder's days, ivy is nobody's work any more.
        assert!(
            s.rollout_recipients("r.org", at, later)
                .await
                .unwrap()
                .is_empty()
        );
        let window = at - postern::policy::ROLLOUT_REMINDER_SECS;
        let due = s.rollout_recipients("r.org", at, window).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].notice_sent_at, Some(now));
        assert!(!due[0].reminder_done);

        // A failed reminder waits for its retry time, then another node takes it.
        let claim = other
            .claim_rollout_mail(ivy.id, Reminder, at, window)
            .await
            .unwrap()
            .expect("reminder claimed");
        other
            .rollout_mail_failed(&claim, window + 300)
            .await
            .unwrap();
        assert!(
            s.claim_rollout_mail(ivy.id, Reminder, at, window + 299)
                .await
                .unwrap()
                .is_none()
        );
        let retried = s
            .claim_rollout_mail(ivy.id, Reminder, at, window + 300)
            .await
            .unwrap()
            .expect("taken again after the back-off");
        // The first claim is void once another node took the mail.
        assert!(!other.rollout_mail_sent(&claim, window + 301).await.unwrap());
        assert!(s.rollout_mail_sent(&retried, window + 301).await.unwrap());
        assert!(
            s.rollout_recipients("r.org", at, window + 400)
                .await
                .unwrap()
                .is_empty()
        );

        // A new date is a new roll-out: ivy is due its notice again.
        s.schedule_forced("r.org", at + 86_400, "cli")
            .await
            .unwrap();
        let due = s
            .rollout_recipients("r.org", at + 86_400, later)
            .await
            .unwrap();
        assert_eq!(who(due), ["ivy@r.org"]);
        // A skipped reminder counts as done.
        s.skip_rollout_mail(ivy.id, Reminder, at + 86_400, later)
            .await
            .unwrap();
        assert!(
            s.claim_rollout_mail(ivy.id, Reminder, at + 86_400, later)
                .await
                .unwrap()
                .is_none()
        );
        other.close().await;
    });
}

fn browser<'a>(id_hash: &'a str, expires_at: i64) -> postern::store::NewTrustedBrowser<'a> {
    postern::store::NewTrustedBrowser {
        id_hash,
        browser: "Firefox on Linux",
        password_tag: 0xbeef,
        created_at: 1_000,
        expires_at,
        replaces: None,
    }
}

#[tokio::test]
async fn trusted_browsers_are_stored_by_hash_used_forgotten_and_swept() {
    on_each_db!(|s| {
        let ann = s.ensure_user("ann@example.org").await.unwrap();
        let bob = s.ensure_user("bob@example.org").await.unwrap();
        let id = s
            .trust_browser(ann.id, &browser("h-ann", 5_000), "user:ann@example.org")
            .await
            .unwrap();
        let stored = s.trusted_browser("h-ann").await.unwrap().unwrap();
        assert_eq!(stored.id, id);
        assert_eq!(stored.user_id, ann.id);
        assert_eq!(stored.password_tag, 0xbeef);
        assert_eq!(stored.browser, "Firefox on Linux");
        assert_eq!(stored.last_used_at, None);
        assert!(s.trusted_browser("h-other").await.unwrap().is_none());
        // A hash is one browser: the same one cannot be stored twice.
        assert!(
            s.trust_browser(bob.id, &browser("h-ann", 5_000), "test")
                .await
                .is_err()
        );
        // Listed while not expired.
        assert_eq!(s.trusted_browsers(ann.id, 4_999).await.unwrap().len(), 1);
        assert!(s.trusted_browsers(ann.id, 5_000).await.unwrap().is_empty());
        assert!(s.trusted_browsers(bob.id, 0).await.unwrap().is_empty());

        s.trusted_browser_signed_in(ann.id, id, 2_000, Some("192.0.2.7"))
            .await
            .unwrap();
        let used = s.trusted_browser("h-ann").await.unwrap().unwrap();
        assert_eq!(used.last_used_at, Some(2_000));
        // Only its owner signs in with it, and only its owner forgets it.
        assert!(matches!(
            s.trusted_browser_signed_in(bob.id, id, 2_000, None).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            s.forget_trusted_browser(bob.id, id, "forgotten", "test")
                .await,
            Err(StoreError::NotFound)
        ));

        // A new cookie in the same browser replaces the old row, whoever's it was.
        let replacing = postern::store::NewTrustedBrowser {
            replaces: Some("h-ann"),
            ..browser("h-bob", 6_000)
        };
        s.trust_browser(bob.id, &replacing, "test").await.unwrap();
        assert!(s.trusted_browser("h-ann").await.unwrap().is_none());

        s.trust_browser(ann.id, &browser("h-ann2", 3_000), "test")
            .await
            .unwrap();
        let kept = s
            .trust_browser(ann.id, &browser("h-ann3", 9_000), "test")
            .await
            .unwrap();
        assert_eq!(s.sweep_trusted_browsers(3_000).await.unwrap(), 1);
        assert!(s.trusted_browser("h-ann2").await.unwrap().is_none());
        s.forget_trusted_browser(ann.id, kept, "forgotten", "user:ann@example.org")
            .await
            .unwrap();
        assert!(s.trusted_browsers(ann.id, 0).await.unwrap().is_empty());
        assert_eq!(
            s.forget_trusted_browsers(bob.id, "forget all", "test")
                .await
                .unwrap(),
            1
        );
        let actions = audit_actions(s, "ann@example.org").await;
        for action in [
            "trusted_browser.add",
            "web.login.trusted_browser",
            "trusted_browser.forget",
        ] {
            assert!(actions.iter().any(|a| a == action), "{action}: {actions:?}");
        }
        assert!(
            audit_actions(s, "bob@example.org")
                .await
                .iter()
                .any(|a| a == "trusted_browser.forget_all")
        );
    });
}

#[tokio::test]
async fn a_reset_or_the_domain_setting_forgets_trusted_browsers() {
    on_each_db!(|s| {
        s.add_domain("example.org", "cli").await.unwrap();
        s.add_domain("other.org", "cli").await.unwrap();
        let ann = s.ensure_user("ann@example.org").await.unwrap();
        let cat = s.ensure_user("cat@example.org").await.unwrap();
        let dan = s.ensure_user("dan@other.org").await.unwrap();
        for (user, hash) in [(ann.id, "a"), (ann.id, "a2"), (cat.id, "c"), (dan.id, "d")] {
            s.trust_browser(user, &browser(hash, i64::MAX), "test")
                .await
                .unwrap();
        }
        assert!(
            s.domain("example.org")
                .await
                .unwrap()
                .unwrap()
                .trusted_browsers
        );
        s.reset_user("ann@example.org", "cli").await.unwrap();
        assert!(s.trusted_browsers(ann.id, 0).await.unwrap().is_empty());
        assert_eq!(s.trusted_browsers(cat.id, 0).await.unwrap().len(), 1);

        let forgotten = s
            .set_domain_trusted_browsers("example.org", false, "user:boss@example.org")
            .await
            .unwrap();
        assert_eq!(forgotten, 1);
        assert!(
            !s.domain("example.org")
                .await
                .unwrap()
                .unwrap()
                .trusted_browsers
        );
        assert!(s.trusted_browsers(cat.id, 0).await.unwrap().is_empty());
        // Another domain's browsers stay.
        assert_eq!(s.trusted_browsers(dan.id, 0).await.unwrap().len(), 1);
        // The login's read carries the setting.
        let account = s.account("cat@example.org").await.unwrap();
        assert!(!account.domain.unwrap().trusted_browsers);
        assert_eq!(
            s.set_domain_trusted_browsers("example.org", true, "cli")
                .await
                .unwrap(),
            0
        );
        assert!(
            s.domain("example.org")
                .await
                .unwrap()
                .unwrap()
                .trusted_browsers
        );
        assert!(matches!(
            s.set_domain_trusted_browsers("nowhere.org", false, "cli")
                .await,
            Err(StoreError::UnknownDomain(_))
        ));
        let actions = audit_actions(s, "example.org").await;
        assert_eq!(
            actions
                .iter()
                .filter(|a| *a == "domain.trusted_browsers")
                .count(),
            2
        );
    });
}

#[tokio::test]
async fn a_notice_is_queued_with_its_change_and_claimed_by_one_sender_at_a_time() {
    use postern::notices::{CLAIM_TIMEOUT, NoticeKind};
    on_each_db!(|s| {
        s.add_domain("example.org", "test").await.unwrap();
        let user = s.ensure_user("ann@example.org").await.unwrap();
        s.add_second_factor(user.id, FactorKind::Email, "ann@home.test", true, "cli")
            .await
            .unwrap();
        let id = s
            .create_app_password(
                user.id,
                new_app_password("phone", "aa"),
                "user:ann@example.org",
            )
            .await
            .unwrap();
        let rows = s.notices_of("ann@example.org").await.unwrap();
        let kinds: Vec<(NoticeKind, &str)> = rows
            .iter()
            .map(|r| (r.notice.kind, r.notice.recipient.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (NoticeKind::TwoStepOn, "ann@example.org"),
                (NoticeKind::TwoStepOn, "ann@home.test"),
                (NoticeKind::AppPasswordCreated, "ann@example.org"),
                (NoticeKind::AppPasswordCreated, "ann@home.test"),
            ]
        );
        assert_eq!(rows[2].notice.detail, "\"phone\"");
        assert!(rows.iter().all(|r| r.state == "queued"));

        let now = postern::clock::unix_now();
        let first = s.claim_notices("a", now, CLAIM_TIMEOUT, 3).await.unwrap();
        assert_eq!(first.len(), 3);
        assert!(first.iter().all(|n| n.attempts == 1));
        let second = s.claim_notices("b", now, CLAIM_TIMEOUT, 10).await.unwrap();
        assert_eq!(second.len(), 1, "only the row nobody holds");
        assert!(
            s.claim_notices("c", now, CLAIM_TIMEOUT, 10)
                .await
                .unwrap()
                .is_empty()
        );
        s.notice_sent(first[0].id, "a").await.unwrap();
        // A claim older than the timeout lapses: another sender takes the rows.
        let later = now + CLAIM_TIMEOUT;
        let retaken = s
            .claim_notices("d", later, CLAIM_TIMEOUT, 10)
            .await
            .unwrap();
        assert_eq!(retaken.len(), 3, "{retaken:?}");
        // The lapsed claim's outcome no longer counts.
        s.notice_sent(first[1].id, "a").await.unwrap();
        for notice in &retaken {
            s.notice_failed(notice.id, "d", false, later + 60)
                .await
                .unwrap();
        }
        let rows = s.notices_of("ann@example.org").await.unwrap();
        let states: Vec<&str> = rows.iter().map(|r| r.state.as_str()).collect();
        assert_eq!(states, vec!["sent", "queued", "queued", "queued"]);
        assert!(
            s.claim_notices("e", later, CLAIM_TIMEOUT, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let due = s
            .claim_notices("e", later + 60, CLAIM_TIMEOUT, 10)
            .await
            .unwrap();
        assert_eq!(due.len(), 3);
        assert!(due.iter().all(|n| n.attempts == 3 || n.attempts == 2));
        for notice in &due {
            s.notice_failed(notice.id, "e", true, later + 60)
                .await
                .unwrap();
        }
        // Sent and failed rows go once they are old; nothing is left to send.
        assert_eq!(s.prune_notices(now).await.unwrap(), 0);
        assert_eq!(s.prune_notices(later + 120).await.unwrap(), 4);
        assert!(s.notices_of("ann@example.org").await.unwrap().is_empty());

        // Revoking names the device; an address without a user gets nothing.
        s.revoke_app_password(user.id, id, "cli").await.unwrap();
        let rows = s.notices_of("ann@example.org").await.unwrap();
        assert_eq!(rows.len(), 2);
        assert!(
            rows.iter()
                .all(|r| r.notice.kind == NoticeKind::AppPasswordRevoked
                    && r.notice.detail == "\"phone\""
                    && r.notice.actor == "cli")
        );
        s.enqueue_notice(
            "nobody@example.org",
            NoticeKind::AccountBlocked,
            "",
            "system",
        )
        .await
        .unwrap();
        assert!(s.notices_of("nobody@example.org").await.unwrap().is_empty());
    });
}

#[tokio::test]
async fn a_turned_off_kind_is_not_queued_and_a_user_gets_ten_an_hour() {
    use postern::notices::{NoticeKind, NoticeKinds};
    use postern::policy::{NOTICES_PER_HOUR, NoticeDecision};
    on_each_db!(|s| {
        s.add_domain("example.org", "test").await.unwrap();
        let off = NoticeKinds::NONE.with(NoticeKind::BackupCodes);
        s.set_domain_notices("example.org", off, "cli")
            .await
            .unwrap();
        assert_eq!(
            s.domain("example.org").await.unwrap().unwrap().notices_off,
            off
        );
        assert_eq!(s.list_domains().await.unwrap()[0].notices_off, off);
        assert!(matches!(
            s.set_domain_notices("nowhere.org", off, "cli").await,
            Err(StoreError::UnknownDomain(_))
        ));
        assert!(
            audit_actions(s, "example.org")
                .await
                .contains(&"domain.notices".to_owned())
        );
        let user = s.ensure_user("ann@example.org").await.unwrap();
        s.replace_backup_codes(user.id, &["x".into()], "cli")
            .await
            .unwrap();
        assert!(s.notices_of("ann@example.org").await.unwrap().is_empty());
        for _ in 0..NOTICES_PER_HOUR {
            assert_eq!(
                s.enqueue_notice("ann@example.org", NoticeKind::AccountBlocked, "", "system")
                    .await
                    .unwrap(),
                NoticeDecision::Queue
            );
        }
        assert_eq!(
            s.enqueue_notice("ann@example.org", NoticeKind::AccountBlocked, "", "system")
                .await
                .unwrap(),
            NoticeDecision::RateLimited
        );
        let n = s.notices_of("ann@example.org").await.unwrap().len();
        assert_eq!(i64::try_from(n).unwrap(), NOTICES_PER_HOUR);
    });
}

#[tokio::test]
async fn two_nodes_claiming_at_once_never_get_the_same_notice() {
    use postern::notices::{CLAIM_TIMEOUT, NoticeKind};
    on_each_db!(|s, db| {
        for n in 0..6 {
            let address = format!("u{n}@example.org");
            s.ensure_user(&address).await.unwrap();
            for _ in 0..5 {
                s.enqueue_notice(&address, NoticeKind::TwoStepOn, "", "cli")
                    .await
                    .unwrap();
            }
        }
        let other = Store::connect(&db.url).await.unwrap();
        let now = postern::clock::unix_now();
        let mut seen = std::collections::BTreeSet::new();
        loop {
            let (a, b) = tokio::join!(
                s.claim_notices("a", now, CLAIM_TIMEOUT, 4),
                other.claim_notices("b", now, CLAIM_TIMEOUT, 4)
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            if a.is_empty() && b.is_empty() {
                break;
            }
            for notice in a.iter().chain(&b) {
                assert!(seen.insert(notice.id), "claimed twice: {}", notice.id);
            }
        }
        assert_eq!(seen.len(), 30);
        other.close().await;
    });
}
