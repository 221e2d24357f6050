//! Argon2 verification off the async runtime, bounded, with a short cache.
//!
//! Each verification runs in `spawn_blocking` behind a semaphore so a flood of
//! logins queues instead of starving the runtime or the machine. A verified app
//! password is remembered for [`CACHE_TTL`] by a keyed fingerprint, so a mail
//! client that reconnects every few minutes costs one Argon2 run, not one per
//! connection. The cache only skips the hash: the row is still read from the
//! store on every login, so revocation and expiry take effect at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::app_password::CanonicalAppPassword;
use super::key::InstanceKey;

/// How long a verified app password skips Argon2.
pub const CACHE_TTL: Duration = Duration::from_secs(600);
/// Entries kept at most; past this, expired ones are swept and new ones skipped.
const CACHE_CAPACITY: usize = 100_000;

#[derive(Clone)]
pub struct AppPasswordVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    key: InstanceKey,
    permits: Semaphore,
    cache: Mutex<HashMap<i64, CacheEntry>>,
}

struct CacheEntry {
    fingerprint: [u8; 32],
    stored_hash_tag: u64,
    verified_at: Instant,
}

/// One verification waiting for a permit, counted in the queue-depth gauge until
/// it gets one or is cancelled.
struct Queued;

impl Queued {
    fn enter() -> Self {
        metrics::gauge!(crate::metrics::ARGON2_QUEUE).increment(1);
        Queued
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::ARGON2_QUEUE).decrement(1);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the verification task failed")]
pub struct VerifyError;

impl AppPasswordVerifier {
    pub fn new(key: InstanceKey, parallelism: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                key,
                permits: Semaphore::new(parallelism.max(1)),
                cache: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Whether `password` matches the stored `phc` hash of app password `id`.
    pub async fn verify(
        &self,
        id: i64,
        password: &CanonicalAppPassword,
        phc: &str,
    ) -> Result<bool, VerifyError> {
        let fingerprint = password.fingerprint(&self.inner.key);
        let tag = hash_tag(phc);
        if self.cached(id, &fingerprint, tag) {
            return Ok(true);
        }
        let queued = Queued::enter();
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| VerifyError)?;
        drop(queued);
        let (password, phc_owned) = (password.clone(), phc.to_owned());
        let ok = tokio::task::spawn_blocking(move || password.verify(&phc_owned))
            .await
            .map_err(|_| VerifyError)?;
        if ok {
            self.remember(id, fingerprint, tag);
        }
        Ok(ok)
    }

    /// Verifications waiting for a permit right now (a metric).
    pub fn available_permits(&self) -> usize {
        self.inner.permits.available_permits()
    }

    fn cached(&self, id: i64, fingerprint: &[u8; 32], tag: u64) -> bool {
        let Ok(cache) = self.inner.cache.lock() else {
            return false;
        };
        cache.get(&id).is_some_and(|entry| {
            entry.verified_at.elapsed() < CACHE_TTL
                && entry.stored_hash_tag == tag
                && subtle::ConstantTimeEq::ct_eq(&entry.fingerprint[..], &fingerprint[..]).into()
        })
    }

    fn remember(&self, id: i64, fingerprint: [u8; 32], tag: u64) {
        let Ok(mut cache) = self.inner.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, e| e.verified_at.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_CAPACITY {
                return;
            }
        }
        cache.insert(
            id,
            CacheEntry {
                fingerprint,
                stored_hash_tag: tag,
                verified_at: Instant::now(),
            },
        );
    }
}

/// Ties a cache entry to the stored hash, so a row id reused after a database
/// restore never matches an old entry.
fn hash_tag(phc: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    phc.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::AppPassword;

    #[tokio::test]
    async fn verifies_then_serves_repeats_from_the_cache() {
        let v = AppPasswordVerifier::new(InstanceKey::from_bytes([3; 32]), 1);
        let good = AppPassword::generate().canonical();
        let bad = AppPassword::generate().canonical();
        let phc = good.hash().unwrap();
        assert!(!v.verify(1, &bad, &phc).await.unwrap());
        assert!(!v.cached(1, &bad.fingerprint(&v.inner.key), hash_tag(&phc)));
        assert!(v.verify(1, &good, &phc).await.unwrap());
        assert!(v.cached(1, &good.fingerprint(&v.inner.key), hash_tag(&phc)));
        // A wrong password is never let through by the cache.
        assert!(!v.verify(1, &bad, &phc).await.unwrap());
        // Another stored hash under the same id is not served from the cache.
        assert!(!v.cached(1, &good.fingerprint(&v.inner.key), hash_tag("other")));
    }
}
