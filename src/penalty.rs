//! Login penalties against password guessing on the mail ports.
//!
//! - Per client network (IPv4 /32, IPv6 /64), shared by all its connections:
//!   after a failed login the next answer to that client waits 2 s, then 4 s,
//!   8 s, capped at 15 s. Kept in memory on each node.
//! - Per account: after 100 consecutive failures (NIST SP 800-63B §5.2.2) the
//!   account's mail logins are refused until a quiet period passes or an
//!   administrator clears it (`postern admin user enable`). For an address the
//!   count lives on the user's row in the store, so every node counts towards
//!   one block ([`account_blocked`]); a name that is not an address (postern
//!   stores nothing for it) is counted here, per node.
//! - A client repeating the same wrong password (a stale device retrying) does
//!   not escalate either counter.
//! - Trusted networks (`limits.trusted_networks`) are exempt.
//!
//! In-memory state is bounded and forgets entries after the quiet period.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// First delay after a failure.
pub const BASE_DELAY: Duration = Duration::from_secs(2);
/// Longest delay.
pub const MAX_DELAY: Duration = Duration::from_secs(15);
/// Consecutive failures that block an account.
pub const BLOCK_AFTER: u32 = 100;
/// Silence after which a client's or account's failures are forgotten.
pub const QUIET_PERIOD: Duration = Duration::from_secs(15 * 60);
/// [`QUIET_PERIOD`] in the store's unit.
const QUIET_PERIOD_SECS: i64 = 15 * 60;
/// Entries kept at most per map before old ones are swept.
const CAPACITY: usize = 100_000;

/// Whether an account's stored failure count blocks its mail logins at `now`
/// (Unix seconds): the limit is reached and the latest failure is recent.
pub fn account_blocked(failed_logins: i64, last_failed_at: i64, now: i64) -> bool {
    failed_logins >= i64::from(BLOCK_AFTER) && now - last_failed_at < QUIET_PERIOD_SECS
}

/// Stored failures before this time (Unix seconds) are forgotten when the next
/// one is counted.
pub fn forget_failures_before(now: i64) -> i64 {
    now - QUIET_PERIOD_SECS
}

#[derive(Debug)]
struct ClientRecord {
    failures: u32,
    last: Instant,
    last_attempt: [u8; 32],
}

#[derive(Debug)]
struct AccountRecord {
    consecutive: u32,
    last: Instant,
}

#[derive(Debug, Default)]
struct State {
    clients: HashMap<IpAddr, ClientRecord>,
    accounts: HashMap<String, AccountRecord>,
}

#[derive(Debug, Default)]
pub struct Penalties {
    trusted: Vec<IpNet>,
    state: Mutex<State>,
}

/// The key of a client: its /32 (IPv4) or /64 (IPv6) network.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

impl Penalties {
    pub fn new(trusted: Vec<IpNet>) -> Self {
        Self {
            trusted,
            state: Mutex::default(),
        }
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        let ip = client_key(ip);
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// How long to wait before answering this client's next login.
    pub fn delay(&self, ip: IpAddr) -> Duration {
        if self.exempt(ip) {
            return Duration::ZERO;
        }
        let Ok(state) = self.state.lock() else {
            return Duration::ZERO;
        };
        match state.clients.get(&client_key(ip)) {
            Some(record) if record.failures > 0 && record.last.elapsed() < QUIET_PERIOD => {
                let doublings = (record.failures - 1).min(4);
                (BASE_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
            }
            _ => Duration::ZERO,
        }
    }

    /// Whether a name counted here (see [`Penalties::local_account_failed`]) is
    /// blocked on the mail protocols.
    pub fn blocked(&self, user: &str) -> bool {
        let Ok(state) = self.state.lock() else {
            return false;
        };
        state
            .accounts
            .get(&user.to_ascii_lowercase())
            .is_some_and(|record| {
                record.consecutive >= BLOCK_AFTER && record.last.elapsed() < QUIET_PERIOD
            })
    }

    /// Records a refused login against the client. `attempt` identifies the
    /// credential tried (a keyed hash of user and password, never the password).
    /// Returns whether the failure counts against the account too: not from a
    /// trusted network, and not the client's previous wrong password again.
    pub fn failed(&self, ip: IpAddr, attempt: [u8; 32]) -> bool {
        if self.exempt(ip) {
            return false;
        }
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        sweep(&mut state);
        let client = state.clients.entry(client_key(ip)).or_insert(ClientRecord {
            failures: 0,
            last: now,
            last_attempt: [0; 32],
        });
        if client.last.elapsed() >= QUIET_PERIOD {
            client.failures = 0;
        }
        let repeated = client.failures > 0 && client.last_attempt == attempt;
        client.last = now;
        if repeated {
            return false;
        }
        client.failures = client.failures.saturating_add(1);
        client.last_attempt = attempt;
        true
    }

    /// Counts a failure that [`Penalties::failed`] said counts, for a name the
    /// store keeps no row for.
    pub fn local_account_failed(&self, user: &str) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        sweep(&mut state);
        let account = state
            .accounts
            .entry(user.to_ascii_lowercase())
            .or_insert(AccountRecord {
                consecutive: 0,
                last: now,
            });
        if account.last.elapsed() >= QUIET_PERIOD {
            account.consecutive = 0;
        }
        account.consecutive = account.consecutive.saturating_add(1);
        account.last = now;
    }

    /// Records a successful login: the client and the account start afresh.
    pub fn succeeded(&self, ip: IpAddr, user: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.clients.remove(&client_key(ip));
            state.accounts.remove(&user.to_ascii_lowercase());
        }
    }

