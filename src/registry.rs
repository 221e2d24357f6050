//! Live authenticated sessions of this node, each with a kill handle.
//!
//! A session registers after its upstream login and gets a [`SessionHandle`];
//! dropping the handle (however the session ends) removes the entry here and its
//! row in the shared `sessions` table (so `postern admin session list` sees every
//! node). The table is written by one task per node, in batches gathered over
//! [`MIRROR_DELAY`]: a login costs no write of its own, and a session that ends
//! within that time (a client checking mail and leaving) never reaches the table. Killing a session and shutting down use the same path: the entry's
//! watch channel carries the reason, and the session's relay loop says goodbye
//! and closes both sides.
//!
//! Shutdown must also reach what is not a session yet: every accepted
//! connection (a client before login, in its TLS handshake or PROXY header)
//! and the web server hold a [`ConnectionHandle`]. [`SessionRegistry::begin_shutdown`]
//! tells them all at once through one watch channel; a client before login is
//! told goodbye, the web server stops accepting; and the drain waits until
//! every handle is gone ([`SessionRegistry::wait_connections_closed`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// Why postern ended a session (or turned away a connection at shutdown): the
/// one value that carries what the client is told, what the audit log records
/// and the `reason` label of `postern_sessions_dropped_total`, which the relay
/// counts once when the session ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The credential is no longer acceptable: the policy's reason.
    Policy(Refusal),
    /// An administrator ended the user's sessions (`postern admin session kill`).
    AdminKill,
    /// postern is shutting down.
    Shutdown,
    /// Silent for longer than `[limits] idle_timeout_secs`.
    Idle,
}

impl EndReason {
    /// The sentence the client is told (in the protocol's goodbye line).
    pub fn message(self) -> &'static str {
        match self {
            Self::Policy(refusal) => refusal.session_message(),
            Self::AdminKill => "Your session was ended by an administrator.",
            Self::Shutdown => "postern is shutting down; please reconnect.",
            Self::Idle => "Idle for too long; please reconnect.",
        }
    }

    /// The value in the audit log and the metric's `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Policy(refusal) => refusal.as_str(),
            Self::AdminKill => "admin",
            Self::Shutdown => "shutdown",
            Self::Idle => "idle",
        }
    }
}

use crate::address::fold;
use crate::epoch::{ChangeEpoch, Epoch};
use crate::gate::SessionCredential;
use crate::policy::{Protocol, Refusal};
use crate::store::batch::{BatchWriter, Batching};
use crate::store::{SessionRow, Store};

/// What a session tells the registry when it starts.
#[derive(Clone, Debug)]
pub struct NewSession {
    pub user: String,
    pub protocol: Protocol,
    pub credential: SessionCredential,
    pub client: SocketAddr,
    /// Unix seconds.
    pub started_at: i64,
    /// Re-check at this time even without a stored change (expiry, grace end).
    pub allowed_until: Option<i64>,
}

/// Bytes a live session has relayed so far, updated by its relay as they move.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Client to upstream.
    pub up: AtomicU64,
    /// Upstream to client.
    pub down: AtomicU64,
}

