//! Losing the database while postern runs (DESIGN: fail closed). New logins on
//! IMAP, POP3 and SMTP get exactly the temporary error, are not counted as
//! failures (no penalty, no account block) and change nothing stored; a session
//! logged in before keeps working; logins work again once the database is back.
//!
//! - SQLite, always. The database is in WAL mode, whose readers a lock on the
//!   database file cannot stop, and we run as root, so permissions cannot stop
//!   them either. What does stop them is another process holding the WAL-index
//!   locks (bytes 120..128 of the `-shm` file, as a process stuck in WAL recovery
//!   would): every read and write then fails with SQLITE_PROTOCOL after SQLite's
//!   own retries (about 10 s). A small Python helper holds those locks; they are
//!   released when its stdin closes.
//! - PostgreSQL, when `POSTERN_TEST_PG_BIN` names the server's `bin` directory
//!   (`.ci/run` sets it): a private cluster is created under a temporary folder
//!   on port 15433 (as the `postgres` user: initdb refuses root), stopped with
//!   `pg_ctl stop -m immediate` mid-test and started again. The shared server
//!   on 5432 is never touched.

mod common;
mod mail_fakes;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::Gateway;
use common::fake_imap::FakeImap;
use mail_fakes::{ALICE, ALICE_PRIMARY, Log, fake_pop3, fake_smtp, plain};
use postern::policy::{DomainStatus, Protocol};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A failing SQLite read takes about 10 s; a login must be answered well within this.
const ANSWER: Duration = Duration::from_secs(60);
const IMAP_UNAVAILABLE: &str = "a NO [UNAVAILABLE] Temporary failure, please try again later.\r\n";
const POP3_UNAVAILABLE: &str =
    "-ERR [SYS/TEMP] Login temporarily unavailable, please try again later\r\n";
const SMTP_UNAVAILABLE: &str =
    "454 4.7.0 Temporary authentication failure, please try again later\r\n";
/// The port of the private PostgreSQL cluster.
const PG_PORT: u16 = 15433;

struct World {
    gateway: Gateway,
    imap: FakeImap,
    pop3: Log,
    smtp: Log,
    /// Alice's app password (she is enrolled: her primary password is refused).
    password: String,
}

