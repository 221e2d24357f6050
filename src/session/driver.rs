//! The one session loop: pre-login, login, relay.
//!
//! Every wait on the client before login (reads, writes, a STARTTLS or
//! implicit-TLS handshake) goes through [`interruptible`], one `select!` over
//! the client, the pre-login deadline and shutdown, so a client that says
//! nothing, reads nothing or is mid-handshake when postern stops is told
//! goodbye (when it can be) and closed. After login the relay's loop does the
//! same over both sides, the kill signal and the idle timeout.

use crate::address::fold;
use crate::clock::unix_now;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;
use tracing::{debug, info};

use super::connect::{connect_upstream, start_tls};
use super::relay::Relay;
use super::{ProtocolHandler, SharedContext, UpstreamCore};
use crate::config::{ProtocolSettings, UpstreamTls};
use crate::epoch::Epoch;
use crate::gate::{SessionCredential, Verdict};
use crate::login_log::LoginAttempt;
use crate::metrics as m;
use crate::net::limiter::{Limit, UserClientPermit};
use crate::net::stream::MaybeTls;
use crate::protocol::line::{Action, LoginFailure, LoginMethod, Options, PreAuthCore};
use crate::protocol::sasl::Credentials;
use crate::protocol::upstream::{UpstreamRequest, UpstreamStep};
use crate::registry::{ConnectionHandle, EndReason, NewSession};
use crate::store::normalize_address;

/// Read buffer for the pre-login phase and the upstream login.
const READ_CHUNK: usize = 4096;
/// How long a goodbye may take to write before the connection is closed
/// anyway (a client that reads nothing must not hold its task).
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// A logged-in session, ready to relay.
struct Established {
    client: MaybeTls,
    upstream: MaybeTls,
    user: String,
    credential: SessionCredential,
    allowed_until: Option<i64>,
    /// The change counter when the login began (see `crate::epoch`).
    began: Epoch,
    /// This session's place under `max_connections_per_user_ip`.
    slot: UserClientPermit,
}

/// Serves one accepted connection until it ends. `connection` is its place in
/// the registry's shutdown, held until the connection closes.
pub async fn handle_connection<H: ProtocolHandler>(
    ctx: SharedContext,
    handler: Arc<H>,
    tcp: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    mut connection: ConnectionHandle,
) {
    let _ = tcp.set_nodelay(true);
    let protocol = handler.protocol();
    metrics::counter!(m::CONNECTIONS, "protocol" => protocol.as_str()).increment(1);
    // Every step before the relay is boxed: an async fn's state is as large as its
    // largest await, and a session's task keeps that size for its whole life,
    // so the login's futures (TLS handshake, store queries) must not be inlined
    // into the state an idle session holds.
    let client = if implicit_tls {
        let acceptor = ctx.tls.acceptor(protocol);
        let handshake = timeout(ctx.handshake_timeout, acceptor.accept(tcp));
        match Box::pin(interruptible(handshake, None, &mut connection)).await {
            Ok(Ok(Ok(stream))) => MaybeTls::ServerTls(Box::new(stream)),
            Ok(Ok(Err(err))) => {
                debug!(%protocol, client = %peer.ip(), error = %err, "TLS handshake failed");
                return;
            }
            Ok(Err(_)) => {
                debug!(%protocol, client = %peer.ip(), "TLS handshake timed out");
                return;
            }
            // Shutting down: nothing can be said before the handshake is over.
            Err(_) => return,
        }
    } else {
        MaybeTls::Plain(tcp)
    };
    let deadline = Instant::now() + Duration::from_secs(ctx.limits.prelogin_timeout_secs);
    match Box::pin(pre_login(
        &ctx,
        &*handler,
        client,
        peer,
        deadline,
        &mut connection,
    ))
    .await
    {
        Ok(Some(established)) => {
            // After the client has its answer, before relaying: last use is
            // recorded off the reply's critical path, yet before any later command.
            Box::pin(
                ctx.gate
                    .record_use(established.credential, peer.ip(), protocol, unix_now()),
            )
            .await;
            relay(&ctx, &*handler, established, peer).await
        }
        Ok(None) => {}
        Err(err) => {
            debug!(%protocol, client = %peer.ip(), error = %err, "connection ended before login")
        }
    }
}