impl Traffic {
    /// (client→upstream, upstream→client).
    pub fn totals(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

/// A live session as listed.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub id: u64,
    pub session: NewSession,
    pub traffic: Arc<Traffic>,
}

impl SessionInfo {
    /// The domain part of the user's address, lower-case ("" if none).
    pub fn domain(&self) -> String {
        self.session
            .user
            .rsplit_once('@')
            .map(|(_, d)| fold(d))
            .unwrap_or_default()
    }
}

struct Entry {
    info: SessionInfo,
    kill: watch::Sender<Option<EndReason>>,
}

#[derive(Clone)]
pub struct SessionRegistry {
    inner: Arc<Inner>,
}

/// How long the mirror gathers session changes before writing them.
pub const MIRROR_DELAY: Duration = Duration::from_millis(250);
/// Changes per transaction at most.
const MIRROR_BATCH: usize = 1000;

enum Change {
    Started(SessionRow),
    Ended(String),
}

/// The shared table's writer, started with the first session (inside the
/// runtime). A failed write is logged and dropped (the table is a best-effort
/// mirror; each node clears its own rows when it starts).
type Mirror = BatchWriter<Change>;

/// After the first change the mirror sleeps [`MIRROR_DELAY`] (one wake-up per
/// batch, however many sessions start and end meanwhile); it never drops a
/// change (an end left out would leave a row behind).
const MIRROR_BATCHING: Batching = Batching {
    delay: MIRROR_DELAY,
    max_batch: MIRROR_BATCH,
    max_queued: usize::MAX,
};

fn mirror(store: Store) -> Mirror {
    BatchWriter::new(
        MIRROR_BATCHING,
        Box::new(move |changes: Vec<Change>| Box::pin(write_sessions(store.clone(), changes))),
    )
}

/// Writes one batch of changes, leaving out the sessions that started and
/// ended within it.
async fn write_sessions(store: Store, changes: Vec<Change>) {
    let mut started: HashMap<String, SessionRow> = HashMap::new();
    let mut ended = Vec::new();
    for change in changes {
        match change {
            Change::Started(row) => {
                started.insert(row.id.clone(), row);
            }
            Change::Ended(id) => {
                if started.remove(&id).is_none() {
                    ended.push(id);
                }
            }
        }
    }
    let started: Vec<SessionRow> = started.into_values().collect();
    // Two transactions: a start that cannot be written keeps no end from it.
    for (started, ended) in [(&started[..], &[][..]), (&[][..], &ended[..])] {
        if let Err(err) = store.sync_sessions(started, ended).await {
            tracing::debug!(error = %err, "could not update the session list in the store");
        }
    }
}

struct Inner {
    node: String,
    /// `node-pid-`: the prefix of this process's row ids.
    row_prefix: String,
    /// Mirrors sessions into the shared table; `None` in unit tests.
    mirror: Option<Mirror>,
    next_id: AtomicU64,
    sessions: Mutex<HashMap<u64, Entry>>,
    /// Tells `wait_empty` that a session left.
    left: watch::Sender<usize>,
    /// Accepted connections and servers holding a [`ConnectionHandle`].
    connections: watch::Sender<usize>,
    /// The reason once shutdown began; `None` while running.
    closing: watch::Sender<Option<EndReason>>,
    /// The node's change counter (the store's; see [`crate::epoch`]).
    epoch: ChangeEpoch,
}

/// What [`SessionRegistry::register`] answers.
pub struct Registered {
    pub handle: SessionHandle,
    /// A change was applied between the login's start and its listing: the
    /// session must re-check itself against the store.
    pub must_recheck: bool,
}

/// Held by a live session; removes its entry on drop.
pub struct SessionHandle {
    id: u64,
    registry: SessionRegistry,
    killed: watch::Receiver<Option<EndReason>>,
    traffic: Arc<Traffic>,
}

impl SessionRegistry {
    pub fn new(node: String, store: Option<Store>) -> Self {
        Self {
            inner: Arc::new(Inner {
                row_prefix: format!("{node}-{}-", std::process::id()),
                node,
                mirror: store.clone().map(mirror),
                next_id: AtomicU64::new(0),
                sessions: Mutex::new(HashMap::new()),
                left: watch::channel(0).0,
                connections: watch::channel(0).0,
                closing: watch::channel(None).0,
                epoch: store
                    .as_ref()
                    .map_or_else(ChangeEpoch::default, |s| s.epoch().clone()),
            }),
        }
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    fn row_id(&self, id: u64) -> String {
        format!("{}{id}", self.inner.row_prefix)
    }

    /// Where the node's change counter is: a login takes it before it reads the
    /// stored state, and hands it to [`register`](Self::register).
    pub fn login_began(&self) -> Epoch {
        self.inner.epoch.now()
    }

    /// Registers a session whose login took [`login_began`](Self::login_began)
    /// as `began`, and answers whether it must re-check itself: a change applied
    /// since may have missed it (the event-log tail looked at the sessions
    /// before this one was listed). Its row in the shared table follows within
    /// [`MIRROR_DELAY`] (plus the write), so `session list` on any node shows it
    /// a moment after the session starts relaying.
    pub async fn register(&self, session: NewSession, began: Epoch) -> Registered {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (kill, killed) = watch::channel(None);
        if let Some(mirror) = &self.inner.mirror {
            mirror.push(Change::Started(SessionRow {
                id: self.row_id(id),
                node: self.inner.node.clone(),
                user_address: session.user.clone(),
                protocol: session.protocol,
                credential: session.credential.to_string(),
                client_ip: session.client.ip().to_string(),
                started_at: session.started_at,
            }));
        }
        let info = SessionInfo {
            id,
            session,
            traffic: Arc::default(),
        };
        let traffic = info.traffic.clone();
        if let Ok(mut sessions) = self.inner.sessions.lock() {
            sessions.insert(id, Entry { info, kill });
        }
        // Listed first, then compared: a change applied after this point sees
        // the session; one applied before moved the counter.
        let must_recheck = !self.inner.epoch.unchanged_since(began);
        Registered {
            handle: SessionHandle {
                id,
                registry: self.clone(),
                killed,
                traffic,
            },
            must_recheck,
        }
    }

    /// One live session.
    pub fn get(&self, id: u64) -> Option<SessionInfo> {
        self.inner
            .sessions
            .lock()
            .ok()
            .and_then(|s| s.get(&id).map(|e| e.info.clone()))
    }

    /// A snapshot of the live sessions.
    pub fn list(&self) -> Vec<SessionInfo> {
        self.inner
            .sessions
            .lock()
            .map(|s| s.values().map(|e| e.info.clone()).collect())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.inner.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends one session; false if it is already gone.
    pub fn kill(&self, id: u64, reason: EndReason) -> bool {
        self.inner
            .sessions
            .lock()
            .ok()
            .and_then(|s| s.get(&id).map(|e| e.kill.send(Some(reason)).is_ok()))
            .unwrap_or(false)
    }

    /// Ends every session matching `filter` with `reason`; returns how many.
    pub fn kill_where(&self, reason: EndReason, filter: impl Fn(&SessionInfo) -> bool) -> usize {
        let Ok(sessions) = self.inner.sessions.lock() else {
            return 0;
        };
        let mut count = 0;
        for entry in sessions.values().filter(|e| filter(&e.info)) {
            let _ = entry.kill.send(Some(reason));
            count += 1;
        }
        count
    }

    /// Sets when a session is next re-checked without a stored change.
    pub fn set_allowed_until(&self, id: u64, allowed_until: Option<i64>) {
        if let Ok(mut sessions) = self.inner.sessions.lock()
            && let Some(entry) = sessions.get_mut(&id)
        {
            entry.info.session.allowed_until = allowed_until;
        }
    }

    /// Resolves once every session start and end so far is written to the shared
    /// table (or the write failed).
    pub async fn flush(&self) {
        if let Some(mirror) = &self.inner.mirror {
            mirror.flush().await;
        }
    }

    /// Resolves once no session is left (graceful shutdown).
    pub async fn wait_empty(&self) {
        let mut left = self.inner.left.subscribe();
        while !self.is_empty() {
            if left.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Held by every accepted connection, logged in or not, and by the web server,
/// from accept to close: shutdown reaches it, and the drain waits for it.
pub struct ConnectionHandle {
    registry: SessionRegistry,
    closing: watch::Receiver<Option<EndReason>>,
}

impl SessionRegistry {
    /// Counts a connection (or a server) until the handle is dropped.
    pub fn admit(&self) -> ConnectionHandle {
        self.inner.connections.send_modify(|n| *n += 1);
        ConnectionHandle {
            registry: self.clone(),
            closing: self.inner.closing.subscribe(),
        }
    }

    /// Tells every connection handle that postern is shutting down (once; the
    /// first reason stays). Live sessions are not ended by this: they drain,
    /// and [`SessionRegistry::kill_where`] ends those left.
    pub fn begin_shutdown(&self) {
        self.inner.closing.send_if_modified(|closing| {
            if closing.is_some() {
                return false;
            }
            *closing = Some(EndReason::Shutdown);
            true
        });
    }

    /// Connections (and servers) still open.
    pub fn connections(&self) -> usize {
        *self.inner.connections.borrow()
    }

    /// Resolves once every connection handle is dropped.
    pub async fn wait_connections_closed(&self) {
        let mut open = self.inner.connections.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
    }
}

impl ConnectionHandle {
    /// [`ConnectionHandle::shutdown`] as a future of its own, for a server
    /// that stops itself (axum's graceful shutdown) while this handle, held
    /// until the server returns, keeps the drain waiting.
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.clone();
        async move {
            if closing.wait_for(Option::is_some).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves with the reason once shutdown has begun (at once if it has).
    pub async fn shutdown(&mut self) -> EndReason {
        let reason = match self.closing.wait_for(Option::is_some).await {
            Ok(reason) => *reason,
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            // The registry is gone with its sender: nothing will shut us down.
            None => std::future::pending().await,
        }
    }
}

impl Drop for ConnectionHandle {
    fn drop(&mut self) {
        self.registry
            .inner
            .connections
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl SessionHandle {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The session's byte counters, for its relay to update.
    pub fn traffic(&self) -> Arc<Traffic> {
        self.traffic.clone()
    }

    /// Resolves with the reason once the session is to be ended.
    pub async fn killed(&mut self) -> EndReason {
        loop {
            if let Some(reason) = *self.killed.borrow_and_update() {
                return reason;
            }
            if self.killed.changed().await.is_err() {
                // The registry entry is gone: nothing can kill us any more.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        let inner = &self.registry.inner;
        let remaining = inner.sessions.lock().map(|mut s| {
            s.remove(&self.id);
            s.len()
        });
        if let Ok(remaining) = remaining {
            inner.left.send_replace(remaining);
        }
        if let Some(mirror) = &inner.mirror {
            mirror.push(Change::Ended(self.registry.row_id(self.id)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(user: &str, credential: SessionCredential) -> NewSession {
        NewSession {
            user: user.into(),
            protocol: Protocol::Imap,
            credential,
            client: "127.0.0.1:1000".parse().unwrap(),
            started_at: 0,
            allowed_until: None,
        }
    }

    #[tokio::test]
    async fn the_shared_table_lists_live_sessions_and_forgets_ended_ones() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let registry = SessionRegistry::new("n1".into(), Some(store.clone()));
        let began = registry.login_began();
        let live = registry
            .register(session("a@x", SessionCredential::AppPassword(2)), began)
            .await
            .handle;
        let brief = registry
            .register(session("b@x", SessionCredential::Primary), began)
            .await
            .handle;
        drop(brief);
        registry.flush().await;
        let listed = store.list_sessions().await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(
            (listed[0].user_address.as_str(), listed[0].node.as_str()),
            ("a@x", "n1")
        );
        assert_eq!(listed[0].credential, "app-password:2");
        drop(live);
        registry.flush().await;
        assert!(store.list_sessions().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn shutdown_reaches_every_connection_and_the_drain_waits_for_them() {
        let registry = SessionRegistry::new("n1".into(), None);
        let mut before = registry.admit();
        let web = registry.admit();
        assert_eq!(registry.connections(), 2);
        let waiting = registry.clone();
        let drained = tokio::spawn(async move { waiting.wait_connections_closed().await });
        registry.begin_shutdown();
        registry.begin_shutdown();
        assert_eq!(before.shutdown().await, EndReason::Shutdown);
        // A connection accepted just before the listeners closed hears it too.
        let mut late = registry.admit();
        assert_eq!(late.shutdown().await, EndReason::Shutdown);
        drop((before, late));
        assert!(!drained.is_finished());
        drop(web);
        drained.await.unwrap();
        assert_eq!(registry.connections(), 0);
    }

    #[tokio::test]
    async fn a_session_registered_after_a_change_since_its_login_began_must_recheck() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let registry = SessionRegistry::new("n1".into(), Some(store.clone()));
        let quiet = registry.login_began();
        let calm = registry
            .register(session("a@x", SessionCredential::Primary), quiet)
            .await;
        assert!(!calm.must_recheck, "nothing changed");
        let began = registry.login_began();
        // Between the policy check and the registration, a change commits
        // (here through this process's store: a domain switched).
        store.add_domain("x", "cli").await.unwrap();
        store.set_domain_feature("x", true, "cli").await.unwrap();
        let raced = registry
            .register(session("b@x", SessionCredential::Primary), began)
            .await;
        assert!(raced.must_recheck, "the change may have missed the session");
    }

    #[tokio::test]
    async fn entries_leave_on_drop_and_kills_reach_the_session() {
        let registry = SessionRegistry::new("n1".into(), None);
        let began = registry.login_began();
        let mut a = registry
            .register(session("a@x", SessionCredential::Primary), began)
            .await
            .handle;
        let b = registry
            .register(session("b@x", SessionCredential::AppPassword(4)), began)
            .await
            .handle;
        assert_eq!(registry.len(), 2);
        assert_eq!(
            registry.kill_where(EndReason::AdminKill, |s| s.session.user == "a@x"),
            1
        );
        assert_eq!(a.killed().await, EndReason::AdminKill);
        b.traffic().up.fetch_add(5, Ordering::Relaxed);
        let listed = registry.list();
        let entry = listed.iter().find(|s| s.id == b.id()).unwrap();
        assert_eq!(entry.traffic.totals(), (5, 0));
        assert!(registry.kill(b.id(), EndReason::Policy(Refusal::Revoked)));
        drop(b);
        assert_eq!(registry.list().len(), 1);
        let waiting = registry.clone();
        let waiter = tokio::spawn(async move { waiting.wait_empty().await });
        drop(a);
        waiter.await.unwrap();
        assert!(registry.is_empty());
    }
}
