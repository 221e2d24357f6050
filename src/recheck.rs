//! Re-checks live sessions whenever the stored state changes, on every node.
//!
//! Every change that can make a credential unacceptable appends a row to the
//! event log (in the same transaction as the change, whichever process made it:
//! `serve`, the web UI or `postern admin`). Each node tails that log — PostgreSQL:
//! `LISTEN` plus a catch-up read; SQLite: a short poll — and re-runs the one
//! policy function ([`crate::gate::Gate::recheck`]) on the sessions the event
//! concerns. Time-based changes (an app password expiring, a grace period ending)
//! have no event: each session carries its `allowed_until`, swept every second.

use crate::address::fold;
use crate::clock::unix_now;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::gate::{Gate, Recheck, SessionCredential};
use crate::metrics as m;
use crate::penalty::Penalties;
use crate::registry::{EndReason, SessionInfo, SessionRegistry};
use crate::store::{EventKind, EventRecord, NOTIFY_CHANNEL, Store};

/// How often the event log is read (on PostgreSQL also on each notification).
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Events read per catch-up query.
const BATCH: i64 = 500;
/// How often each node deletes events no node needs
/// ([`Store::prune_events`](crate::store::Store::prune_events)).
const PRUNE_EVERY: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct Rechecker {
    gate: Gate,
    registry: SessionRegistry,
    penalties: Arc<Penalties>,
}

impl Rechecker {
    pub fn new(gate: Gate, registry: SessionRegistry, penalties: Arc<Penalties>) -> Self {
        Self {
            gate,
            registry,
            penalties,
        }
    }

    fn store(&self) -> &Store {
        self.gate.store()
    }

    /// Applies one event to the live sessions it concerns.
    pub async fn handle_event(&self, event: &EventRecord) {
        let user = event.user_address.as_deref().map(fold);
        let same_user =
            |s: &SessionInfo| user.as_deref().is_some_and(|u| fold(&s.session.user) == *u);
        let concerned: Vec<SessionInfo> = match event.kind {
            EventKind::ClientFailed => {
                if let Some(client) = &event.client {
                    self.penalties.note_client(client);
                }
                return;
            }
            EventKind::SessionKill => {
                let killed = self.registry.kill_where(EndReason::AdminKill, same_user);
                if killed > 0 {
                    info!(
                        user = user.as_deref().unwrap_or(""),
                        sessions = killed,
                        "sessions killed by an administrator"
                    );
                }
                return;
            }
            EventKind::DomainFeature | EventKind::DomainStatus => {
                let domain = event.domain.as_deref().unwrap_or("").to_ascii_lowercase();
                self.registry
                    .list()
                    .into_iter()
                    .filter(|s| s.domain() == domain)
                    .collect()
            }
            EventKind::UserEnrolled
            | EventKind::UserReset
            | EventKind::UserDisabled
            | EventKind::UserEnabled => {
                if matches!(event.kind, EventKind::UserEnabled | EventKind::UserReset)
                    && let Some(user) = &user
                {
                    // An administrator's word clears a guessing block too.
                    self.penalties.clear_account(user);
                }
                self.registry.list().into_iter().filter(same_user).collect()
            }
            EventKind::AppPasswordRevoked => {
                let id = event.app_password_id;
                self.registry
                    .list()
                    .into_iter()
                    .filter(|s| {
                        matches!(s.session.credential, SessionCredential::AppPassword(a) if Some(a) == id)
                    })
                    .collect()
            }
        };
        self.recheck(concerned).await;
    }

    /// Re-runs the policy on these sessions and ends those no longer allowed.
    pub async fn recheck(&self, sessions: Vec<SessionInfo>) {
        let now = unix_now();
        // Many sessions share a user, protocol and credential (a phone and a
        // laptop, or a thousand IDLE connections): ask the store once for each.
        let mut decided: std::collections::HashMap<_, Result<Recheck, String>> =
            std::collections::HashMap::new();
        let mut failed = 0u64;
        let mut first_error = None;
        for info in sessions {
            let s = &info.session;
            let key = (fold(&s.user), s.protocol, s.credential);
            let outcome = match decided.get(&key) {
                Some(outcome) => outcome.clone(),
                None => {
                    let outcome = self
                        .gate
                        .recheck(&s.user, s.protocol, s.credential, now)
                        .await
                        .map_err(|err| err.to_string());
                    decided.insert(key, outcome.clone());
                    outcome
                }
            };
            match outcome {
                Ok(Recheck::Drop(reason)) => {
                    if self.registry.kill(info.id, EndReason::Policy(reason)) {
                        info!(
                            protocol = %s.protocol,
                            user = %s.user,
                            client = %s.client.ip(),
                            credential = %s.credential,
                            reason = reason.as_str(),
                            "session no longer allowed; dropping"
                        );
                    }
                }
                Ok(Recheck::Keep { allowed_until }) => {
                    self.registry.set_allowed_until(info.id, allowed_until)
                }
                // Live sessions survive a database outage, but an unanswered
                // re-check is no answer: the session keeps its deadline, brought
                // forward to now, so the next sweep (within a second) asks
                // again until the store answers.
                Err(err) => {
                    let retry_at = s.allowed_until.map_or(now, |t| t.min(now));
                    self.registry.set_allowed_until(info.id, Some(retry_at));
                    failed += 1;
                    first_error.get_or_insert(err);
                }
            }
        }
        if let Some(err) = first_error {
            metrics::counter!(m::RECHECK_FAILURES).increment(failed);
            warn!(sessions = failed, error = %err, "re-check failed; sessions kept, retrying");
        }
    }

