//! Login penalties against password guessing on the mail ports, the web login
//! and the system administrator's login.
//!
//! - Per client network (IPv4 /32, IPv6 /64), shared by all its connections:
//!   after a failed login the next answer to that client waits 2 s, then 4 s,
//!   8 s, capped at 15 s. Kept in memory on each node.
//! - A successful login forgives only the failures of the account it logged in
//!   to: the client keeps its failures per account tried (the latest
//!   [`ACCOUNTS_PER_CLIENT`]; failures of accounts it tried before those still
//!   count but can no longer be forgiven), so one valid account does not let a
//!   client guess the passwords of others at full speed.
//! - Per account: after 100 consecutive failures (NIST SP 800-63B §5.2.2) the
//!   account's mail logins are refused until a quiet period passes or an
//!   administrator clears it (`postern admin user enable`). For an address the
//!   count lives on the user's row in the store, so every node counts towards
//!   one block ([`account_blocked`]); a name that is not an address (postern
//!   stores nothing for it) is counted here, per node.
//! - A client repeating the same wrong password for an account (a stale device
//!   retrying) does not escalate either counter.
//! - Trusted networks (`limits.trusted_networks`) are exempt.
//!
//! In-memory state lives in size-bounded caches (`moka`) that also forget
//! entries after the quiet period; what a record means is decided by its own
//! time stamps, not by when the cache drops it.

use std::net::IpAddr;

use crate::net::ClientKey;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use moka::ops::compute::Op;
use moka::sync::Cache;
use sha2::{Digest, Sha256};

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
/// Accounts whose failures a client record tells apart (the latest tried).
pub const ACCOUNTS_PER_CLIENT: usize = 8;
/// Memory for client records, in bytes (about 100 000 clients with a full
/// account list, many more with one account each).
const CLIENTS_BYTES: u64 = 64 << 20;
/// Memory for the names counted per node, in bytes of name.
const ACCOUNTS_BYTES: u64 = 16 << 20;

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

/// One account's failures from one client.
#[derive(Clone, Debug)]
struct AccountFailures {
    /// A hash of the lowercased account name (fixed size whatever the name).
    account: [u8; 32],
    failures: u32,
    /// The last wrong credential tried for it (a keyed hash, never a password).
    last_attempt: [u8; 32],
}

#[derive(Clone, Debug)]
struct ClientRecord {
    /// Failures counted against this client: those of every account in
    /// `accounts`, and of the accounts pushed out of it.
    failures: u32,
    last: Instant,
    /// Oldest first, at most [`ACCOUNTS_PER_CLIENT`].
    accounts: Vec<AccountFailures>,
}

impl ClientRecord {
    fn fresh(&self) -> bool {
        self.last.elapsed() < QUIET_PERIOD
    }

    fn weight(&self) -> u32 {
        let bytes = std::mem::size_of::<Self>()
            + self.accounts.len() * std::mem::size_of::<AccountFailures>()
            + 64;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

#[derive(Clone, Debug)]
struct AccountRecord {
    consecutive: u32,
    last: Instant,
}

pub struct Penalties {
    trusted: Vec<IpNet>,
    clients: Cache<ClientKey, ClientRecord>,
    accounts: Cache<String, AccountRecord>,
}

impl std::fmt::Debug for Penalties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Penalties")
            .field("trusted", &self.trusted)
            .field("clients", &self.clients.entry_count())
            .field("accounts", &self.accounts.entry_count())
            .finish()
    }
}