async fn world(store_url: Option<&str>) -> World {
    let imap = FakeImap::start(&[(ALICE, ALICE_PRIMARY)]).await;
    let (pop3_addr, pop3) = fake_pop3().await;
    let (smtp_addr, smtp) = fake_smtp().await;
    // The POP3 and SMTP sections follow `[imap]`; penalties apply to 127.0.0.1
    // so that a counted failure would show.
    let sections = format!(
        "allow_plaintext_auth = true
[pop3]
listen = [\"127.0.0.1:0\"]
listen_tls = [\"127.0.0.1:0\"]
upstream = \"{pop3_addr}\"
upstream_timeout_secs = 5
allow_plaintext_auth = true
[smtp]
listen = [\"127.0.0.1:0\"]
listen_tls = [\"127.0.0.1:0\"]
upstream = \"{smtp_addr}\"
upstream_timeout_secs = 5
allow_plaintext_auth = true
hostname = \"gw.test\""
    );
    let gateway = Gateway::start_on(
        imap.addr,
        &sections,
        "[limits]\ntrusted_networks = []",
        store_url,
    )
    .await;
    gateway.domain("example.test", DomainStatus::Enabled).await;
    gateway.enroll(ALICE).await;
    let (_, password) = gateway.app_password(ALICE, "imap,pop3,smtp", None).await;
    World {
        gateway,
        imap,
        pop3,
        smtp,
        password,
    }
}

/// A line client with a long read timeout (a login waits for the database).
struct Client(BufReader<TcpStream>);

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client(BufReader::new(
            TcpStream::connect(addr).await.expect("connect"),
        ))
    }

    async fn send(&mut self, text: &str) {
        self.0
            .get_mut()
            .write_all(text.as_bytes())
            .await
            .expect("write");
    }

    async fn line(&mut self) -> String {
        let mut line = Vec::new();
        tokio::time::timeout(ANSWER, self.0.read_until(b'\n', &mut line))
            .await
            .expect("answered in time")
            .expect("read");
        String::from_utf8_lossy(&line).into_owned()
    }

    /// Reads an SMTP reply to its last line.
    async fn smtp_reply(&mut self) -> String {
        loop {
            let line = self.line().await;
            if line.as_bytes().get(3) != Some(&b'-') {
                return line;
            }
        }
    }
}

/// An IMAP login; returns the tagged answer and the connection.
async fn imap_login(w: &World, password: &str) -> (String, Client) {
    let mut c = Client::connect(w.gateway.addr(Protocol::Imap, false)).await;
    c.line().await;
    c.send(&format!("a LOGIN \"{ALICE}\" \"{password}\"\r\n"))
        .await;
    loop {
        let line = c.line().await;
        if line.starts_with("a ") || line.is_empty() {
            return (line, c);
        }
    }
}

async fn pop3_login(w: &World, password: &str) -> String {
    let mut c = Client::connect(w.gateway.addr(Protocol::Pop3, false)).await;
    c.line().await;
    c.send(&format!("AUTH PLAIN {}\r\n", plain("", ALICE, password)))
        .await;
    c.line().await
}

async fn smtp_login(w: &World, password: &str) -> String {
    let mut c = Client::connect(w.gateway.addr(Protocol::Smtp, false)).await;
    c.smtp_reply().await;
    c.send("EHLO client.test\r\n").await;
    c.smtp_reply().await;
    c.send(&format!("AUTH PLAIN {}\r\n", plain("", ALICE, password)))
        .await;
    c.smtp_reply().await
}

/// What an outage must not change: Alice's app passwords as stored.
async fn stored_credentials(w: &World) -> Vec<postern::store::AppPasswordRecord> {
    let store = w.gateway.store();
    let alice = store.user(ALICE).await.expect("store").expect("alice");
    store
        .list_app_passwords(alice.id)
        .await
        .expect("app passwords")
}

/// Logs a session in before the outage; returns it and the stored credentials.
async fn before_the_outage(w: &World) -> (Client, Vec<postern::store::AppPasswordRecord>) {
    let (reply, mut session) = imap_login(w, &w.password).await;
    assert!(reply.starts_with("a OK"), "{reply}");
    // The login's last use is recorded before the session's first command.
    session.send("z NOOP\r\n").await;
    assert_eq!(session.line().await, "z OK NOOP completed\r\n");
    (session, stored_credentials(w).await)
}

/// While the database is gone: temporary errors, nothing counted, nothing sent
/// upstream, and the live session goes on.
async fn during_the_outage(w: &World, session: &mut Client) {
    // The gate answers a device it let in moments ago from memory only while
    // the event log was read within the last 0.6 s (`gate::cache`): the node
    // must stop trusting that memory soon after the outage (3 s leaves room for
    // a loaded machine).
    let noticed = tokio::time::timeout(Duration::from_secs(3), async {
        while w.gateway.runtime.gate.remembers_logins() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(noticed.is_ok(), "the node kept trusting remembered logins");
    let upstream_logins = w.imap.logins().len();
    // A wrong app password too: while nothing can be checked, it is no failure.
    let wrong = "abcd-efgh-jkmn-pqrs";
    let ((imap, _), (imap_wrong, _), pop3, smtp) = tokio::join!(
        imap_login(w, &w.password),
        imap_login(w, wrong),
        pop3_login(w, &w.password),
        smtp_login(w, &w.password),
    );
    assert_eq!(imap, IMAP_UNAVAILABLE);
    assert_eq!(imap_wrong, IMAP_UNAVAILABLE);
    assert_eq!(pop3, POP3_UNAVAILABLE);
    assert_eq!(smtp, SMTP_UNAVAILABLE);

    session.send("b NOOP\r\n").await;
    assert_eq!(session.line().await, "b OK NOOP completed\r\n");

    let penalties = &w.gateway.runtime.penalties;
    let client: IpAddr = [127, 0, 0, 1].into();
    assert!(
        penalties.delay(client).await.is_zero(),
        "no failure counted"
    );
    assert_eq!(
        w.imap.logins().len(),
        upstream_logins,
        "nothing let through"
    );
    assert!(w.pop3.logins().is_empty() && w.smtp.logins().is_empty());
}

/// The database is back: nothing stored changed, and logins work again.
async fn after_the_outage(
    w: &World,
    mut session: Client,
    stored: Vec<postern::store::AppPasswordRecord>,
) {
    assert_eq!(stored_credentials(w).await, stored);
    let failures = w
        .gateway
        .store()
        .login_failures(ALICE)
        .await
        .expect("store");
    assert_eq!(failures.count, 0, "no failure counted");
    let (imap, _) = imap_login(w, &w.password).await;
    assert!(imap.starts_with("a OK"), "{imap}");
    assert_eq!(pop3_login(w, &w.password).await, "+OK logged in\r\n");
    assert_eq!(
        smtp_login(w, &w.password).await,
        "235 2.7.0 Authentication successful\r\n"
    );
    session.send("c NOOP\r\n").await;
    assert_eq!(session.line().await, "c OK NOOP completed\r\n");
}

/// Holds the WAL-index locks of a SQLite database from another process.
struct WalIndexLock(tokio::process::Child);

const HOLD_LOCKS: &str = r#"
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
# struct flock: l_type, l_whence, l_start, l_len, l_pid. Bytes 120..128 are
# SQLite's WAL write, checkpoint, recovery and read-mark locks.
fcntl.fcntl(fd, fcntl.F_SETLKW, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 120, 8, 0))
print("locked", flush=True)
sys.stdin.read()
"#;

impl WalIndexLock {
    async fn take(database: &Path) -> WalIndexLock {
        let shm = format!("{}-shm", database.display());
        let mut child = tokio::process::Command::new("python3")
            .args(["-c", HOLD_LOCKS, &shm])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 (used to hold SQLite's locks from another process)");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        tokio::time::timeout(ANSWER, BufReader::new(stdout).read_line(&mut line))
            .await
            .expect("locks taken in time")
            .expect("helper output");
        assert_eq!(line.trim(), "locked");
        WalIndexLock(child)
    }

    async fn release(mut self) {
        drop(self.0.stdin.take());
        let status = self.0.wait().await.expect("helper exit");
        assert!(status.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_process_fails_closed_and_recovers() {
    let w = world(None).await;
    let url = &w.gateway.config.store.url;
    let database = PathBuf::from(
        url.strip_prefix("sqlite://")
            .expect("a SQLite URL")
            .split('?')
            .next()
            .unwrap_or_default(),
    );
    let (mut session, stored) = before_the_outage(&w).await;

    let lock = WalIndexLock::take(&database).await;
    during_the_outage(&w, &mut session).await;
    lock.release().await;

    after_the_outage(&w, session, stored).await;
}

/// A PostgreSQL cluster of its own under a temporary folder.
struct PrivateCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl PrivateCluster {
    fn as_postgres(&self, program: &str, args: &[&str]) {
        let status = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("runuser");
        assert!(status.success(), "{program} {args:?}");
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn create(bin: PathBuf) -> PrivateCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let chown = std::process::Command::new("chown")
            .arg("postgres:")
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(chown.success());
        let cluster = PrivateCluster { bin, dir };
        let data = cluster.data();
        cluster.as_postgres(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        cluster.start();
        cluster
    }

    fn start(&self) {
        let (data, log) = (
            self.data(),
            self.dir.path().join("log").display().to_string(),
        );
        let options = format!(
            "-p {PG_PORT} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.dir.path().display()
        );
        self.as_postgres(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "start"],
        );
    }

    fn stop_immediately(&self) {
        self.as_postgres(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{PG_PORT}/postgres")
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_stopped_mid_test_fails_closed_and_recovers() {
    let Some(bin) = std::env::var_os("POSTERN_TEST_PG_BIN") else {
        eprintln!("skipped: set POSTERN_TEST_PG_BIN to PostgreSQL's bin directory to run it");
        return;
    };
    let cluster = PrivateCluster::create(PathBuf::from(bin));
    let w = world(Some(&cluster.url())).await;
    let (mut session, stored) = before_the_outage(&w).await;

    cluster.stop_immediately();
    during_the_outage(&w, &mut session).await;
    cluster.start();

    after_the_outage(&w, session, stored).await;
}