fn core_options(ctx: &SharedContext, tls_active: bool) -> Options {
    Options {
        tls_active,
        starttls_available: true,
        allow_plaintext_auth: ctx.settings.allow_plaintext_auth,
        max_line: ctx.limits.max_line_bytes,
        max_bad_commands: ctx.limits.max_bad_commands,
    }
}

/// Why the pre-login phase stopped waiting on the client.
enum Interrupted {
    /// The pre-login deadline passed.
    Deadline,
    /// postern is shutting down.
    Shutdown(EndReason),
}

/// The one place a connection waits on its client before login: `io` (a read,
/// a write, a TLS handshake) against the pre-login deadline (none before it
/// starts) and shutdown, both of which win over a ready `io`. Reads on a tokio
/// stream are cancel-safe: an interrupted read loses no byte the core has seen.
async fn interruptible<T>(
    io: impl Future<Output = T>,
    deadline: Option<Instant>,
    connection: &mut ConnectionHandle,
) -> Result<T, Interrupted> {
    let deadline = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    // Shutdown and the deadline first: a client that keeps sending must not
    // keep its read ready forever and so never hear of either.
    tokio::select! {
        biased;
        reason = connection.shutdown() => Err(Interrupted::Shutdown(reason)),
        () = deadline => Err(Interrupted::Deadline),
        output = io => Ok(output),
    }
}

/// Writes a last line (bounded in time), then closes.
async fn goodbye(client: &mut MaybeTls, bytes: &[u8]) {
    let _ = timeout(GOODBYE_TIMEOUT, async {
        client.write_all(bytes).await?;
        client.shutdown().await
    })
    .await;
}

async fn pre_login<H: ProtocolHandler>(
    ctx: &SharedContext,
    handler: &H,
    mut client: MaybeTls,
    peer: SocketAddr,
    deadline: Instant,
    connection: &mut ConnectionHandle,
) -> io::Result<Option<Established>> {
    // Waits on the client through `interruptible`; interrupted, the client is
    // told why (bounded in time: it may have stopped reading) and closed.
    macro_rules! wait {
        ($io:expr) => {
            match interruptible($io, Some(deadline), connection).await {
                Ok(result) => result?,
                Err(interrupted) => {
                    let bytes = match interrupted {
                        Interrupted::Deadline => handler.timeout_goodbye(),
                        Interrupted::Shutdown(reason) => handler.shutdown_goodbye(reason.message()),
                    };
                    goodbye(&mut client, &bytes).await;
                    return Ok(None);
                }
            }
        };
    }

    wait!(async {
        handler.prepare(ctx).await;
        io::Result::Ok(())
    });
    let mut core = handler.client_core(core_options(ctx, client.is_tls()));
    wait!(client.write_all(&core.greeting()));
    // Read into spare capacity: nothing to zero per connection.
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        while let Some(action) = core.next_action() {
            match action {
                Action::Send(bytes) => wait!(client.write_all(&bytes)),
                Action::Close(bytes) => {
                    wait!(client.write_all(&bytes));
                    goodbye(&mut client, b"").await;
                    return Ok(None);
                }
                Action::StartTls(bytes) => {
                    wait!(client.write_all(&bytes));
                    wait!(client.flush());
                    let MaybeTls::Plain(tcp) = client else {
                        return Ok(None);
                    };
                    let acceptor = ctx.tls.acceptor(handler.protocol());
                    let handshake = timeout(ctx.handshake_timeout, acceptor.accept(tcp));
                    let accepted = match interruptible(handshake, Some(deadline), connection).await
                    {
                        Ok(accepted) => accepted.map_err(|_| {
                            io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                        })??,
                        // Mid-handshake: nothing can be said in clear any more.
                        Err(_) => return Ok(None),
                    };
                    client = MaybeTls::ServerTls(Box::new(accepted));
                    // The old core and whatever it had buffered in clear are dropped
                    // here: nothing sent before the handshake is executed after it.
                    wait!(async {
                        handler.prepare(ctx).await;
                        io::Result::Ok(())
                    });
                    core = handler.client_core(core_options(ctx, true));
                }
                // The login itself is not interrupted: it is bounded by the
                // upstream timeout, and its client gets a true answer (a
                // session that results drains like any other).
                Action::Login {
                    credentials,
                    method,
                } => match counted(
                    handler.protocol(),
                    answer_no_sooner(ctx, login(ctx, handler, &core, &credentials, method, peer))
                        .await,
                ) {
                    Ok(LoggedIn {
                        mut upstream,
                        reply,
                        leftover,
                        user,
                        credential,
                        allowed_until,
                        began,
                        slot,
                    }) => {
                        // Logged in: from here on this is a session, which
                        // drains on shutdown instead of being cut.
                        client.write_all(&reply).await?;
                        client.write_all(&leftover).await?;
                        let pipelined = core.into_pipelined();
                        upstream.write_all(&pipelined).await?;
                        return Ok(Some(Established {
                            client,
                            upstream,
                            user,
                            credential,
                            allowed_until,
                            began,
                            slot,
                        }));
                    }
                    Err(failure) => {
                        let reply = core.login_failed(failure);
                        wait!(client.write_all(&reply));
                    }
                },
            }
        }
        buf.clear();
        let n = wait!(client.read_buf(&mut buf));
        if n == 0 {
            return Ok(None);
        }
        core.feed(&buf[..n]);
    }
}

