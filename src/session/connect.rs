//! The one way postern opens a connection to the protected server: TCP to
//! `upstream`, then TLS at once when `upstream_tls = "implicit"`, or later on
//! the login core's STARTTLS step. Mail sessions, the web login's primary
//! password check and SMTP's extension probe all connect through here.

use std::io;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{ProtocolSettings, UpstreamTls};
use crate::net::stream::MaybeTls;
use crate::net::tls;

/// Connects to the upstream; TLS is up already when `upstream_tls` is implicit.
pub(super) async fn connect_upstream(
    settings: &ProtocolSettings,
    connector: &TlsConnector,
) -> io::Result<MaybeTls> {
    let tcp = TcpStream::connect(settings.upstream.as_str()).await?;
    let _ = tcp.set_nodelay(true);
    match settings.upstream_tls {
        UpstreamTls::Implicit => start_tls(settings, connector, tcp).await,
        UpstreamTls::None | UpstreamTls::Starttls => Ok(MaybeTls::Plain(tcp)),
    }
}

/// TLS on a plain connection, checking the certificate for `upstream_tls_name`.
pub(super) async fn start_tls(
    settings: &ProtocolSettings,
    connector: &TlsConnector,
    tcp: TcpStream,
) -> io::Result<MaybeTls> {
    let name = tls::server_name(&settings.upstream_tls_name)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err.to_string()))?;
    Ok(MaybeTls::ClientTls(Box::new(
        connector.connect(name, tcp).await?,
    )))
}
