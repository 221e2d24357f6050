//! In-memory limits on guessing: wrong second-step codes (per session and per
//! user), wrong system-administrator passwords (per name and client network),
//! and how often one client may try to sign in as a system administrator.
//!
//! After [`MAX_FAILURES`] wrong attempts a key is locked for [`LOCK`]. Per node,
//! not shared: a restart or another node starts afresh, which still caps
//! guessing at a few codes a minute. Both maps are `moka` caches bounded in
//! bytes, so a flood of new keys evicts old ones instead of growing memory;
//! what an entry means is decided by its own time stamps.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use moka::sync::Cache;

pub const MAX_FAILURES: u32 = 5;
pub const LOCK: Duration = Duration::from_secs(15 * 60);
/// Memory for the failure counters, in bytes of key.
const ATTEMPTS_BYTES: u64 = 16 << 20;

#[derive(Clone)]
struct Entry {
    failures: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

pub struct Attempts {
    map: Cache<String, Entry>,
}

impl Default for Attempts {
    fn default() -> Self {
        Self {
            map: Cache::builder()
                .max_capacity(ATTEMPTS_BYTES)
                .weigher(|key: &String, _| u32::try_from(key.len() + 64).unwrap_or(u32::MAX))
                .time_to_live(LOCK)
                .build(),
        }
    }
}

impl Attempts {
    /// Whether any of the keys is locked now.
    pub fn locked(&self, keys: &[&str]) -> bool {
        let now = Instant::now();
        keys.iter().any(|key| {
            self.map
                .get(*key)
                .and_then(|e| e.locked_until)
                .is_some_and(|until| until > now)
        })
    }

    /// Counts a wrong attempt against every key.
    pub fn fail(&self, keys: &[&str]) {
        let now = Instant::now();
        for key in keys {
            self.map.entry((*key).to_owned()).and_upsert_with(|old| {
                let mut entry = old
                    .map(|e| e.into_value())
                    .filter(|e| {
                        now.duration_since(e.since) <= LOCK
                            || e.locked_until.is_some_and(|until| until > now)
                    })
                    .unwrap_or(Entry {
                        failures: 0,
                        since: now,
                        locked_until: None,
                    });
                entry.failures = entry.failures.saturating_add(1);
                if entry.failures >= MAX_FAILURES && entry.locked_until.is_none() {
                    entry.locked_until = Some(now + LOCK);
                }
                entry
            });
        }
    }

    /// A right answer clears the counters.
    pub fn succeed(&self, keys: &[&str]) {
        for key in keys {
            self.map.invalidate(*key);
        }
    }
}

/// Sign-in attempts one client network may make per [`RATE_WINDOW`]; more are
/// refused before any work (no store read, no Argon2, no audit row).
pub const RATE_LIMIT: u32 = 20;
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Client networks tracked at most.
const RATE_CLIENTS: u64 = 100_000;

/// A fixed-window counter per client network.
pub struct ClientRate {
    map: Cache<crate::net::ClientKey, (Instant, u32)>,
}

impl Default for ClientRate {
    fn default() -> Self {
        Self {
            map: Cache::builder()
                .max_capacity(RATE_CLIENTS)
                .time_to_live(RATE_WINDOW)
                .build(),
        }
    }
}

impl ClientRate {
    /// Counts an attempt from `ip`; false once the client is over the limit.
    pub fn allow(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let key = crate::net::ClientKey::new(ip);
        let entry = self
            .map
            .entry(key)
            .and_upsert_with(|old| match old.map(|e| e.into_value()) {
                Some((since, count)) if now.duration_since(since) < RATE_WINDOW => {
                    (since, count.saturating_add(1))
                }
                _ => (now, 1),
            });
        entry.into_value().1 <= RATE_LIMIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_wrong_codes_lock_the_user_everywhere() {
        let attempts = Attempts::default();
        for _ in 0..MAX_FAILURES {
            assert!(!attempts.locked(&["s:1", "u:a"]));
            attempts.fail(&["s:1", "u:a"]);
        }
        // A new session of the same user is locked too.
        assert!(attempts.locked(&["s:2", "u:a"]));
        assert!(!attempts.locked(&["s:2", "u:b"]));
        attempts.succeed(&["u:a"]);
        assert!(!attempts.locked(&["s:2", "u:a"]));
    }

    #[test]
    fn a_flood_of_long_keys_stays_within_the_memory_bound() {
        let attempts = Attempts::default();
        let long = "x".repeat(60_000);
        for n in 0..600 {
            attempts.fail(&[&format!("a:{long}{n}")]);
        }
        attempts.map.run_pending_tasks();
        assert!(attempts.map.weighted_size() <= ATTEMPTS_BYTES);
    }

    #[test]
    fn a_client_network_is_limited_per_window() {
        let rate = ClientRate::default();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..RATE_LIMIT {
            assert!(rate.allow(ip));
        }
        // The same /64 shares the limit; another client does not.
        assert!(!rate.allow("2001:db8::2".parse().unwrap()));
        assert!(rate.allow("192.0.2.1".parse().unwrap()));
    }
}
