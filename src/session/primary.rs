//! The web login's first step: is this the user's primary password? postern never
//! stores primary passwords, so it asks the upstream IMAP server by logging in as
//! the user (passthrough) and logging straight out again.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use super::driver::{UpstreamOutcome, upstream_login};
use crate::config::{ProtocolSettings, UpstreamTls};
use crate::protocol::imap::upstream::ImapUpstreamLogin;
use crate::protocol::upstream::{UpstreamCredentials, UpstreamRequest};
use crate::secret::Secret;

/// The upstream could not give an answer (down, slow, misbehaving): not a "no".
#[derive(Debug, thiserror::Error)]
#[error("upstream unavailable: {0}")]
pub struct PrimaryCheckError(pub String);

/// Logs in to the upstream IMAP server as `user` with `password`; `Ok(true)` if it
/// accepted, `Ok(false)` if it refused. `client` is forwarded with IMAP `ID` so
/// upstream penalties hit the right address.
pub async fn verify_primary_password(
    settings: &ProtocolSettings,
    connector: &TlsConnector,
    user: &str,
    password: &Secret<String>,
    client: SocketAddr,
) -> Result<bool, PrimaryCheckError> {
    let request = UpstreamRequest {
        credentials: UpstreamCredentials {
            authzid: String::new(),
            authcid: user.to_owned(),
            password: password.clone(),
        },
        client,
        starttls: settings.upstream_tls == UpstreamTls::Starttls,
    };
    let core = ImapUpstreamLogin::new(request, "w1");
    let limit = Duration::from_secs(settings.upstream_timeout_secs);
    match timeout(limit, upstream_login(settings, connector, core)).await {
        Err(_) => Err(PrimaryCheckError("login timed out".into())),
        Ok(Err(err)) => Err(PrimaryCheckError(err.to_string())),
        Ok(Ok(UpstreamOutcome::Refused(_))) => Ok(false),
        Ok(Ok(UpstreamOutcome::Failed(detail))) => Err(PrimaryCheckError(detail)),
        Ok(Ok(UpstreamOutcome::LoggedIn { mut stream, .. })) => {
            // Best effort: the answer is already known.
            let _ = stream.write_all(b"w2 LOGOUT\r\n").await;
            let _ = stream.shutdown().await;
            Ok(true)
        }
    }
}