impl Default for Penalties {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

fn account_key(account: &str) -> [u8; 32] {
    Sha256::digest(account.to_lowercase().as_bytes()).into()
}

impl Penalties {
    pub fn new(trusted: Vec<IpNet>) -> Self {
        Self {
            trusted,
            clients: Cache::builder()
                .max_capacity(CLIENTS_BYTES)
                .weigher(|_, record: &ClientRecord| record.weight())
                .time_to_idle(QUIET_PERIOD)
                .build(),
            accounts: Cache::builder()
                .max_capacity(ACCOUNTS_BYTES)
                .weigher(|name: &String, _| u32::try_from(name.len() + 64).unwrap_or(u32::MAX))
                .time_to_idle(QUIET_PERIOD)
                .build(),
        }
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        let ip = ClientKey::new(ip).network();
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// How long to wait before answering this client's next login.
    pub fn delay(&self, ip: IpAddr) -> Duration {
        if self.exempt(ip) {
            return Duration::ZERO;
        }
        match self.clients.get(&ClientKey::new(ip)) {
            Some(record) if record.failures > 0 && record.fresh() => {
                let doublings = (record.failures - 1).min(4);
                (BASE_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
            }
            _ => Duration::ZERO,
        }
    }

    /// Whether a name counted here (see [`Penalties::local_account_failed`]) is
    /// blocked on the mail protocols.
    pub fn blocked(&self, user: &str) -> bool {
        self.accounts
            .get(&user.to_ascii_lowercase())
            .is_some_and(|record| {
                record.consecutive >= BLOCK_AFTER && record.last.elapsed() < QUIET_PERIOD
            })
    }

    /// Records a refused login for `account` against the client. `attempt`
    /// identifies the credential tried (a keyed hash of user and password, never
    /// the password). Returns whether the failure counts against the account
    /// too: not from a trusted network, and not the client's previous wrong
    /// password for this account again.
    pub fn failed(&self, ip: IpAddr, account: &str, attempt: [u8; 32]) -> bool {
        if self.exempt(ip) {
            return false;
        }
        let now = Instant::now();
        let account = account_key(account);
        let mut counted = false;
        self.clients
            .entry(ClientKey::new(ip))
            .and_upsert_with(|old| {
                let mut record = old
                    .map(|entry| entry.into_value())
                    .filter(ClientRecord::fresh)
                    .unwrap_or(ClientRecord {
                        failures: 0,
                        last: now,
                        accounts: Vec::new(),
                    });
                record.last = now;
                let position = record.accounts.iter().position(|a| a.account == account);
                let mut entry = match position {
                    Some(i) => record.accounts.remove(i),
                    None => AccountFailures {
                        account,
                        failures: 0,
                        last_attempt: [0; 32],
                    },
                };
                if entry.failures == 0 || entry.last_attempt != attempt {
                    counted = true;
                    record.failures = record.failures.saturating_add(1);
                    entry.failures = entry.failures.saturating_add(1);
                    entry.last_attempt = attempt;
                }
                record.accounts.push(entry);
                if record.accounts.len() > ACCOUNTS_PER_CLIENT {
                    // Its failures stay in `record.failures`: only forgiving
                    // them is no longer possible.
                    record.accounts.remove(0);
                }
                record
            });
        counted
    }

    /// Counts a failure that [`Penalties::failed`] said counts, for a name the
    /// store keeps no row for.
    pub fn local_account_failed(&self, user: &str) {
        let now = Instant::now();
        self.accounts
            .entry(user.to_ascii_lowercase())
            .and_upsert_with(|old| {
                let consecutive = old
                    .map(|entry| entry.into_value())
                    .filter(|r| r.last.elapsed() < QUIET_PERIOD)
                    .map_or(0, |r| r.consecutive);
                AccountRecord {
                    consecutive: consecutive.saturating_add(1),
                    last: now,
                }
            });
    }

    /// Records a successful login to `account`: this client's failures for that
    /// account are forgiven (its failures for other accounts still count), and
    /// the account's count kept here starts afresh.
    pub fn succeeded(&self, ip: IpAddr, account: &str) {
        let key = account_key(account);
        self.clients
            .entry(ClientKey::new(ip))
            .and_compute_with(|old| {
                let Some(mut record) = old.map(|entry| entry.into_value()) else {
                    return Op::Nop;
                };
                let Some(i) = record.accounts.iter().position(|a| a.account == key) else {
                    return Op::Nop;
                };
                let forgiven = record.accounts.remove(i);
                record.failures = record.failures.saturating_sub(forgiven.failures);
                if record.failures == 0 && record.accounts.is_empty() {
                    Op::Remove
                } else {
                    Op::Put(record)
                }
            });
        self.accounts.invalidate(&account.to_ascii_lowercase());
    }

    /// An administrator cleared the account.
    pub fn clear_account(&self, user: &str) {
        self.accounts.invalidate(&user.to_ascii_lowercase());
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
            assert!(p.failed(ip, "a@x", attempt(n as u32)));
            assert_eq!(p.delay(ip), Duration::from_secs(*secs));
        }
        // Another address in the same IPv6 /64 shares the penalty.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        p.failed(v6a, "a@x", A);
        assert_eq!(p.delay(v6b), BASE_DELAY);
        assert_eq!(p.delay("2001:db8:1::1".parse().unwrap()), Duration::ZERO);
        p.succeeded(ip, "a@x");
        assert_eq!(p.delay(ip), Duration::ZERO);
    }

    #[test]
    fn the_same_wrong_password_again_does_not_escalate() {
        let p = Penalties::default();
        let ip: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(p.failed(ip, "a@x", A));
        for _ in 0..10 {
            assert!(!p.failed(ip, "A@x", A), "a repeat does not count");
        }
        assert_eq!(p.delay(ip), BASE_DELAY);
        assert!(p.failed(ip, "a@x", B));
        assert_eq!(p.delay(ip), BASE_DELAY * 2);
    }

    #[test]
    fn a_success_forgives_only_the_failures_of_its_own_account() {
        let p = Penalties::default();
        let ip: IpAddr = "192.0.2.3".parse().unwrap();
        assert!(p.failed(ip, "bob@x", attempt(1)));
        assert!(p.failed(ip, "bob@x", attempt(2)));
        assert!(p.failed(ip, "alice@x", attempt(3)));
        assert_eq!(p.delay(ip), BASE_DELAY * 4);
        // The attacker's own account logs in: its failure is forgiven, bob's stay.
        p.succeeded(ip, "Alice@X");
        assert_eq!(p.delay(ip), BASE_DELAY * 2);
        p.succeeded(ip, "alice@x");
        assert_eq!(p.delay(ip), BASE_DELAY * 2);
        // The next guess on bob escalates from there.
        assert!(p.failed(ip, "bob@x", attempt(4)));
        assert_eq!(p.delay(ip), BASE_DELAY * 4);
        // Bob himself logging in forgives bob's failures.
        p.succeeded(ip, "bob@x");
        assert_eq!(p.delay(ip), Duration::ZERO);
    }

    #[test]
    fn failures_of_accounts_pushed_out_of_the_record_still_count() {
        let p = Penalties::default();
        let ip: IpAddr = "192.0.2.4".parse().unwrap();
        let accounts = ACCOUNTS_PER_CLIENT as u32 + 4;
        for n in 0..accounts {
            assert!(p.failed(ip, &format!("user{n}@x"), attempt(n)));
        }
        let failures = |p: &Penalties| p.clients.get(&ClientKey::new(ip)).map_or(0, |r| r.failures);
        assert_eq!(failures(&p), accounts);
        // user0 is no longer told apart: its success forgives nothing.
        p.succeeded(ip, "user0@x");
        assert_eq!(failures(&p), accounts);
        // The latest account's failure is forgiven, the others' stay.
        p.succeeded(ip, &format!("user{}@x", accounts - 1));
        assert_eq!(failures(&p), accounts - 1);
        assert_eq!(p.delay(ip), MAX_DELAY);
        assert!(
            p.clients
                .get(&ClientKey::new(ip))
                .is_some_and(|r| r.accounts.len() <= ACCOUNTS_PER_CLIENT)
        );
    }

    #[test]
    fn a_repeated_wrong_password_is_told_apart_per_account() {
        let p = Penalties::default();
        let ip: IpAddr = "192.0.2.5".parse().unwrap();
        assert!(p.failed(ip, "a@x", A));
        assert!(p.failed(ip, "b@x", B));
        // Back to a's stale password: still a repeat for a.
        assert!(!p.failed(ip, "a@x", A));
        assert_eq!(p.delay(ip), BASE_DELAY * 2);
    }

    #[test]
    fn a_local_account_blocks_after_100_consecutive_failures_until_cleared() {
        let p = Penalties::default();
        for n in 0..BLOCK_AFTER {
            assert!(!p.blocked("alice"));
            // Many clients, each guessing once: a distributed attack.
            let ip = IpAddr::from([10, 0, (n / 256) as u8, (n % 256) as u8]);
            assert!(p.failed(ip, "alice", attempt(n)));
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
            assert!(!p.failed(ip, "a@x", attempt(n)));
        }
        assert_eq!(p.delay(ip), Duration::ZERO);
        assert!(!p.blocked("a@x"));
    }
}
