//! `postern demo`: the gateway in front of a small in-memory upstream (IMAP,
//! POP3, SMTP) with demo accounts, so a newcomer can try every flow on one
//! machine with no mail server. Not a mail server: mail to anyone but the demo
//! accounts is dropped, and everything is forgotten at exit.
//!
//! The same upstream ([`server::MailServer`]) is the fake mail server of the
//! test suite, which turns on its [`record::Record`] and its fault options.

mod imap;
mod pop3;
pub mod record;
pub mod server;
mod smtp;
mod store;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;

pub use imap::CAPABILITIES_AFTER_LOGIN;
pub use store::{MAX_MESSAGE, Mailboxes};

use crate::app::{Bound, Runtime};
use crate::config::Config;
use crate::credentials::{InstanceKey, issue_app_password};
use crate::policy::{DomainStatus, Protocol, Scopes};
use crate::store::FactorKind;

/// The demo accounts: (address, primary password).
pub const ACCOUNTS: [(&str, &str); 2] = [
    ("alice@demo.test", "alice-password"),
    ("bob@demo.test", "bob-password"),
];
/// Bob's TOTP secret (base32), so the second step can be tried.
pub const BOB_TOTP_SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
/// The web UI's system administrator.
pub const ADMIN: (&str, &str) = ("admin", "admin-password");

/// How to start the demo.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Listen on the friendly ports (IMAP 1143/1993, POP3 1110/1995, SMTP
    /// 1587/1465, web 8080) where free; ephemeral ports otherwise.
    pub friendly_ports: bool,
    /// Exempt 127.0.0.0/8 from login penalties (tests).
    pub no_penalties: bool,
}

/// The demo upstream's addresses.
#[derive(Debug, Clone, Copy)]
pub struct Upstream {
    pub imap: SocketAddr,
    pub pop3: SocketAddr,
    pub smtp: SocketAddr,
    /// SMTP without AUTH: the gateway's `[relay]` for recovery codes.
    pub relay: SocketAddr,
}

/// A running demo: the gateway, its upstream and its temporary files.
pub struct DemoHandle {
    pub runtime: Runtime,
    pub config: Config,
    pub key: InstanceKey,
    /// The gateway's mail listeners.
    pub bound: Vec<Bound>,
    pub web: SocketAddr,
    pub upstream: Upstream,
    pub mailboxes: Mailboxes,
    /// An app password issued to bob for a mail client.
    pub bob_app_password: String,
    _dir: tempfile::TempDir,
}

