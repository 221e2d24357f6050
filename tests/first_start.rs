//! The first start of `postern serve` as an operator sees it: the system
//! administrator's one-time password is in a file only its owner can read, and
//! nowhere in the log (which is often shipped elsewhere).

mod common;

use common::fake_imap::FakeImap;
use common::process::{ServeProcess, write_config};

#[tokio::test]
async fn a_first_start_writes_the_one_time_password_to_a_private_file_and_never_logs_it() {
    let fake = FakeImap::start(&[("alice@example.test", "alice-primary")]).await;
    let dir = tempfile::tempdir().expect("dir");
    let config = write_config(dir.path(), fake.addr, None, None, "", "");
    let serve = ServeProcess::start(&config, 2).await;
    // Beside the instance key (`k` under `dir` in this config).
    let file = dir.path().join("first-admin-password");
    let password = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{e}; output:\n{}", serve.output()))
        .trim()
        .to_owned();
    assert!(password.len() >= 16, "{password:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let output = serve.output();
    assert!(
        output.contains("first-admin-password"),
        "the log says where: {output}"
    );
    assert!(
        !output.contains(&password),
        "the password is not in the log: {output}"
    );
}
