//! Limits on guessing, kept in the store so every node counts towards one
//! limit and a restart forgets nothing: wrong second-step codes (per session
//! and per user), wrong system-administrator passwords (per name and client
//! network), and how often one client may try to sign in as a system
//! administrator.
//!
//! After [`MAX_FAILURES`] wrong attempts a key is locked for [`LOCK`]. Every
//! attempt is one exact store write (`attempt_counters`, `client_rates`); keys
//! are stored as hashes (a session key names a sign-in session), so a long key
//! costs no more than a short one.

use std::net::IpAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::clock::unix_now;
use crate::net::ClientKey;
use crate::store::{Store, StoreError};

pub const MAX_FAILURES: u32 = 5;
pub const LOCK: Duration = Duration::from_secs(15 * 60);

fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn key_hashes(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|key| key_hash(key)).collect()
}

#[derive(Clone)]
pub struct Attempts {
    store: Store,
}

impl Attempts {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Whether any of the keys is locked now.
    pub async fn locked(&self, keys: &[&str]) -> Result<bool, StoreError> {
        self.store
            .attempts_locked(&key_hashes(keys), unix_now())
            .await
    }

    /// Counts a wrong attempt against every key.
    pub async fn fail(&self, keys: &[&str]) -> Result<(), StoreError> {
        let now = unix_now();
        for key in keys {
            self.store
                .attempt_failed(
                    &key_hash(key),
                    now,
                    LOCK.as_secs() as i64,
                    i64::from(MAX_FAILURES),
                )
                .await?;
        }
        Ok(())
    }

    /// A right answer clears the counters.
    pub async fn succeed(&self, keys: &[&str]) -> Result<(), StoreError> {
        self.store.attempts_cleared(&key_hashes(keys)).await
    }
}

/// Sign-in attempts one client network may make per [`RATE_WINDOW`]; more are
/// refused before any other work (no Argon2, no audit row).
pub const RATE_LIMIT: u32 = 20;
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// A fixed-window counter per client network.
#[derive(Clone)]
pub struct ClientRate {
    store: Store,
}

impl ClientRate {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Counts an attempt from `ip`; false once the client is over the limit.
    pub async fn allow(&self, ip: IpAddr) -> Result<bool, StoreError> {
        let client = ClientKey::new(ip).network().to_string();
        let count = self
            .store
            .client_rate_hit(&client, unix_now(), RATE_WINDOW.as_secs() as i64)
            .await?;
        Ok(count <= i64::from(RATE_LIMIT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &std::path::Path) -> Store {
        let url = format!("sqlite://{}", dir.join("postern.db").display());
        Store::connect(&url).await.unwrap()
    }

    #[tokio::test]
    async fn five_wrong_codes_lock_the_user_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let attempts = Attempts::new(store(dir.path()).await);
        for _ in 0..MAX_FAILURES {
            assert!(!attempts.locked(&["s:1", "u:a"]).await.unwrap());
            attempts.fail(&["s:1", "u:a"]).await.unwrap();
        }
        // A new session of the same user is locked too.
        assert!(attempts.locked(&["s:2", "u:a"]).await.unwrap());
        assert!(!attempts.locked(&["s:2", "u:b"]).await.unwrap());
        attempts.succeed(&["u:a"]).await.unwrap();
        assert!(!attempts.locked(&["s:2", "u:a"]).await.unwrap());
    }

    #[tokio::test]
    async fn a_lock_and_a_half_count_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let before = Attempts::new(store(dir.path()).await);
        for _ in 0..MAX_FAILURES {
            before.fail(&["u:a"]).await.unwrap();
        }
        for _ in 0..MAX_FAILURES - 1 {
            before.fail(&["u:b"]).await.unwrap();
        }
        drop(before);
        let after = Attempts::new(store(dir.path()).await);
        assert!(after.locked(&["u:a"]).await.unwrap());
        assert!(!after.locked(&["u:b"]).await.unwrap());
        // b's earlier wrong codes still count: one more locks it.
        after.fail(&["u:b"]).await.unwrap();
        assert!(after.locked(&["u:b"]).await.unwrap());
    }

    #[tokio::test]
    async fn a_long_key_is_stored_as_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let attempts = Attempts::new(store(dir.path()).await);
        let long = format!("s:{}", "x".repeat(60_000));
        for _ in 0..MAX_FAILURES {
            attempts.fail(&[&long]).await.unwrap();
        }
        assert!(attempts.locked(&[&long]).await.unwrap());
        assert_eq!(key_hash(&long).len(), 64);
    }

    #[tokio::test]
    async fn a_client_network_is_limited_per_window_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let rate = ClientRate::new(store(dir.path()).await);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..RATE_LIMIT {
            assert!(rate.allow(ip).await.unwrap());
        }
        // The same /64 shares the limit; another client does not.
        assert!(!rate.allow("2001:db8::2".parse().unwrap()).await.unwrap());
        assert!(rate.allow("192.0.2.1".parse().unwrap()).await.unwrap());
        drop(rate);
        let after = ClientRate::new(store(dir.path()).await);
        assert!(!after.allow(ip).await.unwrap());
    }
}