impl DemoHandle {
    /// The gateway's listener for this protocol (plain/STARTTLS or implicit TLS).
    pub fn addr(&self, protocol: Protocol, implicit_tls: bool) -> SocketAddr {
        self.bound
            .iter()
            .find(|b| b.protocol == protocol && b.implicit_tls == implicit_tls)
            .map(|b| b.addr)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// Starts the demo upstream and the gateway in front of it, seeded with the
/// demo domain and accounts.
pub async fn start(options: DemoOptions) -> anyhow::Result<DemoHandle> {
    let dir = tempfile::Builder::new()
        .prefix("postern-demo-")
        .tempdir()
        .context("creating a temporary folder")?;
    let master = crate::credentials::AppPassword::generate()
        .display()
        .expose()
        .replace('-', "");
    let mailboxes = Mailboxes::new(&ACCOUNTS, ("proxy", &master));
    for (address, _) in ACCOUNTS {
        mailboxes.deliver(address, store::welcome(address));
    }
    let spawn = |service| {
        let options = server::Options::new(service);
        server::MailServer::spawn(mailboxes.clone(), options, record::Record::off())
    };
    let upstream = Upstream {
        imap: spawn(server::Service::Imap).await?.addr,
        pop3: spawn(server::Service::Pop3).await?.addr,
        smtp: spawn(server::Service::Submission).await?.addr,
        relay: spawn(server::Service::Relay).await?.addr,
    };
    let port = |friendly: u16| {
        let free =
            options.friendly_ports && std::net::TcpListener::bind(("127.0.0.1", friendly)).is_ok();
        format!("127.0.0.1:{}", if free { friendly } else { 0 })
    };
    let path = |name: &str| toml::Value::String(dir.path().join(name).display().to_string());
    let text = format!(
        r#"
[store]
url = {db}
[secrets]
key_file = {key}
[tls]
cert = {cert}
key = {tlskey}
[web]
listen = "{web}"
[imap]
listen = ["{imap}"]
listen_tls = ["{imaps}"]
upstream = "{up_imap}"
allow_plaintext_auth = true
[pop3]
listen = ["{pop3}"]
listen_tls = ["{pop3s}"]
upstream = "{up_pop3}"
allow_plaintext_auth = true
[smtp]
listen = ["{smtp}"]
listen_tls = ["{smtps}"]
upstream = "{up_smtp}"
allow_plaintext_auth = true
hostname = "localhost"
[upstream_auth]
master_user = "proxy"
master_password = "{master}"
[relay]
smtp = "{relay}"
from = "postern@demo.test"
[node]
name = "demo"
{limits}
"#,
        db = toml::Value::String(format!("sqlite://{}", dir.path().join("demo.db").display())),
        key = path("postern.key"),
        cert = path("postern.crt"),
        tlskey = path("postern-tls.key"),
        web = port(8080),
        imap = port(1143),
        imaps = port(1993),
        pop3 = port(1110),
        pop3s = port(1995),
        smtp = port(1587),
        smtps = port(1465),
        up_imap = upstream.imap,
        up_pop3 = upstream.pop3,
        up_smtp = upstream.smtp,
        relay = upstream.relay,
        limits = if options.no_penalties {
            "[limits]\ntrusted_networks = [\"127.0.0.0/8\"]"
        } else {
            ""
        },
    );
    let config = Config::parse(&text).context("the demo configuration")?;
    let runtime = Runtime::build(&config).await?;
    let key = InstanceKey::load_or_create(&config.secrets.key_file)?;
    let bob_app_password = seed(&runtime, &key).await?;
    let bound = runtime.bind_all(&config).await?;
    runtime.start_rechecks(&config);
    let web = crate::web::spawn(&runtime, &config).await?;
    Ok(DemoHandle {
        runtime,
        config,
        key,
        bound,
        web,
        upstream,
        mailboxes,
        bob_app_password,
        _dir: dir,
    })
}

/// demo.test with the feature on and status Enabled, bob enrolled with TOTP and
/// given an app password, and the web administrator. Returns bob's app password.
async fn seed(runtime: &Runtime, key: &InstanceKey) -> anyhow::Result<String> {
    let store = &runtime.store;
    store.add_domain("demo.test", "demo").await?;
    store.set_domain_feature("demo.test", true, "demo").await?;
    store
        .set_domain_status("demo.test", DomainStatus::Enabled, None, "demo")
        .await?;
    let bob = store.ensure_user(ACCOUNTS[1].0).await?;
    store
        .add_second_factor(bob.id, FactorKind::Totp, BOB_TOTP_SECRET, true, "demo")
        .await?;
    let scopes: Scopes = "imap,pop3,smtp"
        .parse()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let issued = issue_app_password(
        store,
        key,
        ACCOUNTS[1].0,
        "demo mail client",
        scopes,
        None,
        "demo",
    )
    .await?;
    let hash = tokio::task::spawn_blocking(|| {
        crate::credentials::admin_password::hash_blocking(ADMIN.1)
            .map_err(|e| anyhow::anyhow!("hashing the admin password: {e}"))
    })
    .await??;
    store.add_sysadmin(ADMIN.0, &hash, "demo").await?;
    Ok(issued.password.display().expose().clone())
}

/// `postern demo`: starts everything, prints how to try it, runs until Ctrl-C.
pub async fn run() -> anyhow::Result<()> {
    let demo = start(DemoOptions {
        friendly_ports: true,
        no_penalties: false,
    })
    .await?;
    println!("{}", banner(&demo));
    wait_for_stop().await?;
    println!("stopping the demo; everything is forgotten");
    demo.runtime.shutdown(Duration::from_secs(2)).await;
    demo.runtime.store.close().await;
    Ok(())
}

/// Ctrl-C or SIGTERM: either way the temporary folder is removed.
#[cfg(unix)]
async fn wait_for_stop() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => Ok(()),
        result = tokio::signal::ctrl_c() => Ok(result?),
    }
}

