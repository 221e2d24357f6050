//! Argon2 verification off the async runtime, bounded, with a short cache.
//!
//! Each verification runs in `spawn_blocking` behind a semaphore so a flood of
//! logins queues instead of starving the runtime or the machine. A verified app
//! password is remembered for [`CACHE_TTL`] by a keyed fingerprint, so a mail
//! client that reconnects every few minutes costs one Argon2 run, not one per
//! connection. The cache only skips the hash; whether the row still exists is the
//! gate's business (its login cache is voided by every revocation, see
//! `crate::gate`).
//!
//! A refusal must not be faster than another refusal: [`AppPasswordVerifier::spend_refusal`]
//! runs one Argon2 verification against a fixed dummy hash, through the same
//! queue, for refusals that did not already cost one (see `Gate`).
//!
//! System administrators' passwords (Argon2id with the same parameters) are
//! hashed and checked through the same queue; an unknown name is checked
//! against the dummy hash, so it costs what a known one costs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

use super::app_password::CanonicalAppPassword;
use super::key::InstanceKey;
use crate::secret::Secret;

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
    /// Argon2 verifications run so far (tests count the work per refusal).
    runs: AtomicU64,
}

/// What one verification found, and whether it cost an Argon2 run (a cache hit
/// does not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    pub matches: bool,
    pub hashed: bool,
}

/// An app password no one holds, hashed once with the same parameters as real
/// ones, so a dummy verification costs what a real one costs.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        CanonicalAppPassword::parse("zzzz-zzzz-zzzz-zzzz")
            .and_then(|p| p.hash().ok())
            .unwrap_or_default()
    })
}

/// The password checked against [`dummy_hash`] (never the right one: the dummy
/// hash is of another password).
fn dummy_password() -> CanonicalAppPassword {
    static DUMMY: OnceLock<Option<CanonicalAppPassword>> = OnceLock::new();
    DUMMY
        .get_or_init(|| CanonicalAppPassword::parse("0000-0000-0000-0000"))
        .clone()
        .unwrap_or_else(|| crate::credentials::AppPassword::generate().canonical())
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
                runs: AtomicU64::new(0),
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
        self.check(id, password, phc).await.map(|v| v.matches)
    }

    /// Like [`Self::verify`], also telling whether Argon2 ran (not a cache hit).
    pub async fn check(
        &self,
        id: i64,
        password: &CanonicalAppPassword,
        phc: &str,
    ) -> Result<Verified, VerifyError> {
        let fingerprint = password.fingerprint(&self.inner.key);
        let tag = hash_tag(phc);
        if self.cached(id, &fingerprint, tag) {
            return Ok(Verified {
                matches: true,
                hashed: false,
            });
        }
        let matches = self.run(password.clone(), Some(phc.to_owned())).await?;
        if matches {
            self.remember(id, fingerprint, tag);
        }
        Ok(Verified {
            matches,
            hashed: true,
        })
    }

    /// One Argon2 verification that matches nothing, through the same queue as a
    /// real one: spent by a refusal that did not verify a stored hash, so every
    /// refusal costs the same work whatever its cause.
    pub async fn spend_refusal(&self) -> Result<(), VerifyError> {
        self.run(dummy_password(), None).await.map(|_| ())
    }

    /// Whether `password` matches a system administrator's stored `phc` hash.
    /// `None` (no such administrator) runs the same verification against the
    /// dummy hash and matches nothing, so an unknown name costs the same work.
    pub async fn verify_sysadmin(
        &self,
        password: &Secret<String>,
        phc: Option<&str>,
    ) -> Result<bool, VerifyError> {
        let password = Secret::from(password.expose().as_str());
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| dummy_hash()).to_owned();
        let matches = self
            .blocking(move || {
                PasswordHash::new(&phc).is_ok_and(|parsed| {
                    Argon2::default()
                        .verify_password(password.expose().as_bytes(), &parsed)
                        .is_ok()
                })
            })
            .await?;
        Ok(known && matches)
    }

    /// The Argon2id PHC string of a system administrator's new password, made
    /// through the same queue.
    pub async fn hash_sysadmin(&self, password: &Secret<String>) -> Result<String, VerifyError> {
        let password = Secret::from(password.expose().as_str());
        self.blocking(move || {
            Argon2::default()
                .hash_password(password.expose().as_bytes())
                .map(|h| h.to_string())
                .ok()
        })
        .await?
        .ok_or(VerifyError)
    }

    /// Runs one Argon2 job in `spawn_blocking` behind the semaphore, counted.
    async fn blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, VerifyError> {
        let queued = Queued::enter();
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| VerifyError)?;
        drop(queued);
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.runs.fetch_add(1, Ordering::Relaxed);
            job()
        })
        .await
        .map_err(|_| VerifyError)
    }

    /// Argon2 verifications run since start (cache hits are not counted).
    pub fn argon2_runs(&self) -> u64 {
        self.inner.runs.load(Ordering::Relaxed)
    }

    /// Verifies in `spawn_blocking` behind the semaphore; `None` is the dummy hash.
    async fn run(
        &self,
        password: CanonicalAppPassword,
        phc: Option<String>,
    ) -> Result<bool, VerifyError> {
        self.blocking(move || {
            let phc = phc.as_deref().unwrap_or_else(|| dummy_hash());
            password.verify(phc)
        })
        .await
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

    #[tokio::test]
    async fn cache_hits_cost_no_argon2_and_the_refusal_dummy_costs_one() {
        let v = AppPasswordVerifier::new(InstanceKey::from_bytes([4; 32]), 1);
        let good = AppPassword::generate().canonical();
        let phc = good.hash().unwrap();
        let first = v.check(7, &good, &phc).await.unwrap();
        assert_eq!((first.matches, first.hashed), (true, true));
        let again = v.check(7, &good, &phc).await.unwrap();
        assert_eq!((again.matches, again.hashed), (true, false));
        assert_eq!(v.argon2_runs(), 1);
        v.spend_refusal().await.unwrap();
        assert_eq!(v.argon2_runs(), 2);
        // The dummy hash is a real Argon2id hash with the same parameters, so the
        // dummy run does the same work as a real verification.
        assert!(dummy_hash().starts_with("$argon2id$"));
        assert_eq!(
            dummy_hash().split('$').nth(3),
            phc.split('$').nth(3),
            "same cost parameters"
        );
        assert!(!dummy_password().verify(dummy_hash()));
    }

    #[tokio::test]
    async fn an_unknown_system_administrator_costs_one_argon2_run_like_a_known_one() {
        let v = AppPasswordVerifier::new(InstanceKey::from_bytes([5; 32]), 1);
        let right = Secret::from("a long passphrase of mine");
        let phc = v.hash_sysadmin(&right).await.unwrap();
        assert_eq!(phc.split('$').nth(3), dummy_hash().split('$').nth(3));
        let before = v.argon2_runs();
        assert!(v.verify_sysadmin(&right, Some(&phc)).await.unwrap());
        assert!(
            !v.verify_sysadmin(&Secret::from("nope"), Some(&phc))
                .await
                .unwrap()
        );
        assert_eq!(v.argon2_runs(), before + 2);
        // No such name: one run as well, and never a match, not even for the
        // dummy's own password.
        assert!(
            !v.verify_sysadmin(&Secret::from("zzzzzzzzzzzzzzzz"), None)
                .await
                .unwrap()
        );
        assert!(!v.verify_sysadmin(&right, None).await.unwrap());
        assert_eq!(v.argon2_runs(), before + 4);
    }
}
