//! Connection limits as guards: a permit per connection, released on drop, both
//! in total and per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone)]
pub struct ConnectionLimiter {
    total: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_ip: usize,
}

/// Held for the life of a connection.
pub struct ConnectionPermit {
    _total: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ConnectionLimiter {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(max_total.max(1))),
            per_ip: Arc::default(),
            max_per_ip: max_per_ip.max(1),
        }
    }

    /// A permit, or `None` when either limit is reached.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<ConnectionPermit> {
        let total = self.total.clone().try_acquire_owned().ok()?;
        let mut per_ip = self.per_ip.lock().ok()?;
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return None;
        }
        *count += 1;
        Some(ConnectionPermit {
            _total: total,
            ip,
            per_ip: self.per_ip.clone(),
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if let Ok(mut per_ip) = self.per_ip.lock()
            && let Some(count) = per_ip.get_mut(&self.ip)
        {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
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
        assert!(limiter.try_acquire(a).is_none(), "per-IP limit");
        let _p3 = limiter.try_acquire(b).unwrap();
        assert!(limiter.try_acquire(b).is_none(), "total limit");
        drop(p1);
        assert!(limiter.try_acquire(a).is_some());
    }
}
