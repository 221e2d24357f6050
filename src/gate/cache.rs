//! What the store said for a recent successful login, so that a device opening
//! several connections, or reconnecting, does not cost a store round trip each
//! time (two on SQLite: the user and domain, then the app-password row).
//!
//! Correctness does not rest on the entries' age but on the event log, which
//! every change that can refuse a credential writes to (revocation, user
//! disabled or reset, enrollment, domain feature or status):
//!
//! - an entry is used only while [`Store::changes_seen`] is what it was before
//!   the entry's store read: a change committed by this process, or one from
//!   another process or node applied by the event-log tail, voids every entry
//!   before the tail re-checks live sessions; a login that used an entry just
//!   before that is registered after the registry's generation moved and
//!   re-checks itself against the store;
//! - entries are used only while the event log was read successfully within
//!   [`FRESHNESS`], so a lost database fails logins closed within that time and
//!   a stalled tail cannot keep stale entries alive;
//! - time-based rules (expiry, grace period) are decided per login with the
//!   current time from the cached rows, as from fresh ones.
//!
//! So a change reaches new logins no later than it reaches live sessions: at
//! once through this process, within one event-log poll from elsewhere (DESIGN:
//! within one second). Only logins that ended in [`super::Verdict::Proceed`]
//! are remembered; refusals always read the store. Failed logins counted on this
//! node forget the user's entries, so the account block is never skipped here;
//! a block counted on another node reaches this node's cached devices when
//! their entries end (`[limits] login_cache_secs`, 30 s by default; 0 turns
//! the cache off).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[cfg(doc)]
use crate::store::Store;
use crate::store::{Account, AppPasswordRecord, normalize_address};

/// How recent the last successful event-log read must be for entries to count
/// (the tail reads every 200 ms).
pub const FRESHNESS: Duration = Duration::from_millis(600);
/// Entries kept at most; past this the cache starts again empty.
const CAPACITY: usize = 50_000;

/// The store's answer for one login.
#[derive(Clone, Debug)]
pub struct LoginContext {
    pub account: Account,
    /// The app-password row the presented password's lookup key found.
    pub app_password: Option<AppPasswordRecord>,
}

/// An address and, for an app password, its keyed lookup hash (never the
/// password).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub address: String,
    pub lookup: Option<String>,
}

struct Entry {
    context: LoginContext,
    changes: u64,
    filled: Instant,
}

pub struct LoginCache {
    inner: Mutex<Inner>,
    /// How long an entry lives at most, whatever the event log says (zero:
    /// nothing is remembered).
    ttl: Duration,
}

#[derive(Default)]
struct Inner {
    /// By address, then by credential: a user's entries go at once.
    entries: HashMap<String, HashMap<Option<String>, Entry>>,
    /// Entries in `entries`, all users together.
    count: usize,
    /// When the last successful event-log read began.
    confirmed: Option<Instant>,
}

impl Inner {
    fn fresh(&self) -> bool {
        self.confirmed
            .is_some_and(|confirmed| confirmed.elapsed() < FRESHNESS)
    }
}