    /// Re-checks sessions whose `allowed_until` has passed.
    pub async fn sweep_deadlines(&self) {
        let now = unix_now();
        let due: Vec<SessionInfo> = self
            .registry
            .list()
            .into_iter()
            .filter(|s| s.session.allowed_until.is_some_and(|t| t <= now))
            .collect();
        if !due.is_empty() {
            self.recheck(due).await;
        }
    }

    /// Reads and applies every event after `last`; returns the new position.
    async fn catch_up(&self, mut last: i64) -> i64 {
        let started = std::time::Instant::now();
        loop {
            match self.store().events_after(last, BATCH).await {
                Ok(events) => {
                    let done = (events.len() as i64) < BATCH;
                    for event in &events {
                        debug!(id = event.id, kind = %event.kind, "event");
                        metrics::gauge!(m::EVENT_LAG_SECONDS)
                            .set((unix_now() - event.at).max(0) as f64);
                        if event.kind == EventKind::ClientFailed {
                            // Changes no login's outcome but the client's delay.
                            if let Some(client) = &event.client {
                                self.penalties.note_client(client);
                            }
                            last = event.id;
                            continue;
                        }
                        // Move the change counter before the event's snapshot
                        // of the sessions: remembered logins stop counting, and
                        // a login that registers after the snapshot re-checks
                        // itself (see `crate::epoch`).
                        self.store().epoch().advance();
                        self.handle_event(event).await;
                        last = event.id;
                    }
                    // Every row counts, a client's failure too: `postern admin`
                    // and the suites wait on this position.
                    metrics::gauge!(m::EVENT_LOG_POSITION).set(last as f64);
                    if done {
                        self.gate.event_log_read(started);
                        return last;
                    }
                }
                Err(err) => {
                    self.gate.event_log_unreadable();
                    warn!(error = %err, "cannot read the event log");
                    return last;
                }
            }
        }
    }

    /// Tails the event log until the task is dropped. `postgres_url` enables
    /// LISTEN/NOTIFY; without it the log is polled.
    pub async fn run(self, postgres_url: Option<String>) {
        let mut last = match self.store().last_event_id().await {
            Ok(id) => id,
            Err(err) => {
                warn!(error = %err, "cannot read the event log position; starting from 0");
                0
            }
        };
        metrics::gauge!(m::EVENT_LOG_POSITION).set(last as f64);
        // Failures counted before that position are not read from the log:
        // learn of them from the store (again, after the start's read).
        if let Err(err) = self.penalties.load().await {
            warn!(error = %err, "cannot read the clients with recent login failures");
        }
        let mut listener = match postgres_url {
            Some(url) => match sqlx::postgres::PgListener::connect(&url).await {
                Ok(mut listener) => match listener.listen(NOTIFY_CHANNEL).await {
                    Ok(()) => Some(listener),
                    Err(err) => {
                        warn!(error = %err, "LISTEN failed; polling the event log instead");
                        None
                    }
                },
                Err(err) => {
                    warn!(error = %err, "cannot open a LISTEN connection; polling the event log instead");
                    None
                }
            },
            None => None,
        };
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut since_sweep = tokio::time::Instant::now();
        let mut since_prune = since_sweep;
        loop {
            last = self.catch_up(last).await;
            if since_sweep.elapsed() >= Duration::from_secs(1) {
                self.sweep_deadlines().await;
                since_sweep = tokio::time::Instant::now();
            }
            if since_prune.elapsed() >= PRUNE_EVERY {
                match self.store().prune_events(unix_now()).await {
                    Ok(0) => {}
                    Ok(pruned) => debug!(pruned, "old events pruned"),
                    Err(err) => warn!(error = %err, "cannot prune the event log"),
                }
                since_prune = tokio::time::Instant::now();
            }
            match listener.as_mut() {
                // A notification, or the tick (for the deadline sweep and in case
                // a notification was lost while reconnecting).
                Some(listener) => {
                    tokio::select! {
                        received = listener.try_recv() => {
                            if let Err(err) = received {
                                warn!(error = %err, "LISTEN connection lost; reconnecting");
                            }
                        }
                        // Also keeps the gate's remembered logins usable (they
                        // count only while the log was read recently).
                        _ = tokio::time::sleep(POLL_INTERVAL) => {}
                    }
                }
                None => {
                    tick.tick().await;
                }
            }
        }
    }
}