/// Counts a login attempt by its result.
fn counted<T>(
    protocol: crate::policy::Protocol,
    result: Result<T, LoginFailure>,
) -> Result<T, LoginFailure> {
    let label = match &result {
        Ok(_) => "ok",
        Err(LoginFailure::Refused) => "refused",
        Err(LoginFailure::Temporary) => "unavailable",
        Err(LoginFailure::TooManySessions) => "limited",
    };
    metrics::counter!(m::LOGINS, "protocol" => protocol.as_str(), "result" => label).increment(1);
    result
}

struct LoggedIn {
    upstream: MaybeTls,
    reply: Vec<u8>,
    leftover: Vec<u8>,
    user: String,
    credential: SessionCredential,
    allowed_until: Option<i64>,
    began: Epoch,
    slot: UserClientPermit,
}

/// Runs a login and holds a refusal until `refusal_floor_ms` after the command:
/// a refusal postern decides at once (an enrolled user's primary password, a
/// revoked app password) then takes as long as one the upstream decides after its
/// own failure delay, so timing does not tell which it was. Temporary errors and
/// successes are not held.
async fn answer_no_sooner<T>(
    ctx: &SharedContext,
    login: impl Future<Output = Result<T, LoginFailure>>,
) -> Result<T, LoginFailure> {
    let floor = Instant::now() + Duration::from_millis(ctx.limits.refusal_floor_ms);
    let result = login.await;
    if matches!(result, Err(LoginFailure::Refused)) {
        tokio::time::sleep_until(floor).await;
    }
    result
}

