//! `postern admin ...` as a script or an operator sees it: the real binary, a fresh
//! SQLite file and key per test, exit codes, stdout (text and `--json`) and stderr.
//! The store is opened directly only to plant data (40 app passwords, a live
//! session) or to look at what has no listing (system administrators, events).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use postern::policy::{Protocol, Scopes};
use postern::store::{EventKind, NewAppPassword, SessionRow, Store};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Env {
    fn new() -> Env {
        Env::with_extra("")
    }

    /// A minimal config, plus `extra` appended to the `[store]` section.
    fn with_extra(extra: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("postern.toml");
        let text = format!(
            "[store]\nurl = \"sqlite://{}\"\n{extra}\n[secrets]\nkey_file = \"{}\"\n",
            dir.path().join("p.db").display(),
            dir.path().join("k").display()
        );
        std::fs::write(&config, text).unwrap();
        Env { dir, config }
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("p.db").display())
    }

    /// `postern --config C <args>` with `stdin` written to its standard input.
    fn spawn(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("POSTERN_CONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs `args` (after `--config C`); asserts success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.spawn(args, "");
        assert!(
            out.status.success(),
            "postern {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
    }

    /// Runs `args`; asserts a non-zero exit and an empty stdout; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.spawn(args, "");
        assert!(!out.status.success(), "postern {args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
        String::from_utf8(out.stderr).unwrap()
    }

    /// Opens the store directly (closed by the caller before the next spawn).
    fn with_store<T>(&self, f: impl AsyncFnOnce(&Store) -> T) -> T {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let store = Store::connect(&self.url()).await.unwrap();
            let result = f(&store).await;
            store.close().await;
            result
        })
    }
}

/// Seconds between an RFC 3339 time and now + `offset`.
fn seconds_from(text: &Value, offset: i64) -> i64 {
    let at = OffsetDateTime::parse(text.as_str().unwrap(), &Rfc3339).unwrap();
    (at.unix_timestamp() - OffsetDateTime::now_utc().unix_timestamp() - offset).abs()
}

