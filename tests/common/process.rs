//! The real `postern serve` binary as a child process: its listeners are learned
//! from the `listening` lines it logs on stdout, and it is killed when the guard
//! is dropped (a failing test never leaves a gateway behind).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long the child gets to log a line a test waits for, or to exit.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(20);

/// A listener the child logged: `listening protocol=.. listen=ADDR tls="..."`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub implicit_tls: bool,
}

pub struct ServeProcess {
    child: Child,
    pub pid: u32,
    lines: mpsc::UnboundedReceiver<String>,
    /// Everything the child wrote so far (stdout, then stderr), for failure messages.
    log: Arc<Mutex<String>>,
    pub listeners: Vec<Listener>,
    /// The web UI's address, from its `listening` line.
    pub web: SocketAddr,
}

impl ServeProcess {
    /// Runs `postern serve --config CONFIG` with `RUST_LOG=info` and waits for the
    /// `listening` line of every mail listener (`expected` of them), then for the
    /// web listener's.
    pub async fn start(config: &Path, expected: usize) -> ServeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env_remove("POSTERN_CONFIG")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn postern serve");
        let pid = child.id().expect("pid");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::unbounded_channel();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let stdout_log = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                stdout_log.lock().unwrap().push_str(&format!("{line}\n"));
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let stderr_log = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                stderr_log
                    .lock()
                    .unwrap()
                    .push_str(&format!("stderr: {line}\n"));
            }
        });
        let mut process = ServeProcess {
            child,
            pid,
            lines,
            log,
            listeners: Vec::new(),
            web: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        while process.listeners.len() < expected {
            let line = process
                .wait_for(|l| l.contains(" listening ") && l.contains(" tls="))
                .await;
            process.listeners.push(parse_listener(&line));
        }
        // The web listener comes last: after it, start-up is over.
        let line = process
            .wait_for(|l| l.contains("web UI and API listening"))
            .await;
        process.web = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("listen="))
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no listen= in {line:?}"));
        process
    }

    /// The first listener of this kind.
    pub fn addr(&self, implicit_tls: bool) -> SocketAddr {
        self.listeners
            .iter()
            .find(|l| l.implicit_tls == implicit_tls)
            .unwrap_or_else(|| panic!("no listener with implicit_tls={implicit_tls}"))
            .addr
    }

    /// The next stdout line matching `pred` (earlier lines are skipped); fails after
    /// [`PROCESS_TIMEOUT`] or when stdout ends first.
    pub async fn wait_for(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let found = tokio::time::timeout(PROCESS_TIMEOUT, async {
            while let Some(line) = self.lines.recv().await {
                if pred(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!("postern exited first; its output:\n{}", self.output()),
            Err(_) => panic!("timed out; postern's output so far:\n{}", self.output()),
        }
    }

    /// Sends a signal (`HUP`, `TERM`) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid);
    }

    /// Waits (bounded) for the child to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!(
                "postern still running after {within:?}; its output:\n{}",
                self.output()
            ),
        }
    }

    pub fn output(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        // Already exited: nothing to do; otherwise SIGKILL (and reap when possible).
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.start_kill();
            let _ = self.child.try_wait();
        }
        if std::thread::panicking() {
            eprintln!("postern (pid {}) output:\n{}", self.pid, self.output());
        }
    }
}

/// `... listening protocol=imap listen=127.0.0.1:PORT tls="implicit" ...`
fn parse_listener(line: &str) -> Listener {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
            .trim_matches('"')
            .to_owned()
    };
    let addr = field("listen=")
        .parse()
        .unwrap_or_else(|e| panic!("listen= in {line:?}: {e}"));
    let implicit_tls = match field("tls=").as_str() {
        "implicit" => true,
        "starttls" => false,
        other => panic!("tls={other:?} in {line:?}"),
    };
    Listener { addr, implicit_tls }
}

/// Writes `postern.toml` under `dir`: IMAP with a STARTTLS and an implicit-TLS
/// listener on `127.0.0.1:0` in front of `upstream`, the web UI on an ephemeral
/// port, text logs, the store at `store_url` (SQLite under `dir` when `None`) and
/// the secrets key at `key_file` (under `dir` when `None`). `extra` is appended
/// (whole sections, e.g. `[node]`); `limits` is the body of `[limits]`.
pub fn write_config(
    dir: &Path,
    upstream: SocketAddr,
    store_url: Option<&str>,
    key_file: Option<&Path>,
    limits: &str,
    extra: &str,
) -> std::path::PathBuf {
    let path = |name: &str| dir.join(name).display().to_string();
    let text = format!(
        r#"
[store]
url = "{db}"
[secrets]
key_file = "{key}"
[tls]
cert = "{cert}"
key = "{tlskey}"
[web]
listen = "127.0.0.1:0"
[log]
format = "text"
[imap]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]
upstream = "{upstream}"
upstream_timeout_secs = 5
allow_plaintext_auth = true
[upstream_auth]
master_user = "proxy"
master_password = "masterpw"
[limits]
trusted_networks = ["127.0.0.0/8"]
{limits}
{extra}
"#,
        db = store_url.map_or_else(|| format!("sqlite://{}", path("p.db")), str::to_owned),
        key = key_file.map_or_else(|| path("k"), |k| k.display().to_string()),
        cert = path("c.crt"),
        tlskey = path("c.key"),
    );
    let config = dir.join("postern.toml");
    std::fs::write(&config, text).expect("write config");
    config
}
