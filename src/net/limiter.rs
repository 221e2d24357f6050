//! Connection limits as guards: a permit per connection, released on drop.
//!
//! - At accept: in total, and per client network ([`ClientKey`]): a ceiling
//!   high enough for an office behind one NAT address (default 1,000).
//! - After login: per user and client network (default 20, as Dovecot's
//!   `mail_max_userip_connections`), which is what stops one account, or one
//!   misbehaving device, from holding a node's connections.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub use super::ClientKey;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Which limit refused a connection (the `limit` label of
/// [`crate::metrics::CONNECTIONS_REJECTED`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Total,
    PerClient,
    PerUserClient,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Total => "total",
            Self::PerClient => "per_ip",
            Self::PerUserClient => "per_user_ip",
        }
    }
}

/// Permits counted per key, at most `max` each.
struct Counts<K> {
    held: Mutex<HashMap<K, usize>>,
    max: usize,
}

/// One permit of a [`Counts`]; gives it back on drop.
struct CountPermit<K: Eq + Hash> {
    key: Option<K>,
    counts: Arc<Counts<K>>,
}

impl<K: Eq + Hash + Clone> Counts<K> {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            held: Mutex::default(),
            max: max.max(1),
        })
    }

    fn try_acquire(self: &Arc<Self>, key: K) -> Option<CountPermit<K>> {
        let mut held = self.held.lock().ok()?;
        let count = held.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(CountPermit {
            key: Some(key),
            counts: self.clone(),
        })
    }
}

impl<K: Eq + Hash> Drop for CountPermit<K> {
    fn drop(&mut self) {
        if let (Some(key), Ok(mut held)) = (self.key.take(), self.counts.held.lock())
            && let Some(count) = held.get_mut(&key)
        {
            *count -= 1;
            if *count == 0 {
                held.remove(&key);
            }
        }
    }
}

/// The accept-time limits: in total and per client network.
#[derive(Clone)]
pub struct ConnectionLimiter {
    total: Arc<Semaphore>,
    per_client: Arc<Counts<ClientKey>>,
}

/// Held for the life of a connection.
pub struct ConnectionPermit {
    _total: OwnedSemaphorePermit,
    _client: CountPermit<ClientKey>,
}

impl ConnectionLimiter {
    pub fn new(max_total: usize, max_per_client: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(max_total.max(1))),
            per_client: Counts::new(max_per_client),
        }
    }

    /// A permit, or the limit that is reached.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<ConnectionPermit, Limit> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Limit::Total)?;
        let client = self
            .per_client
            .try_acquire(ClientKey::new(ip))
            .ok_or(Limit::PerClient)?;
        Ok(ConnectionPermit {
            _total: total,
            _client: client,
        })
    }
}

/// The after-login limit: sessions per user and client network, on this node.
#[derive(Clone)]
pub struct UserClientLimiter {
    counts: Arc<Counts<(String, ClientKey)>>,
}

/// Held for the life of a logged-in session.
pub struct UserClientPermit {
    _permit: CountPermit<(String, ClientKey)>,
}

impl UserClientLimiter {
    pub fn new(max: usize) -> Self {
        Self {
            counts: Counts::new(max),
        }
    }

    /// A permit for one more session of `user` (already normalised) from
    /// `ip`, or `None` at the limit.
    pub fn try_acquire(&self, user: &str, ip: IpAddr) -> Option<UserClientPermit> {
        self.counts
            .try_acquire((user.to_owned(), ClientKey::new(ip)))
            .map(|permit| UserClientPermit { _permit: permit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_release_on_drop() {
        let limiter = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = limiter.try_acquire(a).unwrap();
        let _p2 = limiter.try_acquire(a).unwrap();
        assert_eq!(limiter.try_acquire(a).err(), Some(Limit::PerClient));
        let _p3 = limiter.try_acquire(b).unwrap();
        assert_eq!(limiter.try_acquire(b).err(), Some(Limit::Total));
        drop(p1);
        assert!(limiter.try_acquire(a).is_ok());
    }

    #[test]
    fn an_ipv6_slash_64_is_one_client() {
        let limiter = ConnectionLimiter::new(10, 1);
        let _held = limiter.try_acquire("2001:db8::1".parse().unwrap()).unwrap();
        assert_eq!(
            limiter
                .try_acquire("2001:db8::ffff:2".parse().unwrap())
                .err(),
            Some(Limit::PerClient)
        );
        assert!(
            limiter
                .try_acquire("2001:db8:1::1".parse().unwrap())
                .is_ok()
        );
        assert_eq!(
            ClientKey::new("::ffff:192.0.2.9".parse().unwrap()).network(),
            "192.0.2.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn sessions_are_counted_per_user_and_client() {
        let limiter = UserClientLimiter::new(2);
        let office: IpAddr = "192.0.2.1".parse().unwrap();
        let home: IpAddr = "198.51.100.1".parse().unwrap();
        let first = limiter.try_acquire("alice@x", office).unwrap();
        let _second = limiter.try_acquire("alice@x", office).unwrap();
        assert!(limiter.try_acquire("alice@x", office).is_none());
        // Another user behind the same address, and Alice elsewhere, are not held back.
        assert!(limiter.try_acquire("bob@x", office).is_some());
        assert!(limiter.try_acquire("alice@x", home).is_some());
        drop(first);
        assert!(limiter.try_acquire("alice@x", office).is_some());
    }
}
