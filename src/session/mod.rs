//! Session drivers: the async loops that own the sockets and drive the protocol
//! cores of `crate::protocol`.
//!
//! One generic driver serves all three protocols: pre-login (greeting, commands,
//! STARTTLS as a change of stream type), the login (gate, then upstream login),
//! and the relay (bytes both ways until either side closes or the session is
//! killed). Each protocol plugs in through [`ProtocolHandler`].

mod connect;
mod driver;
pub mod imap;
pub mod pop3;
mod primary;
pub mod relay;
pub mod smtp;

use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::TlsConnector;

pub use driver::handle_connection;
pub use primary::{PrimaryCheckError, verify_primary_password};

use crate::config::{LimitsConfig, ProtocolSettings};
use crate::gate::Gate;
use crate::net::limiter::UserClientLimiter;
use crate::net::tls::ServerTls;
use crate::penalty::Penalties;
use crate::policy::Protocol;
use crate::protocol::line::{Options, PreAuthCore};
use crate::protocol::upstream::{UpstreamRequest, UpstreamStep};
use crate::recheck::Rechecker;
use crate::registry::SessionRegistry;

/// An upstream-login core.
pub trait UpstreamCore: Send {
    fn feed(&mut self, bytes: &[u8]);
    fn next_step(&mut self) -> Option<UpstreamStep>;
}

/// What makes a protocol: its cores and its words for the end of a session.
pub trait ProtocolHandler: Send + Sync + 'static {
    type Client: PreAuthCore + Send + Sync;
    type Upstream: UpstreamCore;

    fn protocol(&self) -> Protocol;
    /// Async work before each client core is made (e.g. learning what the
    /// upstream offers); called by the driver before every `client_core`.
    fn prepare(&self, _ctx: &Context) -> impl Future<Output = ()> + Send {
        async {}
    }
    fn client_core(&self, options: Options) -> Self::Client;
    /// Called once the client presented credentials.
    fn upstream_core(&self, client: &Self::Client, request: UpstreamRequest) -> Self::Upstream;
    /// Sent when a session is ended by postern (kill, policy change, shutdown).
    fn goodbye(&self, reason: &str) -> Vec<u8>;
    /// Sent when the client took too long to log in.
    fn timeout_goodbye(&self) -> Vec<u8>;
    /// Sent to a client not yet logged in when postern shuts down: the service
    /// is going away for now, try again (another node, or this one restarted).
    fn shutdown_goodbye(&self, reason: &str) -> Vec<u8>;
}

/// Everything a session of one protocol needs, shared by its listeners.
pub struct Context {
    pub settings: ProtocolSettings,
    pub limits: LimitsConfig,
    pub gate: Gate,
    pub tls: ServerTls,
    pub upstream_tls: TlsConnector,
    pub registry: SessionRegistry,
    pub penalties: Arc<Penalties>,
    /// Re-checks a session that registered after a change (see `crate::epoch`).
    pub rechecker: Rechecker,
    /// Logged-in sessions per user and client network (shared by the protocols).
    pub user_client_limiter: UserClientLimiter,
    pub handshake_timeout: Duration,
}

pub type SharedContext = Arc<Context>;
