//! PROXY protocol: the client address from a trusted load balancer is the one
//! postern uses and forwards; nobody else can choose it.

mod common;

use common::fake_imap::FakeImap;
use common::{Gateway, LineClient};
use postern::policy::Protocol;
use tokio::net::TcpStream;

const ALICE: &str = "alice@example.test";

async fn gateway(trusted: bool) -> (FakeImap, Gateway) {
    let fake = FakeImap::start(&[(ALICE, "alice-primary")]).await;
    let proxies = if trusted { r#"["127.0.0.0/8"]"# } else { "[]" };
    let gateway = Gateway::start(
        fake.addr,
        "allow_plaintext_auth = true",
        &format!("[proxy_protocol]\ntrusted_proxies = {proxies}"),
    )
    .await;
    (fake, gateway)
}

async fn login_after(gateway: &Gateway, header: &[u8]) -> LineClient<TcpStream> {
    let mut client = LineClient::new(
        TcpStream::connect(gateway.addr(Protocol::Imap, false))
            .await
            .unwrap(),
    );
    client.send(header).await;
    assert!(client.line().await.starts_with("* OK"));
    client
        .send(b"a LOGIN alice@example.test alice-primary\r\n")
        .await;
    let reply = client.until("a ").await.concat();
    assert!(reply.starts_with("a OK"), "{reply}");
    client
}

#[tokio::test]
async fn v1_and_v2_headers_from_a_trusted_proxy_set_the_client_address() {
    let (fake, gateway) = gateway(true).await;
    login_after(&gateway, b"PROXY TCP4 192.0.2.9 127.0.0.1 50000 143\r\n").await;
    let v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "198.51.100.4:6000".parse::<std::net::SocketAddr>().unwrap(),
            "127.0.0.1:993".parse::<std::net::SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap();
    login_after(&gateway, &v2).await;
    let ids = fake.ids();
    assert!(
        ids[0].contains("\"x-originating-ip\" \"192.0.2.9\""),
        "{ids:?}"
    );
    assert!(
        ids[1].contains("\"x-originating-ip\" \"198.51.100.4\""),
        "{ids:?}"
    );
}

#[tokio::test]
async fn a_trusted_proxy_must_send_a_header() {
    let (fake, gateway) = gateway(true).await;
    let mut client = LineClient::new(
        TcpStream::connect(gateway.addr(Protocol::Imap, false))
            .await
            .unwrap(),
    );
    client
        .send(b"a LOGIN alice@example.test alice-primary\r\n")
        .await;
    assert!(client.closed().await);
    assert!(fake.logins().is_empty());
}

#[tokio::test]
async fn a_header_from_an_untrusted_address_is_refused() {
    let (fake, gateway) = gateway(false).await;
    let mut client = LineClient::new(
        TcpStream::connect(gateway.addr(Protocol::Imap, false))
            .await
            .unwrap(),
    );
    assert!(client.line().await.starts_with("* OK"));
    client
        .send(b"PROXY TCP4 192.0.2.9 127.0.0.1 50000 143\r\n")
        .await;
    assert!(client.line().await.contains("BAD"));
    client
        .send(b"a LOGIN alice@example.test alice-primary\r\n")
        .await;
    assert!(client.until("a ").await.concat().starts_with("a OK"));
    assert!(fake.ids()[0].contains("\"x-originating-ip\" \"127.0.0.1\""));
}
