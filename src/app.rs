//! `postern serve`: builds the store, keys, TLS, gate and registry, binds every
//! configured listener, and runs until SIGTERM/SIGINT. SIGHUP reloads the TLS
//! certificate without touching live sessions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat, ProtocolSettings};
use crate::credentials::{AdminPasswords, InstanceKey};
use crate::gate::{Gate, MasterAccount};
use crate::net::limiter::{ConnectionLimiter, UserClientLimiter};
use crate::net::proxy::{self, TrustedProxies};
use crate::net::tls::{self, ServerTls};
use crate::penalty::Penalties;
use crate::policy::Protocol;
use crate::recheck::Rechecker;
use crate::registry::{EndReason, SessionRegistry};
use crate::session::{self, Context, ProtocolHandler, SharedContext};
use crate::store::{Backend, Store};

/// Sets up `tracing` as configured (`RUST_LOG` wins over `log.level`).
pub fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(config.log.level.clone().unwrap_or_else(|| "info".into()))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let _ = match config.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Shared state built once at start.
pub struct Runtime {
    pub store: Store,
    pub gate: Gate,
    pub tls: ServerTls,
    pub registry: SessionRegistry,
    pub limiter: ConnectionLimiter,
    /// Logged-in sessions per user and client network, all protocols.
    pub user_client_limiter: UserClientLimiter,
    pub proxies: TrustedProxies,
    pub penalties: Arc<Penalties>,
    /// System administrators' Argon2 checks, bounded.
    pub admin_passwords: AdminPasswords,
    /// Wakes this node's roll-out mailer (`crate::rollout`) at once.
    pub rollout_wake: Arc<tokio::sync::Notify>,
    /// Accept loops, stopped first on shutdown.
    listeners: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Runtime {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        tls::install_provider();
        crate::metrics::install();
        let store = Store::connect(&config.store.url).await?;
        let key = InstanceKey::load_or_create(&config.secrets.key_file)?;
        if tls::ensure_certificate(&config.tls.cert, &config.tls.key)? {
            warn!(
                cert = %config.tls.cert.display(),
                "generated a self-signed certificate; clients will warn until you install a real one"
            );
        }
        let server_tls = ServerTls::load(&config.tls.cert, &config.tls.key)?;
        let master = config.master_password()?.map(|password| MasterAccount {
            user: config.upstream_auth.master_user.clone(),
            password,
        });
        if master.is_none() {
            warn!("upstream_auth has no master password: app-password logins will fail");
        }
        let node = node_name(config);
        if let Err(err) = store.remove_node_sessions(&node).await {
            warn!(error = %err, "could not clear this node's stale sessions");
        }
        let penalties = Penalties::stored(config.limits.trusted_networks.clone(), store.clone());
        penalties.load().await?;
        let penalties = Arc::new(penalties);
        Ok(Self {
            gate: Gate::new(
                store.clone(),
                key,
                master,
                std::time::Duration::from_secs(config.limits.login_cache_secs),
            ),
            tls: server_tls,
            registry: SessionRegistry::new(node, Some(store.clone())),
            limiter: ConnectionLimiter::new(
                config.limits.max_connections,
                config.limits.max_connections_per_ip,
            ),
            user_client_limiter: UserClientLimiter::new(config.limits.max_connections_per_user_ip),
            proxies: TrustedProxies::new(config.proxy_protocol.trusted_proxies.clone()),
            admin_passwords: AdminPasswords::new(config.limits.argon2_parallelism),
            penalties,
            rollout_wake: Arc::default(),
            listeners: std::sync::Mutex::default(),
            store,
        })
    }

