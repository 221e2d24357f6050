//! `postern serve` as an operator runs it: the real binary with a config file, its
//! listeners learned from its log, and Unix signals. SIGHUP swaps the TLS
//! certificate under live sessions; SIGTERM closes the listeners, drains, ends the
//! remaining sessions with a goodbye and exits 0.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::fake_imap::FakeImap;
use common::process::{ServeProcess, write_config};
use common::{IO_TIMEOUT, LineClient, connect, tls_connector};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const ALICE: &str = "alice@example.test";

/// A fresh TLS handshake trusting only the certificate in `cert`; returns the
/// client (greeting read) and the certificate the server presented.
async fn tls_client(
    addr: std::net::SocketAddr,
    cert: &Path,
) -> (LineClient<TlsStream<TcpStream>>, Vec<u8>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = tokio::time::timeout(IO_TIMEOUT, tls_connector(cert).connect(name, tcp))
        .await
        .expect("handshake timed out")
        .expect("TLS handshake");
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("server certificate")
        .to_vec();
    let mut client = LineClient::new(tls);
    let greeting = client.line().await;
    assert!(greeting.starts_with("* OK"), "{greeting:?}");
    (client, presented)
}

async fn login<S>(client: &mut LineClient<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    client
        .send(format!("a LOGIN {ALICE} alice-primary\r\nb NOOP\r\n").as_bytes())
        .await;
    let reply = client.until("a ").await.concat();
    assert!(reply.starts_with("a OK"), "{reply:?}");
    client.until("b OK").await;
}

#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_sessions() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    let dir = tempfile::tempdir().unwrap();
    // One thread serving connections is enough for everything below.
    let config = write_config(dir.path(), fake.addr, None, None, "worker_threads = 1", "");
    let mut serve = ServeProcess::start(&config, 2).await;
    assert!(
        serve.output().contains("worker_threads=1"),
        "{}",
        serve.output()
    );
    let cert_path = dir.path().join("c.crt");

    // postern generated a self-signed certificate at start.
    let (mut session, old_cert) = tls_client(serve.addr(true), &cert_path).await;
    login(&mut session).await;

    let fresh = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("cert");
    std::fs::write(dir.path().join("c.key"), fresh.signing_key.serialize_pem()).unwrap();
    std::fs::write(&cert_path, fresh.cert.pem()).unwrap();
    assert_ne!(fresh.cert.der().to_vec(), old_cert);

    serve.signal("HUP");
    let line = serve
        .wait_for(|l| l.contains("reloaded the TLS certificate") || l.contains("TLS reload failed"))
        .await;
    assert!(line.contains("reloaded the TLS certificate"), "{line}");

    // A new handshake (trusting only the new certificate) sees the new one...
    let (mut second, presented) = tls_client(serve.addr(true), &cert_path).await;
    assert_eq!(presented, fresh.cert.der().to_vec());
    second.send(b"x LOGOUT\r\n").await;
    second.until("x OK").await;

    // ...and the session opened before the reload goes on.
    session.send(b"c NOOP\r\n").await;
    let reply = session.until("c ").await.concat();
    assert!(reply.contains("c OK"), "{reply:?}");
    assert!(serve.output().contains("reloaded the TLS certificate"));
}

