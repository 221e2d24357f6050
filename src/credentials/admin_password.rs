//! System administrators' passwords: chosen by people, so kept as Argon2id
//! hashes (the one place postern still runs a password-hashing function; app
//! passwords are generated secrets, checked by their keyed lookup).
//!
//! Every hash and verification runs in `spawn_blocking` behind a semaphore
//! (`[limits] argon2_parallelism`), so a flood of sign-in attempts queues
//! instead of starving the runtime. An unknown name is verified against a dummy
//! hash of the same parameters, so it costs what a known one costs. The
//! parameters are Argon2's defaults (Argon2id, 19 MiB, 2 passes), set here only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use tokio::sync::Semaphore;

use crate::secret::Secret;

/// The PHC string of `password` (slow on purpose: call off the async runtime,
/// or through [`AdminPasswords::hash`]).
pub fn hash_blocking(password: &str) -> Result<String, argon2::password_hash::Error> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
}

/// Whether `password` matches the PHC string `phc` (slow on purpose). A
/// malformed stored hash matches nothing.
fn verify_blocking(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// A hash no one's password matches, with the same parameters as real ones.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_blocking("no administrator has this password").unwrap_or_default())
}

#[derive(Debug, thiserror::Error)]
#[error("the Argon2 task failed")]
pub struct Argon2Error;

/// The bounded Argon2 queue for system administrators' passwords.
#[derive(Clone)]
pub struct AdminPasswords {
    inner: Arc<Inner>,
}

struct Inner {
    permits: Semaphore,
    /// Argon2 runs so far (tests count the work per answer).
    runs: AtomicU64,
}

impl AdminPasswords {
    pub fn new(parallelism: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                permits: Semaphore::new(parallelism.max(1)),
                runs: AtomicU64::new(0),
            }),
        }
    }

    /// Whether `password` matches an administrator's stored `phc` hash. `None`
    /// (no such administrator) runs the same verification against the dummy
    /// hash and matches nothing, so an unknown name costs the same work.
    pub async fn verify(
        &self,
        password: &Secret<String>,
        phc: Option<&str>,
    ) -> Result<bool, Argon2Error> {
        let password = password.clone();
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| dummy_hash()).to_owned();
        let matches = self
            .blocking(move || verify_blocking(password.expose(), &phc))
            .await?;
        Ok(known && matches)
    }

    /// The PHC string of a new password, made through the same queue.
    pub async fn hash(&self, password: &Secret<String>) -> Result<String, Argon2Error> {
        let password = password.clone();
        self.blocking(move || hash_blocking(password.expose()).ok())
            .await?
            .ok_or(Argon2Error)
    }

    /// Argon2 runs since start.
    pub fn runs(&self) -> u64 {
        self.inner.runs.load(Ordering::Relaxed)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Argon2Error> {
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| Argon2Error)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.runs.fetch_add(1, Ordering::Relaxed);
            job()
        })
        .await
        .map_err(|_| Argon2Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unknown_administrator_costs_one_argon2_run_like_a_known_one() {
        let queue = AdminPasswords::new(1);
        let right = Secret::from("a long passphrase of mine");
        let phc = queue.hash(&right).await.unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert_eq!(phc.split('$').nth(3), dummy_hash().split('$').nth(3));
        let before = queue.runs();
        assert!(queue.verify(&right, Some(&phc)).await.unwrap());
        assert!(
            !queue
                .verify(&Secret::from("nope"), Some(&phc))
                .await
                .unwrap()
        );
        assert_eq!(queue.runs(), before + 2);
        // No such name: one run as well, and never a match, not even for the
        // dummy's own password.
        assert!(
            !queue
                .verify(&Secret::from("no administrator has this password"), None)
                .await
                .unwrap()
        );
        assert!(!queue.verify(&right, None).await.unwrap());
        assert_eq!(queue.runs(), before + 4);
        assert!(!verify_blocking("x", "garbage"));
    }
}