#[test]
fn domains_flags_anywhere_and_json_shape() {
    let env = Env::new();
    let config = env.config.to_str().unwrap();
    assert!(
        env.ok(&["admin", "domain", "add", "Example.ORG"])
            .contains("added")
    );
    // --config after the subcommand too (the helper also passes one first).
    let again = env.ok(&["admin", "domain", "add", "example.org", "--config", config]);
    assert!(again.contains("already known"), "{again}");
    env.ok(&["admin", "domain", "feature", "example.org", "on"]);
    env.ok(&[
        "admin",
        "domain",
        "status",
        "example.org",
        "forced",
        "--grace-days",
        "7",
    ]);

    let before = env.json(&["--json", "admin", "domain", "list"]);
    let after = env.json(&["admin", "domain", "list", "--json"]);
    assert_eq!(before, after);
    let list = after.as_array().unwrap();
    assert_eq!(list.len(), 1);
    let domain = &list[0];
    let keys: Vec<&str> = domain
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    // DESIGN's four, and the security notices turned off.
    assert_eq!(keys.len(), 5, "{domain}");
    assert_eq!(domain["notices_off"], json!([]));
    assert_eq!(domain["domain"], "example.org");
    assert_eq!(domain["feature"], true);
    assert_eq!(domain["status"], "forced");
    assert!(seconds_from(&domain["grace_until"], 7 * 86_400) < 300);

    // Without --grace-days the grace period is cleared.
    env.ok(&["admin", "domain", "status", "example.org", "enabled"]);
    env.ok(&["admin", "domain", "add", "other.example"]);
    let list = env.json(&["admin", "domain", "list", "--json"]);
    assert_eq!(
        list,
        json!([
            {"domain": "example.org", "feature": true, "status": "enabled", "grace_until": null, "notices_off": []},
            {"domain": "other.example", "feature": false, "status": "disabled", "grace_until": null, "notices_off": []},
        ])
    );

    let text = env.ok(&["admin", "domain", "list"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("DOMAIN"), "{text}");
    let words: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(words, ["example.org", "on", "enabled", "-", "-"]);
}

#[test]
fn security_notices_are_turned_off_and_on_per_domain() {
    let env = Env::new();
    env.ok(&["admin", "domain", "add", "example.org"]);
    let shown = env.ok(&["admin", "domain", "notices", "example.org"]);
    assert!(shown.contains("every security notice is sent"), "{shown}");
    let off = env.ok(&[
        "admin",
        "domain",
        "notices",
        "example.org",
        "--off",
        "app-password-created,backup-codes",
    ]);
    assert!(
        off.contains("security notices off: app-password-created,backup-codes"),
        "{off}"
    );
    env.ok(&[
        "admin",
        "domain",
        "notices",
        "example.org",
        "--on",
        "backup-codes",
    ]);
    let list = env.json(&["admin", "domain", "list", "--json"]);
    assert_eq!(list[0]["notices_off"], json!(["app-password-created"]));
    let err = env.fails(&[
        "admin",
        "domain",
        "notices",
        "example.org",
        "--off",
        "app-password",
    ]);
    assert!(err.contains("app-password-created"), "{err}");
    let err = env.fails(&[
        "admin",
        "domain",
        "notices",
        "example.org",
        "--off",
        "backup-codes",
        "--on",
        "backup-codes",
    ]);
    assert!(err.contains("both"), "{err}");
    let err = env.fails(&[
        "admin",
        "domain",
        "notices",
        "nowhere.example",
        "--off",
        "backup-codes",
    ]);
    assert!(err.contains("domain add"), "{err}");
    let audit = env.ok(&["admin", "audit"]);
    assert!(audit.contains("domain.notices"), "{audit}");
}

#[test]
fn forced_from_a_date_is_scheduled_and_shown_as_the_grace_until() {
    let env = Env::new();
    env.ok(&["admin", "domain", "add", "example.org"]);
    env.ok(&["admin", "domain", "feature", "example.org", "on"]);
    let day = (OffsetDateTime::now_utc().date() + time::Duration::days(10)).to_string();
    let said = env.ok(&[
        "admin",
        "domain",
        "status",
        "example.org",
        "forced",
        "--from",
        &day,
    ]);
    assert!(
        said.contains(&format!("forced from {day}T00:00:00Z")),
        "{said}"
    );
    let list = env.json(&["admin", "domain", "list", "--json"]);
    assert_eq!(list[0]["status"], "forced");
    assert_eq!(list[0]["grace_until"], format!("{day}T00:00:00Z"));
    for bad in [
        vec!["forced", "--from", "2001-01-01"],
        vec!["enabled", "--from", day.as_str()],
        vec!["forced", "--from", "soon"],
    ] {
        let mut args = vec!["admin", "domain", "status", "example.org"];
        args.extend(bad);
        let err = env.fails(&args);
        assert!(err.contains("--from"), "{err}");
    }
    let err = env.fails(&[
        "admin",
        "domain",
        "status",
        "example.org",
        "forced",
        "--from",
        &day,
        "--grace-days",
        "3",
    ]);
    assert!(
        err.contains("--grace-days") || err.contains("--from"),
        "{err}"
    );
    // The date stands after the refused changes.
    let list = env.json(&["admin", "domain", "list", "--json"]);
    assert_eq!(list[0]["grace_until"], format!("{day}T00:00:00Z"));
}

#[test]
fn settings_of_an_unknown_domain_name_domain_add() {
    let env = Env::new();
    let err = env.fails(&["admin", "domain", "feature", "nowhere.example", "on"]);
    assert!(err.contains("domain add"), "{err}");
    let err = env.fails(&["admin", "domain", "status", "nowhere.example", "forced"]);
    assert!(err.contains("domain add"), "{err}");
    let err = env.fails(&["admin", "domain", "feature", "nowhere.example", "maybe"]);
    assert!(err.contains("maybe"), "{err}");
}

#[test]
fn with_json_an_error_is_one_json_object_on_stderr() {
    let env = Env::new();
    for args in [
        &[
            "--json",
            "admin",
            "domain",
            "feature",
            "nowhere.example",
            "on",
        ][..],
        &[
            "admin",
            "domain",
            "status",
            "nowhere.example",
            "forced",
            "--json",
        ][..],
    ] {
        let err = env.fails(args);
        let value: serde_json::Value =
            serde_json::from_str(err.trim()).unwrap_or_else(|e| panic!("{e}: {err}"));
        let text = value["error"].as_str().unwrap_or_default();
        assert!(text.contains("domain add"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

#[test]
fn user_list_after_enroll_disable_and_admin() {
    let env = Env::new();
    env.ok(&["admin", "domain", "add", "example.org"]);
    env.ok(&[
        "admin",
        "user",
        "enroll-totp",
        "Alice@Example.org",
        "--secret",
        SECRET,
    ]);
    env.ok(&["admin", "user", "disable", "bob@example.org"]);
    env.ok(&[
        "admin",
        "domain",
        "admin",
        "example.org",
        "carol@example.org",
    ]);
    let err = env.fails(&[
        "admin",
        "user",
        "enroll-totp",
        "dave@example.org",
        "--secret",
        "not base32!",
    ]);
    assert!(err.contains("--secret"), "{err}");

    let users = env.json(&["admin", "user", "list", "example.org", "--json"]);
    assert_eq!(
        users,
        json!([
            {"user": "alice@example.org", "enrolled": true, "disabled": false,
             "domain_admin": false, "app_passwords": 0},
            {"user": "bob@example.org", "enrolled": false, "disabled": true,
             "domain_admin": false, "app_passwords": 0},
            {"user": "carol@example.org", "enrolled": false, "disabled": false,
             "domain_admin": true, "app_passwords": 0},
        ])
    );
    env.ok(&["admin", "user", "enable", "bob@example.org"]);
    let text = env.ok(&["admin", "user", "list", "example.org"]);
    assert!(text.starts_with("USER"), "{text}");
    let bob: Vec<&str> = text.lines().nth(2).unwrap().split_whitespace().collect();
    assert_eq!(bob, ["bob@example.org", "no", "no", "no", "0"]);
}

#[test]
fn app_password_create_list_revoke_and_reset() {
    let env = Env::new();
    let user = "alice@example.org";
    env.ok(&["admin", "user", "enroll-totp", user, "--secret", SECRET]);

    let text = env.ok(&["admin", "app-password", "create", user, "--name", "phone"]);
    let first = text.lines().next().unwrap();
    assert_eq!(first.len(), 29, "{text}");
    for (i, c) in first.chars().enumerate() {
        if i % 5 == 4 {
            assert_eq!(c, '-', "{first}");
        } else {
            assert!(c.is_ascii_lowercase() || c.is_ascii_digit(), "{first}");
        }
    }

    let created = env.json(&[
        "--json",
        "admin",
        "app-password",
        "create",
        user,
        "--name",
        "laptop",
        "--scope",
        "imap,smtp",
        "--expires-days",
        "30",
    ]);
    let id = created["id"].as_i64().unwrap();
    assert_eq!(created["password"].as_str().unwrap().len(), 29);
    assert_eq!(created.as_object().unwrap().len(), 2);

    let list = env.json(&["admin", "app-password", "list", user, "--json"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "phone");
    assert_eq!(list[0]["scopes"], json!(["imap", "pop3", "smtp"]));
    assert_eq!(list[0]["expires_at"], Value::Null);
    let laptop = &list[1];
    assert_eq!(laptop["id"], id);
    assert_eq!(laptop["scopes"], json!(["imap", "smtp"]));
    assert!(seconds_from(&laptop["created_at"], 0) < 300);
    assert!(seconds_from(&laptop["expires_at"], 30 * 86_400) < 300);
    for key in ["last_used_at", "last_used_ip", "last_used_protocol"] {
        assert_eq!(laptop[key], Value::Null, "{key}");
    }
    assert_eq!(laptop["networks"], json!([]));
    assert_eq!(laptop.as_object().unwrap().len(), 9);

    let id = id.to_string();
    env.ok(&["admin", "app-password", "revoke", user, &id]);
    let err = env.fails(&["admin", "app-password", "revoke", user, &id]);
    assert!(err.contains("no app password"), "{err}");
    let list = env.json(&["admin", "app-password", "list", user, "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);

    env.ok(&["admin", "user", "reset", user]);
    let list = env.json(&["admin", "app-password", "list", user, "--json"]);
    assert_eq!(list, json!([]));
    let users = env.json(&["admin", "user", "list", "example.org", "--json"]);
    assert_eq!(users[0]["enrolled"], false);
    assert_eq!(users[0]["app_passwords"], 0);
}

#[test]
fn the_forty_first_app_password_is_refused() {
    let env = Env::new();
    // Forty planted directly, each its own lookup.
    env.with_store(async |store| {
        let user = store.ensure_user("alice@example.org").await.unwrap();
        for i in 0..40 {
            let new = NewAppPassword {
                name: format!("device {i}"),
                lookup: format!("lookup-{i}"),
                scopes: Scopes::ALL,
                expires_at: None,
                networks: Default::default(),
            };
            store
                .create_app_password(user.id, new, "test")
                .await
                .unwrap();
        }
    });
    let err = env.fails(&[
        "admin",
        "app-password",
        "create",
        "alice@example.org",
        "--name",
        "one too many",
    ]);
    assert!(err.contains("at most 40"), "{err}");
}

#[test]
fn sysadmin_add_reads_the_password_from_stdin() {
    let env = Env::new();
    let out = env.spawn(
        &["admin", "sysadmin", "add", "root"],
        "correct horse\nignored\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.spawn(&["admin", "sysadmin", "add", "empty"], "\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty password"));

    let (root, empty) = env.with_store(async |store| {
        (
            store.sysadmin_hash("root").await.unwrap(),
            store.sysadmin_hash("empty").await.unwrap(),
        )
    });
    assert!(root.unwrap().starts_with("$argon2id$"));
    assert_eq!(empty, None);
}

#[test]
fn sessions_are_listed_and_a_kill_is_recorded() {
    let env = Env::new();
    assert_eq!(env.json(&["admin", "session", "list", "--json"]), json!([]));
    env.with_store(async |store| {
        let session = SessionRow {
            id: "node1-7".into(),
            node: "node1".into(),
            user_address: "alice@example.org".into(),
            protocol: Protocol::Imap,
            credential: "app-password:3".into(),
            client_ip: "192.0.2.7".into(),
            started_at: 1_700_000_000,
        };
        store.register_session(&session).await.unwrap();
    });
    let list = env.json(&["admin", "session", "list", "--json"]);
    assert_eq!(
        list,
        json!([{"id": "node1-7", "user": "alice@example.org", "protocol": "imap",
                "credential": "app-password:3", "client_ip": "192.0.2.7",
                "node": "node1", "started_at": "2023-11-14T22:13:20Z"}])
    );

    let text = env.ok(&["admin", "session", "kill", "Alice@example.org"]);
    assert!(text.contains("kill requested"), "{text}");
    let events = env.with_store(async |store| store.events_after(0, 100).await.unwrap());
    let kill = events.last().unwrap();
    assert_eq!(kill.kind, EventKind::SessionKill);
    assert_eq!(kill.user_address.as_deref(), Some("alice@example.org"));
}

#[test]
fn a_bad_config_key_is_named() {
    let env = Env::with_extra("bogus_key = 1");
    let err = env.fails(&["admin", "domain", "list"]);
    assert!(err.contains("bogus_key"), "{err}");
}

#[test]
fn audit_lists_changes_and_logins_with_filters() {
    let env = Env::new();
    env.ok(&["admin", "domain", "add", "example.org"]);
    env.ok(&["admin", "user", "disable", "alice@example.org"]);
    env.with_store(async |store| {
        store
            .audit(
                "user:bob@example.org",
                "login",
                "bob@example.org",
                "imap refused bad-password",
                Some("192.0.2.7"),
            )
            .await
            .unwrap();
    });

    let all = env.json(&["admin", "audit", "--json"]);
    let rows = all.as_array().unwrap();
    assert!(rows.len() >= 3, "{all}");
    let keys: Vec<&str> = rows[0]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    // serde_json's map is sorted.
    assert_eq!(keys, ["action", "actor", "at", "detail", "ip", "target"]);
    // Newest first: the planted login row.
    assert_eq!(rows[0]["action"], "login");
    assert_eq!(rows[0]["ip"], "192.0.2.7");
    assert!(seconds_from(&rows[0]["at"], 0) < 60);

    let bob = env.json(&["admin", "audit", "--user", "Bob@Example.org", "--json"]);
    assert_eq!(bob.as_array().unwrap().len(), 1, "{bob}");
    let alice = env.json(&["admin", "audit", "--user", "alice@example.org", "--json"]);
    assert!(
        alice
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["target"] == "alice@example.org"),
        "{alice}"
    );
    assert!(!alice.as_array().unwrap().is_empty());

    let one = env.json(&["admin", "audit", "--limit", "1", "--json"]);
    assert_eq!(one.as_array().unwrap().len(), 1);
    let recent = env.json(&["admin", "audit", "--since", "1h", "--json"]);
    assert_eq!(recent.as_array().unwrap().len(), rows.len());
    let future = env.json(&["admin", "audit", "--since", "2999-01-01", "--json"]);
    assert_eq!(future, json!([]));
    let old = env.json(&[
        "admin",
        "audit",
        "--since",
        "2000-01-01T00:00:00Z",
        "--json",
    ]);
    assert_eq!(old.as_array().unwrap().len(), rows.len());

    let table = env.ok(&["admin", "audit", "--user", "bob@example.org"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("AT"), "{table}");
    assert!(lines[1].contains("login") && lines[1].contains("192.0.2.7"));

    assert!(
        env.fails(&["admin", "audit", "--since", "soon"])
            .contains("duration")
    );
    env.fails(&["admin", "audit", "--limit", "0"]);
}

/// Counts the non-overlapping occurrences of `needle` in `text`.
fn occurrences(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[test]
fn a_store_that_cannot_be_opened_is_named_without_its_password_and_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("postern.toml");
    // Port 1 on loopback: nothing listens there, so the connection is refused.
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"postgres://postern:s3cret@127.0.0.1:1/x?password=s3cret\"\n\
             [secrets]\nkey_file = \"{}\"\n",
            dir.path().join("k").display()
        ),
    )
    .unwrap();
    for command in [&["admin", "domain", "list"][..], &["serve"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_postern"))
            .args(["--config".as_ref(), config.as_os_str()])
            .args(command)
            .env_remove("POSTERN_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{command:?}: {stderr}");
        assert!(!stdout.contains("s3cret"), "{command:?}: {stdout}");
        assert_store_error_is_redacted_once(&stderr);
    }
}

/// `stderr` names the store without its password and says each cause once.
fn assert_store_error_is_redacted_once(stderr: &str) {
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert!(
        stderr.contains("postgres://postern:***@127.0.0.1:1/x?password=***"),
        "{stderr}"
    );
    assert_eq!(occurrences(stderr, "cannot open the store"), 1, "{stderr}");
    // Whatever sqlx says went wrong (a refused connection or a pool timeout), it is
    // said once: no part of the message repeats.
    let cause = stderr
        .trim_end()
        .rsplit(": ")
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(!cause.is_empty(), "{stderr}");
    assert_eq!(occurrences(stderr, &cause), 1, "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
fn an_unreadable_config_file_is_named_once_with_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["--config".as_ref(), missing.as_os_str()])
        .args(["admin", "domain", "list"])
        .env_remove("POSTERN_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(occurrences(&stderr, "missing.toml"), 1, "{stderr}");
    assert_eq!(
        occurrences(&stderr, "No such file or directory"),
        1,
        "{stderr}"
    );
}

#[test]
fn a_domain_that_is_no_host_name_is_refused() {
    let env = Env::new();
    for bad in [
        "javascript:alert(1)",
        "exa mple.org",
        "bad-.example",
        "a..b",
    ] {
        let err = env.fails(&["admin", "domain", "add", bad]);
        assert!(err.contains("is not a domain name"), "{bad}: {err}");
    }
    env.ok(&["admin", "domain", "add", "Bücher.example"]);
    let list = env.json(&["admin", "domain", "list", "--json"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["domain"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["bücher.example"]);
}

#[test]
fn app_password_expiry_is_one_to_3650_days_as_on_the_web() {
    let env = Env::new();
    let user = "alice@example.org";
    for days in ["0", "3651", "never"] {
        let err = env.fails(&[
            "admin",
            "app-password",
            "create",
            user,
            "--name",
            "phone",
            "--expires-days",
            days,
        ]);
        assert!(err.contains("from 1 to 3650"), "{days}: {err}");
    }
    env.ok(&[
        "admin",
        "app-password",
        "create",
        user,
        "--name",
        "phone",
        "--expires-days",
        "3650",
    ]);
}

#[test]
fn app_password_source_networks_are_checked_and_listed() {
    let env = Env::new();
    let user = "alice@example.org";
    let err = env.fails(&[
        "admin",
        "app-password",
        "create",
        user,
        "--name",
        "desk",
        "--networks",
        "192.0.2.0/24,office",
    ]);
    assert!(err.contains("\"office\" is not an IPv4 or IPv6"), "{err}");
    env.ok(&[
        "admin",
        "app-password",
        "create",
        user,
        "--name",
        "desk",
        "--networks",
        "192.0.2.7/24,2001:db8::/32",
    ]);
    let list = env.json(&["admin", "app-password", "list", user, "--json"]);
    assert_eq!(
        list[0]["networks"],
        json!(["192.0.2.0/24", "2001:db8::/32"])
    );
    let table = env.ok(&["admin", "app-password", "list", user]);
    assert!(table.contains("192.0.2.0/24,2001:db8::/32"), "{table}");
}

// ---- check-config, migrate, completions, man (issue 16) ----

/// Writes `text` to `<dir>/postern.toml`, `$DIR` replaced by the folder.
fn write_config(dir: &std::path::Path, text: &str) -> PathBuf {
    let config = dir.join("postern.toml");
    std::fs::write(&config, text.replace("$DIR", &dir.display().to_string())).unwrap();
    config
}

/// `postern --config <config> <args>`, without stdin.
fn run_postern(config: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_postern"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("POSTERN_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// [`run_postern`] on `text` in a fresh folder.
fn run_with_config(text: &str, args: &[&str]) -> (tempfile::TempDir, Output) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), text);
    let out = run_postern(&config, args);
    (dir, out)
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const GOOD_CONFIG: &str = "[store]\nurl = \"sqlite://$DIR/data/p.db\"\n\
    [secrets]\nkey_file = \"$DIR/data/p.key\"\n\
    [tls]\ncert = \"$DIR/certs/p.crt\"\nkey = \"$DIR/certs/p.key\"\n\
    [web]\nlisten = \"127.0.0.1:0\"\n\
    [imap]\nlisten = [\"127.0.0.1:0\"]\nlisten_tls = [\"127.0.0.1:0\"]\n";

#[test]
fn check_config_accepts_a_good_file_and_writes_nothing() {
    let (dir, out) = run_with_config(GOOD_CONFIG, &["check-config"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout_of(&out));
    assert!(stdout_of(&out).contains(": ok"), "{}", stdout_of(&out));
    // Missing files are only checked to be creatable: none was created.
    assert!(!dir.path().join("data").exists());
    assert!(!dir.path().join("certs").exists());
}

#[test]
fn check_config_prints_one_line_per_problem_naming_the_key() {
    let text = "[store]\nurl = \"mysql://db/postern\"\n\
        [secrets]\nkey_file = \"$DIR/key\"\n\
        [tls]\ncert = \"$DIR/only.crt\"\nkey = \"$DIR/missing.key\"\n\
        [web]\nlisten = \"127.0.0.1:9999\"\npublic_url = \"mail.example.org\"\n\
        [imap]\nupstream = \"nohost\"\n\
        [pop3]\nlisten = [\"127.0.0.1:9999\"]\n\
        [upstream_auth]\nmaster_password_file = \"$DIR/no-such-file\"\n\
        [limits]\nworker_threads = 0\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("only.crt"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("key"), "not hex").unwrap();
    let config = write_config(dir.path(), text);
    let out = run_postern(&config, &["check-config"]);
    let stdout = stdout_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let keys: Vec<&str> = stdout
        .lines()
        .map(|l| l.split_once(": ").map_or(l, |(k, _)| k))
        .collect();
    for key in [
        "store.url",
        "secrets.key_file",
        "tls.key",
        "web.public_url",
        "imap.upstream",
        "pop3.listen",
        "upstream_auth.master_password_file",
        "limits.worker_threads",
    ] {
        assert!(keys.contains(&key), "no line for {key}:\n{stdout}");
    }
    assert!(stdout.contains("already used by web.listen"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("problems"),
        "{:?}",
        out.stderr
    );
    // --json: the same problems as an array of {key, message}.
    let out = run_postern(&config, &["check-config", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), keys.len());
    assert!(list[0]["key"].is_string() && list[0]["message"].is_string());
}

#[test]
fn check_config_names_an_unknown_key_and_a_broken_tls_pair() {
    let text = format!("{GOOD_CONFIG}upstrem = \"127.0.0.1:143\"\n");
    let (_dir, out) = run_with_config(&text, &["check-config"]);
    let stdout = stdout_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.starts_with("imap.upstrem: unknown field"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    std::fs::write(dir.path().join("certs/p.crt"), "garbage").unwrap();
    std::fs::write(dir.path().join("certs/p.key"), "garbage").unwrap();
    let out = run_postern(&write_config(dir.path(), GOOD_CONFIG), &["check-config"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout_of(&out).starts_with("tls.cert: "),
        "{}",
        stdout_of(&out)
    );
}

#[test]
fn check_config_usage_errors_exit_2_and_a_missing_file_exits_1() {
    let (_dir, out) = run_with_config(GOOD_CONFIG, &["check-config", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run_postern(
        std::path::Path::new("/nonexistent/postern.toml"),
        &["check-config"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout_of(&out).starts_with("config: cannot read"),
        "{}",
        stdout_of(&out)
    );
}

#[test]
fn check_config_connect_reaches_the_upstreams_and_the_store() {
    let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let text = format!(
        "{GOOD_CONFIG}upstream = \"{}\"\n[pop3]\nlisten = [\"127.0.0.1:0\"]\n\
         listen_tls = [\"127.0.0.1:0\"]\nupstream = \"{closed_addr}\"\n\
         [relay]\nsmtp = \"{}\"\n",
        up.local_addr().unwrap(),
        up.local_addr().unwrap()
    );
    let (_dir, out) = run_with_config(&text, &["check-config"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout_of(&out));
    let (dir, out) = run_with_config(&text, &["check-config", "--connect"]);
    let stdout = stdout_of(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with(&format!("pop3.upstream: cannot connect to {closed_addr}")),
        "{stdout}"
    );
    // Opening the store creates the SQLite file, but no schema.
    assert!(dir.path().join("data/p.db").exists());
}

/// A SQLite database at `path` with the first `n` migrations applied, as an
/// older postern left it.
fn database_with_migrations(path: &std::path::Path, n: usize) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let all: Vec<_> = sqlx::migrate!("migrations/sqlite")
            .iter()
            .cloned()
            .collect();
        sqlx::migrate::Migrator::with_migrations(all[..n].to_vec())
            .run(&pool)
            .await
            .unwrap();
        pool.close().await;
    });
}

fn migrations_on_disk() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("migrations/sqlite")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    names.sort();
    names
}

#[test]
fn admin_stops_on_an_older_schema_and_migrate_brings_it_up_to_date() {
    let env = Env::new();
    let names = migrations_on_disk();
    let last = &names[names.len() - 1][..4];
    database_with_migrations(&env.dir.path().join("p.db"), names.len() - 1);

    let err = env.fails(&["admin", "domain", "list"]);
    assert!(err.contains("older than this postern"), "{err}");
    assert!(err.contains(&format!("migration {last}")), "{err}");
    assert!(err.contains("postern migrate"), "{err}");
    // Nothing was migrated behind the operator's back.
    let err = env.fails(&["admin", "domain", "add", "example.org"]);
    assert!(err.contains(last), "{err}");

    let out = env.spawn(&["migrate", "--check"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout_of(&out).contains(&format!("pending {last}")),
        "{}",
        stdout_of(&out)
    );

    let applied = env.ok(&["migrate"]);
    assert!(applied.contains(&format!("applied {last}")), "{applied}");
    assert!(
        applied.contains(&format!("schema up to date (version {last})")),
        "{applied}"
    );
    assert!(env.ok(&["migrate"]).starts_with("schema up to date"));
    assert_eq!(
        env.spawn(&["migrate", "--check"], "").status.code(),
        Some(0)
    );
    env.ok(&["admin", "domain", "add", "example.org"]);
}

#[test]
fn admin_and_migrate_refuse_a_schema_from_a_newer_postern() {
    let env = Env::new();
    env.ok(&["migrate"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pool = sqlx::SqlitePool::connect(&env.url()).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (9999, 'from the future', TRUE, x'00', 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    });
    let err = env.fails(&["admin", "domain", "list"]);
    assert!(err.contains("newer than this postern"), "{err}");
    assert!(err.contains("9999"), "{err}");
    let out = env.spawn(&["migrate"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("9999"));
    // --json: the error as a JSON object on stderr, nothing on stdout.
    let out = env.spawn(&["migrate", "--json"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let error: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert!(error["error"].as_str().unwrap().contains("9999"), "{error}");
}

#[test]
fn admin_gives_a_new_database_its_schema() {
    let env = Env::new();
    env.ok(&["admin", "domain", "add", "example.org"]);
    let out = env.ok(&["migrate", "--check"]);
    assert!(out.starts_with("schema up to date"), "{out}");
}

#[test]
fn completions_and_the_man_page_cover_every_command() {
    let env = Env::new();
    let bash = env.ok(&["completions", "bash"]);
    for word in ["check-config", "migrate", "app-password", "--config"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    assert!(env.ok(&["completions", "zsh"]).contains("#compdef postern"));
    let man = env.ok(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH postern"),
        "{man}"
    );
    assert!(man.contains("check\\-config"), "{man}");
    assert!(man.contains(".SH \"EXIT STATUS\""), "{man}");
    assert!(man.contains("/etc/postern/postern.toml"), "{man}");
    let out = env.spawn(&["completions", "tcsh"], "");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn every_positional_argument_has_help() {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_positionals() {
            if arg.get_help().is_none() {
                missing.push(format!("{path} <{}>", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&postern::cli::Cli::command(), "postern", &mut missing);
    assert!(
        missing.is_empty(),
        "positional arguments without help: {missing:?}"
    );
}

#[test]
fn domain_trusted_browsers_is_switched_and_turning_it_off_forgets_them() {
    use postern::store::NewTrustedBrowser;
    let env = Env::new();
    env.ok(&["admin", "domain", "add", "example.org"]);
    env.with_store(async |store| {
        let user = store.ensure_user("ann@example.org").await.unwrap();
        let browser = NewTrustedBrowser {
            id_hash: "h1",
            browser: "Firefox on Linux",
            password_tag: 7,
            created_at: 1,
            expires_at: i64::MAX,
            replaces: None,
        };
        store
            .trust_browser(user.id, &browser, "test")
            .await
            .unwrap();
    });
    let text = env.ok(&["admin", "domain", "trusted-browsers", "example.org", "off"]);
    assert!(
        text.contains("not allowed (1 trusted browsers forgotten)"),
        "{text}"
    );
    let (allowed, left) = env.with_store(async |store| {
        let domain = store.domain("example.org").await.unwrap().unwrap();
        let user = store.ensure_user("ann@example.org").await.unwrap();
        let left = store.trusted_browsers(user.id, 0).await.unwrap().len();
        (domain.trusted_browsers, left)
    });
    assert!(!allowed);
    assert_eq!(left, 0);
    let out = env.json(&[
        "--json",
        "admin",
        "domain",
        "trusted-browsers",
        "example.org",
        "on",
    ]);
    assert_eq!(out["ok"], true);
    let allowed = env.with_store(async |store| {
        store
            .domain("example.org")
            .await
            .unwrap()
            .unwrap()
            .trusted_browsers
    });
    assert!(allowed);
    let err = env.fails(&[
        "admin",
        "domain",
        "trusted-browsers",
        "nowhere.example",
        "on",
    ]);
    assert!(err.contains("domain add"), "{err}");
}
