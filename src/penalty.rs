//! Login penalties against password guessing on the mail ports, the web login
//! and the system administrator's login.
//!
//! - Per client network (IPv4 /32, IPv6 /64), shared by all its connections:
//!   after a failed login the next answer to that client waits 2 s, then 4 s,
//!   8 s, capped at 15 s. Kept in the store (`client_penalties`), so every
//!   node applies one delay and a restart forgets nothing.
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
//!   stores nothing for it) is counted in memory, per node.
//! - A client repeating the same wrong password for an account (a stale device
//!   retrying) does not escalate either counter.
//! - Trusted networks (`limits.trusted_networks`) are exempt.
//!
//! Reading the store on every login would cost a round trip a warm login does
//! not otherwise make. So each node keeps only the set of client networks with
//! a failure in the last [`QUIET_PERIOD`]: from its own writes, from the
//! `client_failed` events every failure appends to the event log (which every
//! node tails), and from the store at start. Only a client in that set has its
//! row read; a clean client's login reads nothing. A failure on another node is
//! seen here within the event log's delivery delay.
//!
//! Without a store (unit tests) the records live in a size-bounded `moka`
//! cache. What a record means is decided by its own time stamps, not by when
//! a cache drops it.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use moka::ops::compute::Op;
use moka::sync::Cache;
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::address::fold;
use crate::clock::unix_now;
use crate::net::ClientKey;
use crate::store::{PenaltyRow, Store};

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
/// Client networks with recent failures a node remembers.
const SUSPECTS: u64 = 1_000_000;
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
#[derive(Clone, Debug, PartialEq, Eq)]
struct AccountFailures {
    /// A hash of the lowercased account name (fixed size whatever the name).
    account: [u8; 32],
    failures: u32,
    /// The last wrong credential tried for it (a keyed hash, never a password).
    last_attempt: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ClientRecord {
    /// Failures counted against this client: those of every account in
    /// `accounts`, and of the accounts pushed out of it.
    failures: u32,
    /// Unix time of the latest failure.
    last: i64,
    /// Oldest first, at most [`ACCOUNTS_PER_CLIENT`].
    accounts: Vec<AccountFailures>,
}

impl ClientRecord {
    fn fresh(&self, now: i64) -> bool {
        now - self.last < QUIET_PERIOD_SECS
    }

