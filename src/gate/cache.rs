//! What the store said for a recent successful login, so that a device opening
//! several connections, or reconnecting, does not cost a store round trip each
//! time (two on SQLite: the user and domain, then the app-password row).
//!
//! Correctness does not rest on the entries' age but on the event log, which
//! every change that can refuse a credential writes to (revocation, user
//! disabled or reset, enrollment, domain feature or status):
//!
//! - an entry is used only while the node's change counter ([`ChangeEpoch`])
//!   is where it was before the entry's store read: a change committed by this
//!   process, or one from another process or node applied by the event-log
//!   tail, voids every entry before the tail re-checks live sessions; a login
//!   that used an entry just before that is registered after the counter moved
//!   and re-checks itself against the store;
//! - entries are used only while the event log was read successfully within
//!   [`FRESHNESS`](crate::epoch::FRESHNESS), so a lost database fails logins
//!   closed within that time and a stalled tail cannot keep stale entries alive;
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::sync::Cache;

use crate::epoch::{ChangeEpoch, Epoch};
use crate::store::{Account, AppPasswordRecord, normalize_address};
/// Entries (credentials, all users together) kept at most; past this the
/// least useful users' entries go first.
const CAPACITY: u64 = 50_000;

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

#[derive(Clone)]
struct Entry {
    context: LoginContext,
    /// Where the change counter was when the store read began.
    read_at: Epoch,
    filled: Instant,
}

/// A user's entries, by credential, so that they all go at once. Shared
/// behind an `Arc`: a lookup (every warm login) clones a pointer, not the map.
type Credentials = Arc<HashMap<Option<String>, Entry>>;

pub struct LoginCache {
    /// By address (bounded by entry count, each user's entries live at most
    /// `ttl` from their last write).
    entries: Cache<String, Credentials>,
    /// How long an entry lives at most, whatever the event log says (zero:
    /// nothing is remembered).
    ttl: Duration,
    epoch: ChangeEpoch,
}

impl LoginCache {
    /// Entries count while `epoch` says nothing changed since their read.
    pub fn new(ttl: Duration, epoch: ChangeEpoch) -> Self {
        let weigher = |_: &String, credentials: &Credentials| {
            u32::try_from(credentials.len()).unwrap_or(u32::MAX)
        };
        let mut entries = Cache::builder().max_capacity(CAPACITY).weigher(weigher);
        if !ttl.is_zero() {
            entries = entries.time_to_live(ttl);
        }
        Self {
            entries: entries.build(),
            ttl,
            epoch,
        }
    }

    /// The context for `key`, if an entry is still valid
    /// ([`ChangeEpoch::remembered`]) and younger than the lifetime.
    pub fn get(&self, key: &CacheKey) -> Option<LoginContext> {
        let credentials = self.entries.get(&key.address)?;
        let entry = credentials.get(&key.lookup)?;
        (self.epoch.remembered(entry.read_at) && entry.filled.elapsed() < self.ttl)
            .then(|| entry.context.clone())
    }

    /// Remembers a context from a store read that began at `read_at`.
    pub fn put(&self, key: CacheKey, context: LoginContext, read_at: Epoch) {
        if self.ttl.is_zero() {
            return;
        }
        let entry = Entry {
            context,
            read_at,
            filled: Instant::now(),
        };
        let ttl = self.ttl;
        self.entries
            .entry(key.address)
            .and_compute_with(|credentials| {
                let mut credentials: HashMap<_, _> = credentials
                    .map(|c| {
                        c.into_value()
                            .iter()
                            .filter(|(_, e)| e.filled.elapsed() < ttl)
                            .map(|(k, e)| (k.clone(), e.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                credentials.insert(key.lookup, entry);
                Op::Put(Arc::new(credentials))
            });
    }

    /// Drops every entry of `address` (a failed login counted), written in any
    /// case: entries are keyed by the address as [`normalize_address`] gives it.
    pub fn forget_user(&self, address: &str) {
        let address = normalize_address(address).unwrap_or_else(|_| address.to_owned());
        self.entries.invalidate(&address);
    }

    /// Drops every entry (they no longer count: the event log is unreadable).
    pub fn clear(&self) {
        self.entries.invalidate_all();
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
                    trusted_browsers: true,
                    notices_off: Default::default(),
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

    /// A cache whose event log was just read.
    fn cache(ttl: Duration) -> (LoginCache, ChangeEpoch) {
        let epoch = ChangeEpoch::default();
        epoch.log_read(Instant::now());
        (LoginCache::new(ttl, epoch.clone()), epoch)
    }

    fn key(address: &str) -> CacheKey {
        CacheKey {
            address: address.into(),
            lookup: Some("ab12".into()),
        }
    }

    #[test]
    fn an_entry_counts_only_while_the_log_was_read_recently_and_nothing_changed() {
        let epoch = ChangeEpoch::default();
        let cache = LoginCache::new(Duration::from_secs(30), epoch.clone());
        cache.put(key("alice@example.test"), context(), epoch.now());
        assert!(
            cache.get(&key("alice@example.test")).is_none(),
            "log never read"
        );

        epoch.log_read(Instant::now());
        let hit = cache.get(&key("alice@example.test")).expect("hit");
        assert_eq!(hit.account.user.map(|u| u.id), Some(7));
        assert!(
            cache.get(&key("bob@example.test")).is_none(),
            "another user"
        );
        let other_lookup = CacheKey {
            lookup: None,
            ..key("alice@example.test")
        };
        assert!(cache.get(&other_lookup).is_none(), "another credential");
        epoch.advance();
        assert!(
            cache.get(&key("alice@example.test")).is_none(),
            "a change since"
        );

        cache.put(key("alice@example.test"), context(), epoch.now());
        assert!(cache.get(&key("alice@example.test")).is_some());
        epoch.log_unreadable();
        epoch.log_read(Instant::now());
        assert!(
            cache.get(&key("alice@example.test")).is_none(),
            "the log was unreadable since"
        );
    }

    #[test]
    fn a_zero_lifetime_remembers_nothing() {
        let (cache, epoch) = cache(Duration::ZERO);
        cache.put(key("alice@example.test"), context(), epoch.now());
        assert!(cache.get(&key("alice@example.test")).is_none());
    }

    #[test]
    fn forgetting_a_user_drops_all_their_entries_only() {
        let (cache, epoch) = cache(Duration::from_secs(30));
        cache.put(key("alice@example.test"), context(), epoch.now());
        cache.put(
            CacheKey {
                lookup: None,
                ..key("alice@example.test")
            },
            context(),
            epoch.now(),
        );
        cache.put(key("bob@example.test"), context(), epoch.now());
        cache.forget_user("Alice@Example.test");
        assert!(cache.get(&key("alice@example.test")).is_none());
        assert!(cache.get(&key("bob@example.test")).is_some());
    }

    #[test]
    fn forgetting_finds_an_address_beyond_ascii_in_any_case() {
        let (cache, epoch) = cache(Duration::from_secs(30));
        cache.put(key("jürgen@example.test"), context(), epoch.now());
        cache.forget_user(" JÜRGEN@Example.test");
        assert!(cache.get(&key("jürgen@example.test")).is_none());
    }
}