#[tokio::test]
async fn sigterm_refuses_new_connections_drains_and_exits_zero() {
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), fake.addr, None, None, "drain_secs = 1", "");
    let mut serve = ServeProcess::start(&config, 2).await;
    let (plain, implicit) = (serve.addr(false), serve.addr(true));

    let mut session = connect(plain).await;
    assert!(session.line().await.starts_with("* OK"));
    login(&mut session).await;

    serve.signal("TERM");
    let term_sent = Instant::now();
    serve.wait_for(|l| l.contains("shutting down")).await;

    // The accept loops are aborted before that line; the sockets close as the
    // aborted tasks are dropped, so allow a few short retries. A connection the
    // kernel completed into the backlog just before the socket closed is reset
    // rather than refused; that too is a retry, the end state must be "refused".
    for addr in [plain, implicit] {
        let mut refused = false;
        for _ in 0..50 {
            match TcpStream::connect(addr).await {
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                    refused = true;
                    break;
                }
                Err(err) => {
                    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(stream) => {
                    drop(stream);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        assert!(refused, "{addr} still accepts connections after SIGTERM");
    }

    // The live session is left alone for drain_secs, then told goodbye.
    let bye = session.line().await;
    let waited = term_sent.elapsed();
    assert!(
        bye.starts_with("* BYE [ALERT]") && bye.contains("shutting down"),
        "{bye:?}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(6),
        "goodbye after {waited:?}"
    );
    assert!(session.closed().await);

    let status = serve.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}\n{}", serve.output());
    assert!(serve.output().contains("drain time over"));

    // The goodbye is in the audit log: it was written before the process exited.
    let store =
        postern::store::Store::connect(&format!("sqlite://{}", dir.path().join("p.db").display()))
            .await
            .expect("store");
    let audit = store
        .list_audit(postern::store::AuditFilter {
            user: Some(ALICE.into()),
            since: None,
            limit: 100,
        })
        .await
        .expect("audit");
    assert!(
        audit
            .iter()
            .any(|r| r.action == "session-drop" && r.detail == "imap shutdown"),
        "{audit:?}"
    );
}

/// The address a listener logged: `protocol=P listen=ADDR tls="TLS"`, or the
/// web listener's `listen=ADDR` when `protocol` is "web".
fn logged_addr(output: &str, protocol: &str, tls: &str) -> std::net::SocketAddr {
    let line = output
        .lines()
        .find(|l| {
            if protocol == "web" {
                l.contains("web UI and API listening")
            } else {
                l.contains(" listening ")
                    && l.contains(&format!("protocol={protocol} "))
                    && l.contains(&format!("tls=\"{tls}\""))
            }
        })
        .unwrap_or_else(|| panic!("no {protocol} listener in:\n{output}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no listen= in {line:?}"))
}

/// Connects until the port refuses; the listener closes as its task sees the
/// shutdown, so a few short retries are allowed (a connection the kernel put in
/// the backlog just before the socket closed is reset, which is a retry too).
async fn assert_refused_soon(addr: std::net::SocketAddr) {
    for _ in 0..50 {
        match TcpStream::connect(addr).await {
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => return,
            Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}"),
            Ok(stream) => drop(stream),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{addr} still accepts connections after SIGTERM");
}

/// Reads from a raw HTTP connection until `needle` has arrived (bounded).
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, needle: &str) {
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(IO_TIMEOUT, async {
        while !String::from_utf8_lossy(seen).contains(needle) {
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed before {needle:?}: {}",
                String::from_utf8_lossy(seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} in {}", String::from_utf8_lossy(seen)));
}

#[tokio::test]
async fn sigterm_tells_clients_before_login_goodbye_and_stops_the_web_listener() {
    use tokio::io::AsyncWriteExt;
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    // POP3 and SMTP are never logged in here: an upstream nothing listens on.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sections = format!(
        "[pop3]\nlisten = [\"127.0.0.1:0\"]\nlisten_tls = []\nupstream = \"{nowhere}\"\n\
         [smtp]\nlisten = [\"127.0.0.1:0\"]\nlisten_tls = []\nupstream = \"{nowhere}\"\n"
    );
    let config = write_config(
        dir.path(),
        fake.addr,
        None,
        None,
        "drain_secs = 20",
        &sections,
    );
    let mut serve = ServeProcess::start(&config, 4).await;
    let output = serve.output();
    let web = logged_addr(&output, "web", "");

    // A live session, which keeps the drain going until it leaves.
    let mut session = connect(serve.addr(false)).await;
    assert!(session.line().await.starts_with("* OK"));
    login(&mut session).await;

    // One client before login on each protocol, greeted and silent.
    let mut waiting = Vec::new();
    for (protocol, greeting) in [("imap", "* OK"), ("pop3", "+OK"), ("smtp", "220 ")] {
        let mut client = connect(logged_addr(&output, protocol, "starttls")).await;
        let line = client.line().await;
        assert!(line.starts_with(greeting), "{protocol}: {line:?}");
        waiting.push((protocol, client));
    }

    // A web request in flight: its headers are read and its handler waits for
    // the body (hyper says "100 Continue" once the body is asked for).
    let mut page = TcpStream::connect(web).await.expect("web");
    page.write_all(b"GET /login HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut page, &mut seen, "</html>").await;
    let form = String::from_utf8_lossy(&seen).into_owned();
    let cookie = form
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no cookie in {form}"))
        .to_owned();
    let csrf = form
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no csrf field in {form}"))
        .to_owned();
    let body = format!("csrf={csrf}&address=nobody%40example.test&password=wrong");
    let mut in_flight = TcpStream::connect(web).await.expect("web");
    in_flight
        .write_all(
            format!(
                "POST /login HTTP/1.1\r\nHost: p\r\nCookie: {cookie}\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    read_until(&mut in_flight, &mut answer, "100 Continue\r\n\r\n").await;
    answer.clear();

    serve.signal("TERM");
    let term_sent = Instant::now();

    // Every client before login is told at once, in its protocol's words, and
    // closed, long before the drain is over.
    for (protocol, mut client) in waiting {
        let expected = match protocol {
            "imap" => "* BYE [UNAVAILABLE] postern is shutting down; please reconnect.\r\n",
            "pop3" => "-ERR [SYS/TEMP] postern is shutting down; please reconnect.\r\n",
            _ => "421 4.3.2 postern is shutting down; please reconnect.\r\n",
        };
        assert_eq!(client.line().await, expected, "{protocol}");
        assert!(client.closed().await, "{protocol} left open");
    }
    assert!(
        term_sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        term_sent.elapsed()
    );

    // The web listener takes no new connection...
    serve.wait_for(|l| l.contains("shutting down")).await;
    assert_refused_soon(web).await;
    // ...while the request in flight is answered.
    in_flight.write_all(body.as_bytes()).await.unwrap();
    read_until(&mut in_flight, &mut answer, "\r\n\r\n").await;
    let status = String::from_utf8_lossy(&answer).into_owned();
    assert!(status.starts_with("HTTP/1.1 "), "{status}");

    // The live session was left alone; once it leaves, the drain is over and
    // postern exits without waiting for the rest of drain_secs.
    session.send(b"c NOOP\r\n").await;
    assert!(session.until("c ").await.concat().contains("c OK"));
    session.send(b"d LOGOUT\r\n").await;
    session.until("d OK").await;
    drop((session, page, in_flight));
    let status = serve.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}\n{}", serve.output());
    assert!(term_sent.elapsed() < Duration::from_secs(15));
    assert!(
        !serve.output().contains("drain time over"),
        "{}",
        serve.output()
    );
}