impl LoginCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            inner: Mutex::default(),
            ttl,
        }
    }

    /// The context for `key`, if an entry is still valid now that
    /// [`Store::changes_seen`] is `changes`.
    pub fn get(&self, key: &CacheKey, changes: u64) -> Option<LoginContext> {
        let inner = self.inner.lock().ok()?;
        if !inner.fresh() {
            return None;
        }
        let entry = inner.entries.get(&key.address)?.get(&key.lookup)?;
        (entry.changes == changes && entry.filled.elapsed() < self.ttl)
            .then(|| entry.context.clone())
    }

    /// Remembers a context read from the store after [`Store::changes_seen`]
    /// returned `changes`.
    pub fn put(&self, key: CacheKey, context: LoginContext, changes: u64) {
        if self.ttl.is_zero() {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.count >= CAPACITY {
            inner.entries.clear();
            inner.count = 0;
        }
        let entry = Entry {
            context,
            changes,
            filled: Instant::now(),
        };
        let replaced = inner
            .entries
            .entry(key.address)
            .or_default()
            .insert(key.lookup, entry);
        if replaced.is_none() {
            inner.count += 1;
        }
    }

    /// Drops every entry of `address` (a failed login counted), written in any
    /// case: entries are keyed by the address as [`normalize_address`] gives it.
    pub fn forget_user(&self, address: &str) {
        let address = normalize_address(address).unwrap_or_else(|_| address.to_owned());
        if let Ok(mut inner) = self.inner.lock()
            && let Some(gone) = inner.entries.remove(&address)
        {
            inner.count -= gone.len();
        }
    }

    /// The event log was read in full by a read that began at `started`.
    pub fn confirm(&self, started: Instant) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.confirmed = Some(inner.confirmed.map_or(started, |c| c.max(started)));
        }
    }

    /// The event log could not be read: nothing cached counts until it can.
    pub fn unconfirm(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.confirmed = None;
            inner.entries.clear();
            inner.count = 0;
        }
    }

    /// Whether entries count: the event log was read within [`FRESHNESS`].
    pub fn fresh(&self) -> bool {
        self.inner.lock().is_ok_and(|inner| inner.fresh())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DomainStatus;
    use crate::store::{DomainRecord, UserRecord};

    fn context() -> LoginContext {
        LoginContext {
            account: Account {
                domain: Some(DomainRecord {
                    name: "example.test".into(),
                    feature: true,
                    status: DomainStatus::Enabled,
                    grace_until: None,
                    created_at: 0,
                }),
                user: Some(UserRecord {
                    id: 7,
                    address: "alice@example.test".into(),
                    domain: "example.test".into(),
                    disabled: false,
                    domain_admin: false,
                    enrolled: false,
                    created_at: 0,
                }),
                failures: Default::default(),
            },
            app_password: None,
        }
    }

    fn key(address: &str) -> CacheKey {
        CacheKey {
            address: address.into(),
            lookup: Some("ab12".into()),
        }
    }

    #[test]
    fn an_entry_counts_only_while_the_log_was_read_recently_and_nothing_changed() {
        let cache = LoginCache::new(Duration::from_secs(30));
        cache.put(key("alice@example.test"), context(), 3);
        assert!(
            cache.get(&key("alice@example.test"), 3).is_none(),
            "log never read"
        );

        cache.confirm(Instant::now());
        let hit = cache.get(&key("alice@example.test"), 3).expect("hit");
        assert_eq!(hit.account.user.map(|u| u.id), Some(7));
        assert!(
            cache.get(&key("alice@example.test"), 4).is_none(),
            "a change since"
        );
        assert!(
            cache.get(&key("bob@example.test"), 3).is_none(),
            "another user"
        );
        let other_lookup = CacheKey {
            lookup: None,
            ..key("alice@example.test")
        };
        assert!(cache.get(&other_lookup, 3).is_none(), "another credential");

        cache.unconfirm();
        assert!(
            cache.get(&key("alice@example.test"), 3).is_none(),
            "log unreadable"
        );
    }

    #[test]
    fn a_read_older_than_the_freshness_window_does_not_count() {
        let cache = LoginCache::new(Duration::from_secs(30));
        cache.put(key("alice@example.test"), context(), 0);
        let Some(long_ago) = Instant::now().checked_sub(FRESHNESS * 2) else {
            return; // a clock this close to its origin cannot hold the case
        };
        cache.confirm(long_ago);
        assert!(!cache.fresh());
        assert!(cache.get(&key("alice@example.test"), 0).is_none());
        cache.confirm(Instant::now());
        assert!(cache.get(&key("alice@example.test"), 0).is_some());
    }

    #[test]
    fn a_zero_lifetime_remembers_nothing() {
        let cache = LoginCache::new(Duration::ZERO);
        cache.confirm(Instant::now());
        cache.put(key("alice@example.test"), context(), 0);
        assert!(cache.get(&key("alice@example.test"), 0).is_none());
    }

    #[test]
    fn forgetting_a_user_drops_all_their_entries_only() {
        let cache = LoginCache::new(Duration::from_secs(30));
        cache.confirm(Instant::now());
        cache.put(key("alice@example.test"), context(), 0);
        cache.put(
            CacheKey {
                lookup: None,
                ..key("alice@example.test")
            },
            context(),
            0,
        );
        cache.put(key("bob@example.test"), context(), 0);
        cache.forget_user("Alice@Example.test");
        assert!(cache.get(&key("alice@example.test"), 0).is_none());
        assert!(cache.get(&key("bob@example.test"), 0).is_some());
    }

    #[test]
    fn forgetting_finds_an_address_beyond_ascii_in_any_case() {
        let cache = LoginCache::new(Duration::from_secs(30));
        cache.confirm(Instant::now());
        cache.put(key("jürgen@example.test"), context(), 0);
        cache.forget_user(" JÜRGEN@Example.test");
        assert!(cache.get(&key("jürgen@example.test"), 0).is_none());
    }
}