    /// Graceful shutdown: close the mail listeners; tell every connection not
    /// logged in yet goodbye and stop the web listener (its requests in flight
    /// finish); let live sessions finish for up to `drain`, then end the rest
    /// with a goodbye.
    pub async fn shutdown(&self, drain: Duration) {
        self.stop_accepting();
        self.registry.begin_shutdown();
        info!(
            sessions = self.registry.len(),
            connections = self.registry.connections(),
            drain_secs = drain.as_secs(),
            "shutting down: listeners closed, letting sessions finish"
        );
        if tokio::time::timeout(drain, self.registry.wait_connections_closed())
            .await
            .is_err()
        {
            let dropped = self.registry.kill_where(EndReason::Shutdown, |_| true);
            info!(
                sessions = dropped,
                "drain time over; ending the remaining sessions"
            );
            // Each session writes its goodbye and closes; give them a moment.
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                self.registry.wait_connections_closed(),
            )
            .await;
        }
    }

    /// Closes every listening socket; live sessions go on.
    pub fn stop_accepting(&self) {
        if let Ok(mut listeners) = self.listeners.lock() {
            for handle in listeners.drain(..) {
                handle.abort();
            }
        }
    }

    fn context(
        &self,
        config: &Config,
        settings: ProtocolSettings,
    ) -> anyhow::Result<SharedContext> {
        Ok(Arc::new(Context {
            settings,
            limits: config.limits.clone(),
            gate: self.gate.clone(),
            tls: self.tls.clone(),
            upstream_tls: tls::upstream_connector(&config.upstream_auth.ca_file)?,
            registry: self.registry.clone(),
            penalties: self.penalties.clone(),
            rechecker: self.rechecker(),
            user_client_limiter: self.user_client_limiter.clone(),
            handshake_timeout: Duration::from_secs(config.tls.handshake_timeout_secs),
        }))
    }

    fn rechecker(&self) -> Rechecker {
        Rechecker::new(
            self.gate.clone(),
            self.registry.clone(),
            self.penalties.clone(),
        )
    }

    /// Starts tailing the event log so live sessions follow every change.
    pub fn start_rechecks(&self, config: &Config) -> tokio::task::JoinHandle<()> {
        let rechecker = self.rechecker();
        let postgres =
            (self.store.backend() == Backend::Postgres).then(|| config.store.url.clone());
        tokio::spawn(rechecker.run(postgres))
    }

    /// Starts this node's roll-out mailer: the notices and reminders of a
    /// scheduled Forced, through `[relay]`.
    pub fn start_rollout_mail(
        &self,
        config: &Config,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let relay = crate::recovery_mail::RecoveryMailer::from_config(&config.relay)?;
        let sign_in_url = config
            .web
            .public_url()
            .ok()
            .flatten()
            .map(|url| url.to_string());
        let mailer = crate::rollout::RolloutMailer::new(
            self.store.clone(),
            relay,
            sign_in_url,
            self.rollout_wake.clone(),
        );
        Ok(tokio::spawn(mailer.run()))
    }

    /// Starts this node's sender of queued security notices (see
    /// [`crate::notices`]); every node runs one on the shared store.
    pub fn start_notices(&self, config: &Config) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let mailer = crate::recovery_mail::RecoveryMailer::from_config(&config.relay)?;
        let sender = crate::notices::NoticeSender::new(self.store.clone(), mailer);
        Ok(tokio::spawn(sender.run()))
    }

    /// Binds every listener of every configured protocol and spawns its accept loop.
    pub async fn bind_all(&self, config: &Config) -> anyhow::Result<Vec<Bound>> {
        let mut bound = Vec::new();
        for protocol in Protocol::ALL {
            let Some(settings) = config.protocol(protocol).transpose()? else {
                continue;
            };
            let ctx = self.context(config, settings)?;
            match protocol {
                Protocol::Imap => {
                    bound.extend(self.bind(&ctx, Arc::new(session::imap::Imap)).await?)
                }
                Protocol::Pop3 => {
                    bound.extend(self.bind(&ctx, Arc::new(session::pop3::Pop3)).await?)
                }
                Protocol::Smtp => {
                    let handler = session::smtp::Smtp::new(
                        ctx.settings.hostname.clone(),
                        ctx.settings.upstream_login,
                    );
                    bound.extend(self.bind(&ctx, Arc::new(handler)).await?)
                }
            }
        }
        Ok(bound)
    }

    async fn bind<H: ProtocolHandler>(
        &self,
        ctx: &SharedContext,
        handler: Arc<H>,
    ) -> anyhow::Result<Vec<Bound>> {
        let protocol = handler.protocol();
        let mut bound = Vec::new();
        let plain = ctx.settings.listen.iter().map(|a| (*a, false));
        let implicit = ctx.settings.listen_tls.iter().map(|a| (*a, true));
        for (addr, implicit_tls) in plain.chain(implicit) {
            let listener = crate::net::listener::bind(addr)
                .with_context(|| format!("binding {protocol} listener {addr}"))?;
            let local = listener.local_addr()?;
            info!(
                %protocol,
                listen = %local,
                tls = if implicit_tls { "implicit" } else { "starttls" },
                upstream = %ctx.settings.upstream,
                "listening"
            );
            bound.push(Bound {
                protocol,
                implicit_tls,
                addr: local,
            });
            let handle = tokio::spawn(accept_loop(
                listener,
                ctx.clone(),
                handler.clone(),
                implicit_tls,
                self.limiter.clone(),
                self.proxies.clone(),
            ));
            if let Ok(mut listeners) = self.listeners.lock() {
                listeners.push(handle);
            }
        }
        Ok(bound)
    }
}