/// The gate, then the upstream login. Logs one line per attempt.
async fn login<H: ProtocolHandler>(
    ctx: &SharedContext,
    handler: &H,
    core: &H::Client,
    credentials: &Credentials,
    method: LoginMethod,
    peer: SocketAddr,
) -> Result<LoggedIn, LoginFailure> {
    let protocol = handler.protocol();
    let ip = peer.ip();
    let method = method.name();
    let delay = ctx.penalties.delay(ip).await;
    if !delay.is_zero() {
        metrics::counter!(m::PENALTY_SECONDS).increment(delay.as_secs());
        tokio::time::sleep(delay).await;
    }
    let attempt = ctx.gate.key().mac(&[
        b"login-attempt",
        fold(&credentials.username).as_bytes(),
        credentials.password.expose().as_bytes(),
    ]);
    if ctx.penalties.blocked(&credentials.username) {
        // A name the store keeps no row for, blocked on this node.
        return blocked(ctx, protocol, &credentials.username, ip, method).await;
    }
    // Before reading the stored state: see `crate::epoch`.
    let began = ctx.registry.login_began();
    let verdict = ctx.gate.check(credentials, protocol, ip, unix_now()).await;
    let (user, credential, upstream, allowed_until, after_success) = match verdict {
        Verdict::Refuse { user, reason } => {
            LoginAttempt::new(protocol.as_str(), method, &user, ip).refused(reason.as_str());
            return refused(ctx, protocol, &user, ip, attempt, reason.as_str()).await;
        }
        Verdict::Blocked { user } => {
            return blocked(ctx, protocol, &user, ip, method).await;
        }
        Verdict::Unavailable { user, detail } => {
            LoginAttempt::new(protocol.as_str(), method, &user, ip).unavailable(&detail);
            ctx.gate
                .audit_login(&user, protocol, ip, "unavailable", &detail);
            return Err(LoginFailure::Temporary);
        }
        Verdict::Proceed {
            user,
            credential,
            upstream,
            allowed_until,
            after_success,
        } => (user, credential, upstream, allowed_until, after_success),
    };
    let request = UpstreamRequest {
        credentials: upstream,
        client: peer,
        starttls: ctx.settings.upstream_tls == UpstreamTls::Starttls,
    };
    let upstream_core = handler.upstream_core(core, request);
    let limit = Duration::from_secs(ctx.settings.upstream_timeout_secs);
    let started = Instant::now();
    let outcome = match timeout(
        limit,
        upstream_login(&ctx.settings, &ctx.upstream_tls, upstream_core),
    )
    .await
    {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(err)) => UpstreamOutcome::Failed(format!("upstream: {err}")),
        Err(_) => UpstreamOutcome::Failed("upstream login timed out".into()),
    };
    metrics::histogram!(m::UPSTREAM_LOGIN_SECONDS, "protocol" => protocol.as_str())
        .record(started.elapsed());
    match outcome {
        UpstreamOutcome::LoggedIn {
            mut stream,
            reply,
            leftover,
        } => {
            // Checked once the upstream accepted, as Dovecot does: the answer
            // tells nothing to someone without the credentials.
            let Some(slot) = ctx.user_client_limiter.try_acquire(&user, ip) else {
                let _ = stream.shutdown().await;
                metrics::counter!(m::CONNECTIONS_REJECTED,
                    "protocol" => protocol.as_str(), "limit" => Limit::PerUserClient.as_str())
                .increment(1);
                LoginAttempt::new(protocol.as_str(), method, &user, ip)
                    .credential(&credential)
                    .limited("too-many-sessions");
                ctx.gate
                    .audit_login(&user, protocol, ip, "limited", "too-many-sessions");
                return Err(LoginFailure::TooManySessions);
            };
            LoginAttempt::new(protocol.as_str(), method, &user, ip)
                .credential(&credential)
                .ok();
            ctx.penalties.succeeded(ip, &user).await;
            ctx.gate.login_succeeded(&user, after_success).await;
            ctx.gate
                .audit_login(&user, protocol, ip, "ok", &credential.to_string());
            Ok(LoggedIn {
                upstream: stream,
                reply,
                leftover,
                user,
                credential,
                allowed_until,
                began,
                slot,
            })
        }
        UpstreamOutcome::Refused(detail) => {
            LoginAttempt::new(protocol.as_str(), method, &user, ip)
                .credential(&credential)
                .upstream(&detail)
                .refused("upstream-refused");
            refused(ctx, protocol, &user, ip, attempt, "upstream-refused").await
        }
        UpstreamOutcome::Failed(detail) => {
            LoginAttempt::new(protocol.as_str(), method, &user, ip)
                .credential(&credential)
                .unavailable(&detail);
            ctx.gate
                .audit_login(&user, protocol, ip, "unavailable", &detail);
            Err(LoginFailure::Temporary)
        }
    }
}

/// Counts a refusal (client delay; the account's count, in the store for an
/// address, on this node for any other name) and audits it.
async fn refused<T>(
    ctx: &SharedContext,
    protocol: crate::policy::Protocol,
    user: &str,
    ip: std::net::IpAddr,
    attempt: [u8; 32],
    reason: &str,
) -> Result<T, LoginFailure> {
    if ctx.penalties.failed(ip, user, attempt).await {
        if normalize_address(user).is_ok() {
            ctx.gate.count_login_failure(user, unix_now(), ip).await;
        } else {
            ctx.penalties.local_account_failed(user);
        }
    }
    ctx.gate.audit_login(user, protocol, ip, "refused", reason);
    Err(LoginFailure::Refused)
}

/// Refuses a blocked account. Not counted: a block ends after a quiet period,
/// which further guesses do not extend.
async fn blocked<T>(
    ctx: &SharedContext,
    protocol: crate::policy::Protocol,
    user: &str,
    ip: std::net::IpAddr,
    method: &str,
) -> Result<T, LoginFailure> {
    LoginAttempt::new(protocol.as_str(), method, user, ip).refused("account-blocked");
    ctx.gate
        .audit_login(user, protocol, ip, "refused", "account-blocked");
    Err(LoginFailure::Refused)
}

