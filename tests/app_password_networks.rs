//! App passwords limited to source networks: a login from outside the list is
//! refused like any refusal, over IMAP, POP3 and SMTP, judged on the real
//! client address (the one a trusted proxy's PROXY header names).

mod common;
mod mail_fakes;

use common::fake_imap::FakeImap;
use mail_fakes::*;
use postern::credentials::{AppPasswordLimits, issue_limited_app_password};
use postern::policy::{Protocol, Scopes};

/// postern for `protocol` in front of a fake upstream, 127.0.0.0/8 a trusted
/// proxy that must send a PROXY header when `behind_proxy`.
async fn setup(protocol: Protocol, behind_proxy: bool) -> (Postern, Option<FakeImap>) {
    let (upstream, fake) = match protocol {
        Protocol::Imap => {
            let fake = FakeImap::start(&[(ALICE, ALICE_PRIMARY)]).await;
            (fake.addr, Some(fake))
        }
        Protocol::Pop3 => (fake_pop3().await.0, None),
        Protocol::Smtp => (fake_smtp().await.0, None),
    };
    let postern = Postern::start_with(protocol, upstream, "allow_plaintext_auth = true", |c| {
        c.limits.refusal_floor_ms = 0;
        c.limits.trusted_networks = vec!["127.0.0.0/8".parse().unwrap()];
        if behind_proxy {
            c.proxy_protocol.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        }
    })
    .await;
    postern.enroll(ALICE).await;
    (postern, fake)
}

/// A new app password for ALICE, usable from `networks` only.
async fn limited(postern: &Postern, scopes: &str, networks: &str) -> String {
    let limits = AppPasswordLimits {
        scopes: scopes.parse::<Scopes>().unwrap(),
        expires_at: None,
        networks: networks.parse().unwrap(),
    };
    let issued = issue_limited_app_password(
        postern.store(),
        &postern.key,
        ALICE,
        "office desktop",
        limits,
        "test",
    )
    .await
    .unwrap();
    issued.password.display().expose().clone()
}

/// Logs in with `password` (after `header`, if any) and returns the reply.
async fn login(postern: &Postern, protocol: Protocol, header: &[u8], password: &str) -> String {
    let mut c = Client::connect(postern.plain_addr()).await;
    if !header.is_empty() {
        c.send_raw(header).await;
    }
    let greeting = c.reply().await.concat();
    assert!(
        greeting.starts_with("* OK") || greeting.starts_with("+OK") || greeting.starts_with("220"),
        "{greeting}"
    );
    match protocol {
        Protocol::Imap => {
            c.send(&format!("a LOGIN {ALICE} {password}\r\n")).await;
            loop {
                let line = c.line().await;
                if line.starts_with("a ") {
                    return line;
                }
            }
        }
        Protocol::Pop3 => {
            c.send(&format!("AUTH PLAIN {}\r\n", plain("", ALICE, password)))
                .await;
            c.line().await
        }
        Protocol::Smtp => {
            c.send("EHLO client.test\r\n").await;
            c.reply().await;
            c.send(&format!("AUTH PLAIN {}\r\n", plain("", ALICE, password)))
                .await;
            c.reply().await.concat()
        }
    }
}

fn accepted(protocol: Protocol, reply: &str) -> bool {
    match protocol {
        Protocol::Imap => reply.starts_with("a OK"),
        Protocol::Pop3 => reply.starts_with("+OK"),
        Protocol::Smtp => reply.starts_with("235"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_app_password_works_only_from_its_networks() {
    for protocol in Protocol::ALL {
        let (postern, _fake) = setup(protocol, false).await;
        let elsewhere = limited(&postern, "imap,pop3,smtp", "192.0.2.0/24, 2001:db8::/32").await;
        let here = limited(&postern, "imap,pop3,smtp", "127.0.0.0/8").await;
        let reply = login(&postern, protocol, b"", &elsewhere).await;
        assert!(!accepted(protocol, &reply), "{protocol}: {reply}");
        let reply = login(&postern, protocol, b"", &here).await;
        assert!(accepted(protocol, &reply), "{protocol}: {reply}");
    }
}

/// The refusal says nothing an attacker could learn the rule from: it reads
/// exactly as a refusal for a protocol outside the password's scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refusal_reads_like_any_other() {
    for protocol in Protocol::ALL {
        let (postern, _fake) = setup(protocol, false).await;
        let other = Protocol::ALL.into_iter().find(|p| *p != protocol).unwrap();
        let outside = limited(&postern, protocol.as_str(), "192.0.2.0/24").await;
        let out_of_scope = limited(&postern, other.as_str(), "").await;
        let a = login(&postern, protocol, b"", &outside).await;
        let b = login(&postern, protocol, b"", &out_of_scope).await;
        assert!(!accepted(protocol, &a), "{protocol}: {a}");
        assert_eq!(a, b, "{protocol}");
    }
}

/// Behind a trusted load balancer the address that counts is the client's,
/// not the balancer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_address_from_a_trusted_proxy_is_the_one_checked() {
    for protocol in Protocol::ALL {
        let (postern, _fake) = setup(protocol, true).await;
        let office = limited(&postern, "imap,pop3,smtp", "192.0.2.0/24").await;
        let from_office = b"PROXY TCP4 192.0.2.9 127.0.0.1 50000 143\r\n";
        let from_cafe = b"PROXY TCP4 198.51.100.4 127.0.0.1 50000 143\r\n";
        let reply = login(&postern, protocol, from_office, &office).await;
        assert!(accepted(protocol, &reply), "{protocol}: {reply}");
        let reply = login(&postern, protocol, from_cafe, &office).await;
        assert!(!accepted(protocol, &reply), "{protocol}: {reply}");
        let v6 = b"PROXY TCP6 2001:db8::5 ::1 50000 143\r\n";
        let office_v6 = limited(&postern, "imap,pop3,smtp", "2001:db8::/32").await;
        let reply = login(&postern, protocol, v6, &office_v6).await;
        assert!(accepted(protocol, &reply), "{protocol}: {reply}");
    }
}
