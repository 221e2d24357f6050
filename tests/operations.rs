//! `postern serve` as a service manager and a monitoring system see it: the real
//! binary, its `/metrics` scraped over HTTP before anything happened, and the
//! readiness datagram systemd's `Type=notify` waits for.

mod common;

use std::net::SocketAddr;

use common::fake_imap::FakeImap;
use common::process::{ServeProcess, write_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALICE: &str = "alice@example.test";

/// The web listener's address, from the `web UI and API listening` line.
fn web_addr(serve: &ServeProcess) -> SocketAddr {
    let output = serve.output();
    let line = output
        .lines()
        .find(|l| l.contains("web UI and API listening"))
        .expect("web listener line");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))
        .expect("listen=")
        .parse()
        .expect("address")
}

/// `GET path` over HTTP/1.1; the body.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut response = String::new();
    tokio::time::timeout(common::IO_TIMEOUT, tcp.read_to_string(&mut response))
        .await
        .expect("response timed out")
        .expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The value of the series `series` (name and labels, as rendered).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.rsplit_once(' ').is_some_and(|(name, _)| name == series))
        .unwrap_or_else(|| panic!("{series} not in:\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn every_series_is_present_at_zero_before_the_first_event() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), fake.addr, None, None, "", "");
    let serve = ServeProcess::start(&config, 2).await;
    let text = http_get(web_addr(&serve), "/metrics").await;

    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(
            &text,
            &format!("postern_build_info{{version=\"{version}\"}}")
        ),
        1.0
    );
    for series in [
        "postern_connections_total{protocol=\"imap\"}",
        "postern_logins_total{protocol=\"pop3\",result=\"refused\"}",
        "postern_connections_rejected_total{protocol=\"smtp\",limit=\"per_ip\"}",
        "postern_connections_rejected_total{protocol=\"imap\",limit=\"per_user_ip\"}",
        "postern_recheck_failures_total",
        "postern_sessions_dropped_total{reason=\"app-password-revoked\"}",
        "postern_web_logins_total{result=\"ok\"}",
        "postern_web_logins_total{result=\"refused\"}",
        "postern_web_logins_total{result=\"second_step\"}",
        "postern_login_cache_total{result=\"hit\"}",
        "postern_notices_total{kind=\"app-password-created\",result=\"sent\"}",
        "postern_notices_total{kind=\"account-blocked\",result=\"rate-limited\"}",
        "postern_upstream_login_seconds_count{protocol=\"imap\"}",
        "postern_upstream_login_seconds_bucket{protocol=\"pop3\",le=\"0.1\"}",
    ] {
        assert_eq!(value(&text, series), 0.0, "{series}");
    }
    assert!(
        text.contains("# TYPE postern_web_logins_total counter"),
        "{text}"
    );
    // Process figures of the serving process itself.
    assert!(value(&text, "process_resident_memory_bytes") > 1e6);
    assert!(value(&text, "process_open_fds") >= 5.0);
    assert!(value(&text, "process_max_fds") >= value(&text, "process_open_fds"));
    assert!(value(&text, "process_cpu_seconds_total") >= 0.0);
    assert!(value(&text, "process_start_time_seconds") > 1.7e9);

    // Every series the Grafana dashboard graphs exists from the start.
    let dashboard = std::fs::read_to_string("contrib/grafana/postern.json").unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut names = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("postern_") || word.starts_with("process_") {
                    names.push(word.to_owned());
                }
            }
        }
    }
    assert!(names.len() > 15, "{names:?}");
    for name in names {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "the dashboard graphs {name}, which /metrics lacks"
        );
    }
}

#[tokio::test]
async fn serve_tells_the_service_manager_it_is_ready_once_it_accepts() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), fake.addr, None, None, "", "");
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).expect("bind notify socket");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("POSTERN_CONFIG")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("serve.log")).expect("log file"))
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(30), socket.recv(&mut buf))
        .await
        .expect("no READY=1 within 30 s")
        .expect("recv");
    let state = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(state.lines().any(|l| l == "READY=1"), "{state:?}");
    // Ready means every listener accepts: the web UI answers at once.
    let log = std::fs::read_to_string(dir.path().join("serve.log")).expect("log");
    let web: SocketAddr = log
        .lines()
        .find(|l| l.contains("web UI and API listening"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("listen=")))
        .unwrap_or_else(|| panic!("no web listener logged before READY=1:\n{log}"))
        .parse()
        .expect("address");
    http_get(web, "/healthz").await;
    let pid = child.id().expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let n = tokio::time::timeout(std::time::Duration::from_secs(30), socket.recv(&mut buf))
        .await
        .expect("no STOPPING=1 within 30 s")
        .expect("recv");
    assert_eq!(String::from_utf8_lossy(&buf[..n]), "STOPPING=1");
    let exit = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait())
        .await
        .expect("exit")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
}
