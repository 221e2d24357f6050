//! Live authenticated sessions of this node, each with a kill handle.
//!
//! A session registers after its upstream login and gets a [`SessionHandle`];
//! dropping the handle (however the session ends) removes the entry. Killing a
//! session and shutting down use the same path: the entry's watch channel
//! carries the reason, and the session's relay loop says goodbye and closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::gate::SessionCredential;
use crate::policy::Protocol;

/// What the registry knows about a session.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub id: u64,
    pub user: String,
    pub protocol: Protocol,
    pub credential: SessionCredential,
    pub client: SocketAddr,
    /// Unix seconds.
    pub started_at: i64,
}

struct Entry {
    info: SessionInfo,
    kill: watch::Sender<Option<String>>,
}

#[derive(Clone, Default)]
pub struct SessionRegistry {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: AtomicU64,
    sessions: Mutex<HashMap<u64, Entry>>,
}

/// Held by a live session; removes its entry on drop.
pub struct SessionHandle {
    id: u64,
    registry: SessionRegistry,
    killed: watch::Receiver<Option<String>>,
}

impl SessionRegistry {
    pub fn register(
        &self,
        user: String,
        protocol: Protocol,
        credential: SessionCredential,
        client: SocketAddr,
        started_at: i64,
    ) -> SessionHandle {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (kill, killed) = watch::channel(None);
        let info = SessionInfo {
            id,
            user,
            protocol,
            credential,
            client,
            started_at,
        };
        if let Ok(mut sessions) = self.inner.sessions.lock() {
            sessions.insert(id, Entry { info, kill });
        }
        SessionHandle {
            id,
            registry: self.clone(),
            killed,
        }
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

    /// Ends every session matching `filter` with `reason`; returns how many.
    pub fn kill_where(&self, reason: &str, filter: impl Fn(&SessionInfo) -> bool) -> usize {
        let Ok(sessions) = self.inner.sessions.lock() else {
            return 0;
        };
        let mut count = 0;
        for entry in sessions.values().filter(|e| filter(&e.info)) {
            let _ = entry.kill.send(Some(reason.to_owned()));
            count += 1;
        }
        count
    }
}

impl SessionHandle {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Resolves with the reason once the session is to be ended.
    pub async fn killed(&mut self) -> String {
        loop {
            if let Some(reason) = self.killed.borrow_and_update().clone() {
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
        if let Ok(mut sessions) = self.registry.inner.sessions.lock() {
            sessions.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_leave_on_drop_and_kills_reach_the_session() {
        let registry = SessionRegistry::default();
        let client = "127.0.0.1:1000".parse().unwrap();
        let mut a = registry.register(
            "a@x".into(),
            Protocol::Imap,
            SessionCredential::Primary,
            client,
            0,
        );
        let b = registry.register(
            "b@x".into(),
            Protocol::Pop3,
            SessionCredential::AppPassword(4),
            client,
            0,
        );
        assert_eq!(registry.len(), 2);
        assert_eq!(registry.kill_where("forced", |s| s.user == "a@x"), 1);
        assert_eq!(a.killed().await, "forced");
        drop(b);
        assert_eq!(registry.list().len(), 1);
        drop(a);
        assert!(registry.is_empty());
    }
}
