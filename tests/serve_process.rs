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
            .any(|r| r.action == "session-drop" && r.detail.contains("shutting down")),
        "{audit:?}"
    );
}