#[cfg(not(unix))]
async fn wait_for_stop() -> anyhow::Result<()> {
    Ok(tokio::signal::ctrl_c().await?)
}

/// What `postern demo` prints: URLs, accounts and commands to try.
pub fn banner(demo: &DemoHandle) -> String {
    let (alice, alice_pw) = ACCOUNTS[0];
    let (bob, bob_pw) = ACCOUNTS[1];
    let imap = demo.addr(Protocol::Imap, false);
    let pop3 = demo.addr(Protocol::Pop3, false);
    let smtp = demo.addr(Protocol::Smtp, false);
    let otpauth = format!(
        "otpauth://totp/postern%20demo:{}?secret={BOB_TOTP_SECRET}&issuer=postern%20demo&algorithm=SHA1&digits=6&period=30",
        bob.replace('@', "%40")
    );
    format!(
        "\
postern demo: the 2-step gateway in front of a small in-memory mail server.
Not a mail server: mail to anyone but the demo accounts is dropped; all is forgotten at exit.

Gateway (self-signed certificate; plaintext logins allowed on loopback for the demo)
  IMAP  {imap} (STARTTLS)   {imaps} (TLS)
  POP3  {pop3} (STLS)       {pop3s} (TLS)
  SMTP  {smtp} (STARTTLS)   {smtps} (TLS)
  Web   http://{web}/

Domain demo.test: 2-step feature on, status enabled
  {alice} / {alice_pw}   not enrolled: the primary password works everywhere
  {bob} / {bob_pw}       enrolled: mail needs an app password; the web needs a TOTP code
    TOTP secret  {BOB_TOTP_SECRET}
    otpauth URL  {otpauth}
    app password {bob_app}
  web administrator: {admin} / {admin_pw}

Try
  curl -k --ssl-reqd imap://{imap}/INBOX -u {alice}:{alice_pw}
  curl -k --ssl-reqd 'imap://{imap}/INBOX;MAILINDEX=1' -u {alice}:{alice_pw}
  curl -k --ssl-reqd 'imap://{imap}/INBOX;MAILINDEX=1' -u {bob}:{bob_pw}    # refused: bob is enrolled
  curl -k --ssl-reqd 'imap://{imap}/INBOX;MAILINDEX=1' -u '{bob}:{bob_app}'
  curl -k --ssl-reqd pop3://{pop3}/1 -u {alice}:{alice_pw}
  printf 'Subject: hi\\r\\n\\r\\nhello bob\\r\\n' | curl -k --ssl-reqd smtp://{smtp} -u {alice}:{alice_pw} \\
      --mail-from {alice} --mail-rcpt {bob} -T -
  Web login: http://{web}/ as {bob} / {bob_pw}, then a code from the TOTP secret
    (e.g. `oathtool --totp -b {BOB_TOTP_SECRET}`), or enroll alice there.
  Recovery e-mail: as alice, add {bob} as her recovery address; the code lands
    in bob's INBOX (read it with bob's app password above).
Ctrl-C stops the demo.",
        imaps = demo.addr(Protocol::Imap, true),
        pop3s = demo.addr(Protocol::Pop3, true),
        smtps = demo.addr(Protocol::Smtp, true),
        web = demo.web,
        bob_app = demo.bob_app_password,
        admin = ADMIN.0,
        admin_pw = ADMIN.1,
    )
}