pub(super) enum UpstreamOutcome {
    LoggedIn {
        stream: MaybeTls,
        reply: Vec<u8>,
        leftover: Vec<u8>,
    },
    Refused(String),
    Failed(String),
}

/// Connects upstream and drives the upstream-login core to its end. Shared by
/// mail sessions and the web login's primary-password check.
pub(super) async fn upstream_login<U: UpstreamCore>(
    settings: &ProtocolSettings,
    connector: &TlsConnector,
    mut core: U,
) -> io::Result<UpstreamOutcome> {
    let mut stream = connect_upstream(settings, connector).await?;
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        while let Some(step) = core.next_step() {
            match step {
                UpstreamStep::Send(bytes) => stream.write_all(&bytes).await?,
                UpstreamStep::StartTls => {
                    let MaybeTls::Plain(tcp) = stream else {
                        return Ok(UpstreamOutcome::Failed("STARTTLS inside TLS".into()));
                    };
                    stream = start_tls(settings, connector, tcp).await?;
                }
                UpstreamStep::LoggedIn {
                    client_reply,
                    leftover,
                } => {
                    return Ok(UpstreamOutcome::LoggedIn {
                        stream,
                        reply: client_reply,
                        leftover,
                    });
                }
                UpstreamStep::Refused { detail } => return Ok(UpstreamOutcome::Refused(detail)),
                UpstreamStep::Failed { detail } => return Ok(UpstreamOutcome::Failed(detail)),
            }
        }
        buf.clear();
        let n = stream.read_buf(&mut buf).await?;
        if n == 0 {
            return Ok(UpstreamOutcome::Failed(
                "upstream closed the connection".into(),
            ));
        }
        core.feed(&buf[..n]);
    }
}

enum RelayEnd {
    Closed(io::Result<(u64, u64)>),
    Killed(EndReason),
}

/// Relays bytes both ways until either side closes or the session is killed.
async fn relay<H: ProtocolHandler>(
    ctx: &SharedContext,
    handler: &H,
    established: Established,
    peer: SocketAddr,
) {
    let Established {
        mut client,
        mut upstream,
        user,
        credential,
        allowed_until,
        began,
        slot: _slot,
    } = established;
    let protocol = handler.protocol();
    let registered = Box::pin(ctx.registry.register(
        NewSession {
            user: user.clone(),
            protocol,
            credential,
            client: peer,
            started_at: unix_now(),
            allowed_until,
        },
        began,
    ))
    .await;
    let mut handle = registered.handle;
    if registered.must_recheck
        && let Some(info) = ctx.registry.get(handle.id())
    {
        Box::pin(ctx.rechecker.recheck(vec![info])).await;
    }
    let active = metrics::gauge!(m::SESSIONS_ACTIVE, "protocol" => protocol.as_str());
    active.increment(1);
    let idle = Duration::from_secs(ctx.limits.idle_timeout_secs);
    let end = {
        let mut relay = Relay::new(&mut client, &mut upstream, handle.traffic());
        let mut deadline = Instant::now() + idle;
        loop {
            tokio::select! {
                result = &mut relay => break RelayEnd::Closed(result),
                reason = handle.killed() => break RelayEnd::Killed(reason),
                _ = tokio::time::sleep_until(deadline), if !idle.is_zero() => {
                    let quiet_since = Instant::from_std(relay.last_activity());
                    if quiet_since.elapsed() >= idle {
                        break RelayEnd::Killed(EndReason::Idle);
                    }
                    deadline = quiet_since + idle;
                }
            }
        }
    };
    active.decrement(1);
    match end {
        RelayEnd::Closed(Ok((up, down))) => {
            debug!(%protocol, %user, client = %peer.ip(), bytes_up = up, bytes_down = down, "session closed");
        }
        RelayEnd::Closed(Err(err)) => {
            debug!(%protocol, %user, client = %peer.ip(), error = %err, "session ended");
        }
        RelayEnd::Killed(reason) => {
            metrics::counter!(m::SESSIONS_DROPPED, "reason" => reason.label()).increment(1);
            goodbye(&mut client, &handler.goodbye(reason.message())).await;
            let _ = timeout(GOODBYE_TIMEOUT, upstream.shutdown()).await;
            info!(%protocol, %user, client = %peer.ip(), %credential, reason = reason.label(), "session dropped");
            ctx.gate
                .audit_session_drop(&user, protocol, peer.ip(), reason.label());
        }
    }
}