/// A listening socket, as bound (port 0 in the config becomes the real port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    pub protocol: Protocol,
    pub implicit_tls: bool,
    pub addr: SocketAddr,
}

async fn accept_loop<H: ProtocolHandler>(
    listener: TcpListener,
    ctx: SharedContext,
    handler: Arc<H>,
    implicit_tls: bool,
    limiter: ConnectionLimiter,
    proxies: TrustedProxies,
) {
    let protocol = handler.protocol();
    loop {
        let (mut tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                error!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // From accept on, the connection is reached by shutdown.
        let mut connection = ctx.registry.admit();
        let (ctx, handler, limiter, proxies) = (
            ctx.clone(),
            handler.clone(),
            limiter.clone(),
            proxies.clone(),
        );
        tokio::spawn(async move {
            let header = proxy::client_address(&mut tcp, peer, &proxies, ctx.handshake_timeout);
            let client = tokio::select! {
                biased;
                // Nothing of the mail protocol has been said yet: just close.
                _ = connection.shutdown() => return,
                header = Box::pin(header) => header,
            };
            let client = match client {
                Ok(client) => client,
                Err(err) => {
                    warn!(%protocol, proxy = %peer.ip(), error = %err, "PROXY header refused; closing");
                    return;
                }
            };
            // Limits apply to the real client, not to a load balancer in front.
            let _permit = match limiter.try_acquire(client.ip()) {
                Ok(permit) => permit,
                Err(limit) => {
                    metrics::counter!(crate::metrics::CONNECTIONS_REJECTED,
                        "protocol" => protocol.as_str(), "limit" => limit.as_str())
                    .increment(1);
                    warn!(%protocol, client = %client.ip(), limit = limit.as_str(), "connection limit reached; closing");
                    return;
                }
            };
            session::handle_connection(ctx, handler, tcp, client, implicit_tls, connection).await;
        });
    }
}

/// This node's name in the shared sessions table.
pub fn node_name(config: &Config) -> String {
    config.node.name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "postern".into())
    })
}

/// The async runtime: `workers` threads serve connections (`None`: one per
/// CPU, or `TOKIO_WORKER_THREADS`; the default for `admin` and `demo`).
pub fn build_runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    builder.build()
}

/// Runs the gateway until a termination signal.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    info!(
        worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "starting"
    );
    // Handlers first: a SIGHUP or SIGTERM during start-up (the first-run
    // administrator password takes a moment to hash) waits instead of killing us.
    let signals = Signals::install()?;
    let runtime = Runtime::build(&config).await?;
    runtime.bind_all(&config).await?;
    runtime.start_rechecks(&config);
    runtime.start_rollout_mail(&config)?;
    runtime.start_notices(&config)?;
    crate::web::spawn(&runtime, &config).await?;
    crate::service_manager::notify_ready();
    signals.wait_for_shutdown(&runtime).await;
    crate::service_manager::notify_stopping();
    runtime
        .shutdown(Duration::from_secs(config.limits.drain_secs))
        .await;
    runtime.registry.flush().await;
    // The drops just audited must not be lost with the process.
    if tokio::time::timeout(Duration::from_secs(5), runtime.gate.flush_audit())
        .await
        .is_err()
    {
        warn!("the audit log could not be written before exit");
    }
    runtime.store.close().await;
    Ok(())
}

/// The signals `serve` acts on, registered before anything else starts.
#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Reloads the certificate on SIGHUP; returns on SIGTERM or SIGINT.
    async fn wait_for_shutdown(mut self, runtime: &Runtime) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => match runtime.tls.reload() {
                    Ok(()) => info!("reloaded the TLS certificate"),
                    Err(err) => error!(error = %err, "TLS reload failed; keeping the old certificate"),
                },
            }
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self)
    }

    async fn wait_for_shutdown(self, _runtime: &Runtime) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_runtime_has_the_configured_worker_threads() {
        for workers in [1, 3] {
            let runtime = super::build_runtime(Some(workers)).expect("runtime");
            assert_eq!(runtime.metrics().num_workers(), workers);
        }
    }
}