    /// An administrator cleared the account.
    pub fn clear_account(&self, user: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.accounts.remove(&user.to_ascii_lowercase());
        }
    }
}

fn sweep(state: &mut State) {
    if state.clients.len() >= CAPACITY {
        state.clients.retain(|_, r| r.last.elapsed() < QUIET_PERIOD);
        if state.clients.len() >= CAPACITY {
            // Still full of fresh entries: forget the oldest half.
            let mut ages: Vec<Instant> = state.clients.values().map(|r| r.last).collect();
            ages.sort();
            let cutoff = ages[ages.len() / 2];
            state.clients.retain(|_, r| r.last > cutoff);
        }
    }
    if state.accounts.len() >= CAPACITY {
        state
            .accounts
            .retain(|_, r| r.last.elapsed() < QUIET_PERIOD);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 32] = [1; 32];
    const B: [u8; 32] = [2; 32];

    fn attempt(n: u32) -> [u8; 32] {
        let mut a = [0u8; 32];
        a[..4].copy_from_slice(&n.to_be_bytes());
        a
    }

    #[test]
    fn delays_double_and_cap_and_are_shared_by_the_client_network() {
        let p = Penalties::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(p.delay(ip), Duration::ZERO);
        let expected = [2, 4, 8, 15, 15];
        for (n, secs) in expected.iter().enumerate() {
            assert!(p.failed(ip, attempt(n as u32)));
            assert_eq!(p.delay(ip), Duration::from_secs(*secs));
        }
        // Another address in the same IPv6 /64 shares the penalty.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        p.failed(v6a, A);
        assert_eq!(p.delay(v6b), BASE_DELAY);
        assert_eq!(p.delay("2001:db8:1::1".parse().unwrap()), Duration::ZERO);
        p.succeeded(ip, "a@x");
        assert_eq!(p.delay(ip), Duration::ZERO);
    }

    #[test]
    fn the_same_wrong_password_again_does_not_escalate() {
        let p = Penalties::default();
        let ip: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(p.failed(ip, A));
        for _ in 0..10 {
            assert!(!p.failed(ip, A), "a repeat does not count");
        }
        assert_eq!(p.delay(ip), BASE_DELAY);
        assert!(p.failed(ip, B));
        assert_eq!(p.delay(ip), BASE_DELAY * 2);
    }

    #[test]
    fn a_local_account_blocks_after_100_consecutive_failures_until_cleared() {
        let p = Penalties::default();
        for n in 0..BLOCK_AFTER {
            assert!(!p.blocked("alice"));
            // Many clients, each guessing once: a distributed attack.
            let ip = IpAddr::from([10, 0, (n / 256) as u8, (n % 256) as u8]);
            assert!(p.failed(ip, attempt(n)));
            p.local_account_failed("Alice");
        }
        assert!(p.blocked("alice"));
        assert!(!p.blocked("bob"));
        p.clear_account("alice");
        assert!(!p.blocked("alice"));
    }

    #[test]
    fn a_stored_count_blocks_at_the_limit_until_the_quiet_period_passes() {
        let now = 1_000_000;
        let limit = i64::from(BLOCK_AFTER);
        assert!(!account_blocked(limit - 1, now, now));
        assert!(account_blocked(limit, now, now));
        assert!(account_blocked(limit, now - QUIET_PERIOD_SECS + 1, now));
        assert!(!account_blocked(limit, now - QUIET_PERIOD_SECS, now));
        assert_eq!(forget_failures_before(now), now - QUIET_PERIOD_SECS);
        assert_eq!(QUIET_PERIOD.as_secs(), QUIET_PERIOD_SECS as u64);
    }

    #[test]
    fn trusted_networks_are_exempt() {
        let p = Penalties::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let ip: IpAddr = "10.1.1.1".parse().unwrap();
        for n in 0..200 {
            assert!(!p.failed(ip, attempt(n)));
        }
        assert_eq!(p.delay(ip), Duration::ZERO);
        assert!(!p.blocked("a@x"));
    }
}
