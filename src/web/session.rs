//! Server-side web sessions: a map keyed by a random id that travels in an
//! HttpOnly, SameSite=Strict cookie. The id is replaced after every login step so
//! an id seen before a login is worthless after it. A half-logged-in session
//! (password right, second step pending) carries only the address; the page
//! handlers let it reach nothing else. What a signed-in user may do is not kept
//! here: the policy decides it again on every request from the stored state
//! (`crate::policy::decide_web_access`), so a domain forced after sign-in binds
//! the session at once.

use crate::clock::unix_now;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::policy::Proof;

/// The cookie's name.
pub const COOKIE: &str = "postern_session";

/// Idle time after which a session is forgotten.
const IDLE: Duration = Duration::from_secs(30 * 60);
/// Idle time for sessions that are not (yet) logged in.
const IDLE_PENDING: Duration = Duration::from_secs(10 * 60);
/// No session lives longer than this, however active.
const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
/// Above this many sessions, expired ones are swept on every new one.
const SWEEP_ABOVE: usize = 1024;
/// Hard cap: beyond it the oldest session is dropped to make room.
const MAX_SESSIONS: usize = 100_000;

/// Who the browser is, as far as postern knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Nobody yet: holds only a CSRF token for the login forms.
    Anonymous,
    /// Primary password right; a TOTP or backup code is due.
    SecondStep { address: String },
    /// Signed in as a mail user (every step the sign-in asked for passed);
    /// `impersonator` is the system administrator acting as this (domain
    /// administrator) user, if any. Whether the user may do everything or only
    /// enroll is derived per request, never stored.
    User {
        address: String,
        impersonator: Option<String>,
    },
    /// Logged in as a system administrator.
    Sysadmin { name: String },
}

impl Auth {
    fn pending(&self) -> bool {
        matches!(self, Auth::Anonymous | Auth::SecondStep { .. })
    }
}

#[derive(Clone, Debug)]
pub struct WebSession {
    pub auth: Auth,
    /// Checked on every state-changing request (form field or `X-CSRF-Token`).
    pub csrf: String,
    /// The last time (Unix seconds) this session proved who its user is, and how:
    /// sensitive actions ask again when it is too old
    /// (`crate::policy::decide_sensitive_action`).
    pub proved: Option<(Proof, i64)>,
    created: Instant,
    last_seen: Instant,
}

impl WebSession {
    fn expired(&self, now: Instant) -> bool {
        let idle = if self.auth.pending() {
            IDLE_PENDING
        } else {
            IDLE
        };
        now.duration_since(self.last_seen) > idle || now.duration_since(self.created) > ABSOLUTE
    }
}

/// 256 random bits, hex.
pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

#[derive(Default)]
pub struct SessionStore {
    map: Mutex<HashMap<String, WebSession>>,
}

impl SessionStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, WebSession>> {
        // A panic elsewhere must not lock every user out: the map stays usable.
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new session with a fresh id and CSRF token.
    pub fn create(&self, auth: Auth) -> (String, WebSession) {
        let now = Instant::now();
        let session = WebSession {
            auth,
            csrf: random_token(),
            proved: None,
            created: now,
            last_seen: now,
        };
        let id = random_token();
        let mut map = self.lock();
        if map.len() > SWEEP_ABOVE {
            map.retain(|_, s| !s.expired(now));
        }
        if map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), session.clone());
        (id, session)
    }

    /// The live session with this id (its idle timer restarted), if any.
    pub fn get(&self, id: &str) -> Option<WebSession> {
        let now = Instant::now();
        let mut map = self.lock();
        let session = map.get_mut(id)?;
        if session.expired(now) {
            map.remove(id);
            return None;
        }
        session.last_seen = now;
        Some(session.clone())
    }

    /// Ends `old` and starts a session with a new id and token for `auth`.
    pub fn rotate(&self, old: &str, auth: Auth) -> (String, WebSession) {
        self.remove(old);
        self.create(auth)
    }

    /// Like [`rotate`](Self::rotate), for a sign-in step that just proved who the
    /// user is.
    pub fn rotate_proved(&self, old: &str, auth: Auth, proof: Proof) -> (String, WebSession) {
        let (id, mut session) = self.rotate(old, auth);
        session.proved = Some((proof, unix_now()));
        if let Some(stored) = self.lock().get_mut(&id) {
            stored.proved = session.proved;
        }
        (id, session)
    }

    /// Records a re-authentication (or a factor just confirmed) in a live session.
    pub fn record_proof(&self, id: &str, proof: Proof) {
        if let Some(session) = self.lock().get_mut(id) {
            session.proved = Some((proof, unix_now()));
        }
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Number of live sessions (tests, metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_forgets_the_old_id_and_changes_the_token() {
        let store = SessionStore::default();
        let (old, first) = store.create(Auth::Anonymous);
        let (new, second) = store.rotate(
            &old,
            Auth::SecondStep {
                address: "a@b.test".into(),
            },
        );
        assert_ne!(old, new);
        assert_ne!(first.csrf, second.csrf);
        assert!(store.get(&old).is_none());
        assert!(store.get(&new).is_some());
    }
}