    fn weight(&self) -> u32 {
        let bytes = std::mem::size_of::<Self>()
            + self.accounts.len() * std::mem::size_of::<AccountFailures>()
            + 64;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    fn delay(&self, now: i64) -> Duration {
        if self.failures == 0 || !self.fresh(now) {
            return Duration::ZERO;
        }
        let doublings = (self.failures - 1).min(4);
        (BASE_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
    }

    /// Counts a failure for `account`; returns the new record and whether it
    /// counts (not the previous wrong credential for this account again).
    fn failed(old: Option<Self>, now: i64, account: [u8; 32], attempt: [u8; 32]) -> (Self, bool) {
        let mut record = old.filter(|r| r.fresh(now)).unwrap_or(ClientRecord {
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
        let mut counted = false;
        if entry.failures == 0 || entry.last_attempt != attempt {
            counted = true;
            record.failures = record.failures.saturating_add(1);
            entry.failures = entry.failures.saturating_add(1);
            entry.last_attempt = attempt;
        }
        record.accounts.push(entry);
        if record.accounts.len() > ACCOUNTS_PER_CLIENT {
            // Its failures stay in `record.failures`: only forgiving them is
            // no longer possible.
            record.accounts.remove(0);
        }
        (record, counted)
    }

    /// Forgives `account`'s failures; `None` when nothing is left, `Err` when
    /// there was nothing to forgive.
    fn succeeded(mut self, account: [u8; 32]) -> Result<Option<Self>, Self> {
        let Some(i) = self.accounts.iter().position(|a| a.account == account) else {
            return Err(self);
        };
        let forgiven = self.accounts.remove(i);
        self.failures = self.failures.saturating_sub(forgiven.failures);
        Ok((self.failures > 0 || !self.accounts.is_empty()).then_some(self))
    }

    /// The stored form: the account list as `account:failures:attempt`
    /// (hex hashes), comma-separated.
    fn to_row(&self) -> PenaltyRow {
        let accounts = self
            .accounts
            .iter()
            .map(|a| {
                format!(
                    "{}:{}:{}",
                    hex::encode(a.account),
                    a.failures,
                    hex::encode(a.last_attempt)
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        PenaltyRow {
            failures: i64::from(self.failures),
            last_at: self.last,
            accounts,
        }
    }

    /// Reads a stored row; an account entry that does not parse is skipped
    /// (its failures still count in the total).
    fn from_row(row: &PenaltyRow) -> Self {
        let hash = |text: &str| {
            let mut out = [0u8; 32];
            hex::decode_to_slice(text, &mut out).ok().map(|()| out)
        };
        let accounts = row
            .accounts
            .split(',')
            .filter(|entry| !entry.is_empty())
            .filter_map(|entry| {
                let mut parts = entry.split(':');
                let account = hash(parts.next()?)?;
                let failures = parts.next()?.parse().ok()?;
                let last_attempt = hash(parts.next()?)?;
                Some(AccountFailures {
                    account,
                    failures,
                    last_attempt,
                })
            })
            .take(ACCOUNTS_PER_CLIENT)
            .collect();
        ClientRecord {
            failures: u32::try_from(row.failures.max(0)).unwrap_or(u32::MAX),
            last: row.last_at,
            accounts,
        }
    }
}

#[derive(Clone, Debug)]
struct AccountRecord {
    consecutive: u32,
    last: Instant,
}

pub struct Penalties {
    trusted: Vec<IpNet>,
    /// Where client records live; without it, in `clients`.
    store: Option<Store>,
    clients: Cache<ClientKey, ClientRecord>,
    /// With a store: the client networks with a failure in the last quiet
    /// period, whose rows a login reads.
    suspects: Cache<ClientKey, ()>,
    accounts: Cache<String, AccountRecord>,
}

impl std::fmt::Debug for Penalties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Penalties")
            .field("trusted", &self.trusted)
            .field("stored", &self.store.is_some())
            .field("clients", &self.clients.entry_count())
            .field("suspects", &self.suspects.entry_count())
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
    Sha256::digest(fold(account).as_bytes()).into()
}

/// A client network as stored: its first address.
fn client_text(key: ClientKey) -> String {
    key.network().to_string()
}

impl Penalties {
    /// Client records in this process's memory only (tests).
    pub fn new(trusted: Vec<IpNet>) -> Self {
        Self {
            trusted,
            store: None,
            clients: Cache::builder()
                .max_capacity(CLIENTS_BYTES)
                .weigher(|_, record: &ClientRecord| record.weight())
                .time_to_idle(QUIET_PERIOD)
                .build(),
            suspects: Cache::builder()
                .max_capacity(SUSPECTS)
                .time_to_live(QUIET_PERIOD)
                .build(),
            accounts: Cache::builder()
                .max_capacity(ACCOUNTS_BYTES)
                .weigher(|name: &String, _| u32::try_from(name.len() + 64).unwrap_or(u32::MAX))
                .time_to_idle(QUIET_PERIOD)
                .build(),
        }
    }

    /// Client records in the store, shared by every node using it. Call
    /// [`Penalties::load`] before serving.
    pub fn stored(trusted: Vec<IpNet>, store: Store) -> Self {
        Self {
            store: Some(store),
            ..Self::new(trusted)
        }
    }

    /// Learns from the store which client networks failed recently (at start).
    pub async fn load(&self) -> Result<(), crate::store::StoreError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        for client in store
            .penalised_clients(forget_failures_before(unix_now()))
            .await?
        {
            self.note_client(&client);
        }
        Ok(())
    }

    /// A failure from `client` (a stored client network, as in the event log)
    /// was counted, perhaps on another node.
    pub fn note_client(&self, client: &str) {
        match client.parse::<IpAddr>() {
            Ok(ip) => self.suspects.insert(ClientKey::new(ip), ()),
            Err(_) => warn!(client, "a client failure names no address; ignored"),
        }
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        let ip = ClientKey::new(ip).network();
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client's record, if it may have one (one store read at most).
    async fn record(&self, key: ClientKey) -> Option<ClientRecord> {
        let Some(store) = &self.store else {
            return self.clients.get(&key);
        };
        if !self.suspects.contains_key(&key) {
            return None;
        }
        match store.client_penalty(&client_text(key)).await {
            Ok(Some(row)) => Some(ClientRecord::from_row(&row)),
            Ok(None) => {
                self.suspects.invalidate(&key);
                None
            }
            Err(err) => {
                // It failed recently: treat it as having failed once.
                warn!(error = %err, "cannot read a client's login delay");
                Some(ClientRecord {
                    failures: 1,
                    last: unix_now(),
                    accounts: Vec::new(),
                })
            }
        }
    }

    /// How long to wait before answering this client's next login.
    pub async fn delay(&self, ip: IpAddr) -> Duration {
        if self.exempt(ip) {
            return Duration::ZERO;
        }
        self.record(ClientKey::new(ip))
            .await
            .map_or(Duration::ZERO, |record| record.delay(unix_now()))
    }

    /// Whether a name counted here (see [`Penalties::local_account_failed`]) is
    /// blocked on the mail protocols.
    pub fn blocked(&self, user: &str) -> bool {
        self.accounts.get(&fold(user)).is_some_and(|record| {
            record.consecutive >= BLOCK_AFTER && record.last.elapsed() < QUIET_PERIOD
        })
    }

    /// Records a refused login for `account` against the client. `attempt`
    /// identifies the credential tried (a keyed hash of user and password, never
    /// the password). Returns whether the failure counts against the account
    /// too: not from a trusted network, and not the client's previous wrong
    /// password for this account again.
    pub async fn failed(&self, ip: IpAddr, account: &str, attempt: [u8; 32]) -> bool {
        if self.exempt(ip) {
            return false;
        }
        let now = unix_now();
        let account = account_key(account);
        let key = ClientKey::new(ip);
        let Some(store) = &self.store else {
            let mut counted = false;
            self.clients.entry(key).and_upsert_with(|old| {
                let (record, c) =
                    ClientRecord::failed(old.map(|e| e.into_value()), now, account, attempt);
                counted = c;
                record
            });
            return counted;
        };
        self.suspects.insert(key, ());
        let mut counted = true;
        let written = store
            .update_client_penalty(
                &client_text(key),
                forget_failures_before(now),
                true,
                |old| {
                    let old = old.as_ref().map(ClientRecord::from_row);
                    let (record, c) = ClientRecord::failed(old, now, account, attempt);
                    counted = c;
                    Some(record.to_row())
                },
            )
            .await;
        if let Err(err) = written {
            // Counted against the account all the same.
            warn!(error = %err, "cannot store a client's login failure");
        }
        counted
    }

    /// Counts a failure that [`Penalties::failed`] said counts, for a name the
    /// store keeps no row for.
    pub fn local_account_failed(&self, user: &str) {
        let now = Instant::now();
        self.accounts.entry(fold(user)).and_upsert_with(|old| {
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
    pub async fn succeeded(&self, ip: IpAddr, account: &str) {
        let hash = account_key(account);
        let key = ClientKey::new(ip);
        self.accounts.invalidate(&fold(account));
        let Some(store) = &self.store else {
            self.clients.entry(key).and_compute_with(|old| {
                match old.map(|e| e.into_value()).map(|r| r.succeeded(hash)) {
                    Some(Ok(Some(record))) => Op::Put(record),
                    Some(Ok(None)) => Op::Remove,
                    Some(Err(_)) | None => Op::Nop,
                }
            });
            return;
        };
        if !self.suspects.contains_key(&key) {
            return;
        }
        let mut emptied = false;
        let written = store
            .update_client_penalty(
                &client_text(key),
                forget_failures_before(unix_now()),
                false,
                |old| {
                    let record = ClientRecord::from_row(old.as_ref()?);
                    match record.succeeded(hash) {
                        Ok(Some(record)) => Some(record.to_row()),
                        Ok(None) => {
                            emptied = true;
                            None
                        }
                        Err(record) => Some(record.to_row()),
                    }
                },
            )
            .await;
        match written {
            Ok(()) if emptied => self.suspects.invalidate(&key),
            Ok(()) => {}
            Err(err) => warn!(error = %err, "cannot store a client's forgiven failures"),
        }
    }

    /// An administrator cleared the account.
    pub fn clear_account(&self, user: &str) {
        self.accounts.invalidate(&fold(user));
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

    #[tokio::test]
    async fn delays_double_and_cap_and_are_shared_by_the_client_network() {
        let p = Penalties::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(p.delay(ip).await, Duration::ZERO);
        let expected = [2, 4, 8, 15, 15];
        for (n, secs) in expected.iter().enumerate() {
            assert!(p.failed(ip, "a@x", attempt(n as u32)).await);
            assert_eq!(p.delay(ip).await, Duration::from_secs(*secs));
        }
        // Another address in the same IPv6 /64 shares the penalty.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        p.failed(v6a, "a@x", A).await;
        assert_eq!(p.delay(v6b).await, BASE_DELAY);
        assert_eq!(
            p.delay("2001:db8:1::1".parse().unwrap()).await,
            Duration::ZERO
        );
        p.succeeded(ip, "a@x").await;
        assert_eq!(p.delay(ip).await, Duration::ZERO);
    }

    #[tokio::test]
    async fn the_same_wrong_password_again_does_not_escalate() {
        let p = Penalties::default();
        let ip: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(p.failed(ip, "a@x", A).await);
        for _ in 0..10 {
            assert!(!p.failed(ip, "A@x", A).await, "a repeat does not count");
        }
        assert_eq!(p.delay(ip).await, BASE_DELAY);
        assert!(p.failed(ip, "a@x", B).await);
        assert_eq!(p.delay(ip).await, BASE_DELAY * 2);
    }

    #[tokio::test]
    async fn a_success_forgives_only_the_failures_of_its_own_account() {
        let p = Penalties::default();
        let ip: IpAddr = "192.0.2.3".parse().unwrap();
        assert!(p.failed(ip, "bob@x", attempt(1)).await);
        assert!(p.failed(ip, "bob@x", attempt(2)).await);
        assert!(p.failed(ip, "alice@x", attempt(3)).await);
        assert_eq!(p.delay(ip).await, BASE_DELAY * 4);
        // The attacker's own account logs in: its failure is forgiven, bob's stay.
        p.succeeded(ip, "Alice@X").await;
        assert_eq!(p.delay(ip).await, BASE_DELAY * 2);
        p.succeeded(ip, "alice@x").await;
        assert_eq!(p.delay(ip).await, BASE_DELAY * 2);
        // The next guess on bob escalates from there.
        assert!(p.failed(ip, "bob@x", attempt(4)).await);
        assert_eq!(p.delay(ip).await, BASE_DELAY * 4);
        // Bob himself logging in forgives bob's failures.
        p.succeeded(ip, "bob@x").await;
        assert_eq!(p.delay(ip).await, Duration::ZERO);
    }

    #[tokio::test]
    async fn failures_of_accounts_pushed_out_of_the_record_still_count() {
        let p = Penalties::default();
        let ip: IpAddr = "192.0.2.4".parse().unwrap();
        let accounts = ACCOUNTS_PER_CLIENT as u32 + 4;
        for n in 0..accounts {
            assert!(p.failed(ip, &format!("user{n}@x"), attempt(n)).await);
        }
        let failures = |p: &Penalties| p.clients.get(&ClientKey::new(ip)).map_or(0, |r| r.failures);
        assert_eq!(failures(&p), accounts);
        // user0 is no longer told apart: its success forgives nothing.
        p.succeeded(ip, "user0@x").await;
        assert_eq!(failures(&p), accounts);
        // The latest account's failure is forgiven, the others' stay.
        p.succeeded(ip, &format!("user{}@x", accounts - 1)).await;
        assert_eq!(failures(&p), accounts - 1);
        assert_eq!(p.delay(ip).await, MAX_DELAY);
        assert!(
            p.clients
                .get(&ClientKey::new(ip))
                .is_some_and(|r| r.accounts.len() <= ACCOUNTS_PER_CLIENT)
        );
    }

    #[tokio::test]
    async fn a_repeated_wrong_password_is_told_apart_per_account() {
        let p = Penalties::default();
        let ip: IpAddr = "192.0.2.5".parse().unwrap();
        assert!(p.failed(ip, "a@x", A).await);
        assert!(p.failed(ip, "b@x", B).await);
        // Back to a's stale password: still a repeat for a.
        assert!(!p.failed(ip, "a@x", A).await);
        assert_eq!(p.delay(ip).await, BASE_DELAY * 2);
    }

    #[tokio::test]
    async fn a_local_account_blocks_after_100_consecutive_failures_until_cleared() {
        let p = Penalties::default();
        for n in 0..BLOCK_AFTER {
            assert!(!p.blocked("jürgen"));
            // Many clients, each guessing once: a distributed attack.
            let ip = IpAddr::from([10, 0, (n / 256) as u8, (n % 256) as u8]);
            assert!(p.failed(ip, "jürgen", attempt(n)).await);
            // Spelled in any case, beyond ASCII too: one account.
            p.local_account_failed(if n % 2 == 0 { "JÜRGEN" } else { "jürgen" });
        }
        assert!(p.blocked("Jürgen"));
        assert!(!p.blocked("jurgen"), "another name");
        assert!(!p.blocked("bob"));
        p.clear_account("JÜRGEN");
        assert!(!p.blocked("jürgen"));
    }

    #[tokio::test]
    async fn a_stored_count_blocks_at_the_limit_until_the_quiet_period_passes() {
        let now = 1_000_000;
        let limit = i64::from(BLOCK_AFTER);
        assert!(!account_blocked(limit - 1, now, now));
        assert!(account_blocked(limit, now, now));
        assert!(account_blocked(limit, now - QUIET_PERIOD_SECS + 1, now));
        assert!(!account_blocked(limit, now - QUIET_PERIOD_SECS, now));
        assert_eq!(forget_failures_before(now), now - QUIET_PERIOD_SECS);
        assert_eq!(QUIET_PERIOD.as_secs(), QUIET_PERIOD_SECS as u64);
    }

    #[tokio::test]
    async fn trusted_networks_are_exempt() {
        let p = Penalties::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let ip: IpAddr = "10.1.1.1".parse().unwrap();
        for n in 0..200 {
            assert!(!p.failed(ip, "a@x", attempt(n)).await);
        }
        assert_eq!(p.delay(ip).await, Duration::ZERO);
        assert!(!p.blocked("a@x"));
    }

    async fn stored(dir: &std::path::Path) -> Penalties {
        let url = format!("sqlite://{}", dir.join("postern.db").display());
        let store = Store::connect(&url).await.unwrap();
        let p = Penalties::stored(Vec::new(), store);
        p.load().await.unwrap();
        p
    }

    #[tokio::test]
    async fn a_clients_delay_and_forgiveness_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "192.0.2.6".parse().unwrap();
        let before = stored(dir.path()).await;
        assert!(before.failed(ip, "bob@x", attempt(1)).await);
        assert!(before.failed(ip, "bob@x", attempt(2)).await);
        assert!(before.failed(ip, "alice@x", attempt(3)).await);
        assert_eq!(before.delay(ip).await, BASE_DELAY * 4);
        drop(before);
        // A new process on the same store.
        let after = stored(dir.path()).await;
        assert_eq!(after.delay(ip).await, BASE_DELAY * 4);
        // The same wrong password is still told apart, per account.
        assert!(!after.failed(ip, "alice@x", attempt(3)).await);
        assert_eq!(after.delay(ip).await, BASE_DELAY * 4);
        after.succeeded(ip, "alice@x").await;
        assert_eq!(after.delay(ip).await, BASE_DELAY * 2);
        after.succeeded(ip, "bob@x").await;
        assert_eq!(after.delay(ip).await, Duration::ZERO);
        let again = stored(dir.path()).await;
        assert_eq!(again.delay(ip).await, Duration::ZERO);
    }

    #[tokio::test]
    async fn a_failure_on_one_node_delays_the_client_on_another() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "2001:db8::7".parse().unwrap();
        let a = stored(dir.path()).await;
        let b = stored(dir.path()).await;
        assert!(a.failed(ip, "bob@x", attempt(1)).await);
        // Until b reads the event log it reads no row for a clean client.
        assert_eq!(b.delay(ip).await, Duration::ZERO);
        let store = a.store.clone().unwrap();
        for event in store.events_after(0, 100).await.unwrap() {
            assert_eq!(event.kind, crate::store::EventKind::ClientFailed);
            b.note_client(event.client.as_deref().unwrap());
        }
        assert_eq!(b.delay(ip).await, BASE_DELAY);
        // Guesses alternate nodes and meet one escalating delay.
        assert!(b.failed(ip, "bob@x", attempt(2)).await);
        assert_eq!(a.delay(ip).await, BASE_DELAY * 2);
        assert!(a.failed(ip, "bob@x", attempt(3)).await);
        assert_eq!(
            b.delay("2001:db8::8".parse().unwrap()).await,
            BASE_DELAY * 4
        );
    }

    #[test]
    fn a_record_reads_back_from_its_stored_form() {
        let (record, _) = ClientRecord::failed(None, 1_000, [7; 32], [9; 32]);
        let (record, _) = ClientRecord::failed(Some(record), 1_001, [8; 32], [3; 32]);
        assert_eq!(ClientRecord::from_row(&record.to_row()), record);
        let garbled = PenaltyRow {
            failures: 3,
            last_at: 5,
            accounts: "zz:1:zz,".into(),
        };
        let read = ClientRecord::from_row(&garbled);
        assert_eq!((read.failures, read.accounts.len()), (3, 0));
    }
}
