//! The login gate: turns what a client presented into a decision and, when the
//! login may proceed, the credentials postern presents upstream.
//!
//! It classifies the credential (one of the user's app passwords, found and so
//! verified by its keyed hash, or else a primary password), reads
//! the domain and user state, and asks [`crate::policy::decide_mail_login`]. An
//! account blocked after too many failed logins (its count is kept by address,
//! read in the same round trip: [`Store::account`]) is refused before the
//! credential is looked at. Reading creates nothing: a user's row is created by
//! the first login the upstream accepted ([`AfterSuccess`]). It
//! never asks the upstream whether a primary password is right before refusing,
//! so a refusal is no password oracle. Any store failure fails closed with a
//! temporary error.
//!
//! No login runs a password-hashing function: an app password is a generated
//! secret whose keyed hash is its verification, so a cold login costs what a
//! warm one does, and a restart's reconnecting devices queue for nothing.
//! Refusals are held to the refusal floor by the session driver, which makes
//! them take the same time whatever their cause.
//!
//! The store reads of a login that proceeded are remembered ([`cache`]) and
//! reused for the same address and credential until any change reaches the
//! event log, so repeated logins from one device cost no database round trip.

use std::net::IpAddr;

use crate::credentials::{CanonicalAppPassword, InstanceKey};
use crate::penalty;
use crate::policy::{self, Credential, Decision, Protocol, Refusal, Source, UpstreamLogin};
use crate::protocol::sasl::Credentials;
use crate::protocol::upstream::UpstreamCredentials;
use crate::secret::Secret;
use crate::store::batch::{BatchWriter, Batching};
use crate::store::{Account, NewAudit, Store, StoreError, normalize_address};

mod cache;

use cache::{CacheKey, LoginCache, LoginContext};

/// The master account postern uses for app-password logins.
#[derive(Clone, Debug)]
pub struct MasterAccount {
    pub user: String,
    pub password: Secret<String>,
}

/// Which credential a session was opened with (kept for re-checks and listings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionCredential {
    Primary,
    AppPassword(i64),
}

impl std::fmt::Display for SessionCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Primary => f.write_str("primary"),
            Self::AppPassword(id) => write!(f, "app-password:{id}"),
        }
    }
}

/// The outcome of re-checking a live session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recheck {
    Keep { allowed_until: Option<i64> },
    Drop(Refusal),
}

/// The gate's answer.
#[derive(Debug)]
pub enum Verdict {
    /// Log in upstream with these credentials.
    Proceed {
        /// The user's normalised address (or the name as typed when it is not an
        /// address: such users belong to no domain postern knows).
        user: String,
        credential: SessionCredential,
        upstream: UpstreamCredentials,
        /// When the session must be re-checked without any stored change.
        allowed_until: Option<i64>,
        /// What [`Gate::login_succeeded`] writes once the upstream accepts.
        after_success: AfterSuccess,
    },
    /// Refused by policy; the reason is for the log only.
    Refuse { user: String, reason: Refusal },
    /// Refused because the account is blocked after too many failed logins
    /// (see [`crate::penalty`]); answered like any refusal.
    Blocked { user: String },
    /// The store or the configuration failed: try again later.
    Unavailable { user: String, detail: String },
}

/// What a login the upstream accepted must write: nothing for a known user
/// without counted failures, so a device's repeat logins write nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AfterSuccess {
    /// Forget the address's counted failed logins.
    pub clear_failures: bool,
    /// Create the user's row: the first login postern let in for this address
    /// (a refused one creates nothing, so guessed addresses leave no trace in
    /// the domain's user list).
    pub create_user: bool,
}

impl AfterSuccess {
    /// What a success must write, given what the login read.
    pub fn for_account(account: &Account) -> Self {
        Self {
            clear_failures: account.failures.count != 0,
            create_user: account.user.is_none(),
        }
    }
}

#[derive(Clone)]
pub struct Gate {
    store: Store,
    key: InstanceKey,
    master: Option<MasterAccount>,
    /// Last use written per app password, so a device reconnecting every few
    /// minutes costs one write per [`LAST_USE_RESOLUTION`], not one per login.
    last_use: moka::sync::Cache<i64, LastUse>,
    audit: AuditQueue,
    /// Recent successful logins' store reads (see [`cache`]).
    cache: std::sync::Arc<LoginCache>,
}

/// Audit rows from the login path go through a [`BatchWriter`]: a login never
/// waits for the audit write.
type AuditQueue = std::sync::Arc<BatchWriter<NewAudit>>;

/// Rows waiting at most (10,000), rows per transaction (256), and the gathering
/// delay after the first row (200 ms).
const AUDIT_BATCHING: Batching = Batching {
    delay: std::time::Duration::from_millis(200),
    max_batch: 256,
    max_queued: 10_000,
};

fn audit_queue(store: Store) -> AuditQueue {
    std::sync::Arc::new(BatchWriter::new(
        AUDIT_BATCHING,
        Box::new(move |rows: Vec<NewAudit>| {
            let store = store.clone();
            Box::pin(async move {
                if let Err(err) = store.audit_batch(&rows).await {
                    tracing::warn!(error = %err, rows = rows.len(), "could not write the audit log");
                }
            })
        }),
    ))
}

/// When, from where and over what an app password was last recorded as used.
type LastUse = (i64, IpAddr, Protocol);

/// How stale a recorded last use may be (same address and protocol).
pub const LAST_USE_RESOLUTION: i64 = 60;
/// App passwords whose last write is remembered at most (a bounded cache).
const LAST_USE_ENTRIES: u64 = 100_000;

impl Gate {
    /// `login_cache`: how long a device's successful login is remembered
    /// (zero: not at all; see [`cache`]).
    pub fn new(
        store: Store,
        key: InstanceKey,
        master: Option<MasterAccount>,
        login_cache: std::time::Duration,
    ) -> Self {
        Self {
            audit: audit_queue(store.clone()),
            key,
            master,
            last_use: moka::sync::Cache::builder()
                .max_capacity(LAST_USE_ENTRIES)
                .time_to_live(std::time::Duration::from_secs(LAST_USE_RESOLUTION as u64))
                .build(),
            cache: std::sync::Arc::new(LoginCache::new(login_cache, store.epoch().clone())),
            store,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The instance key (keyed hashes, cookies, backup codes).
    pub fn key(&self) -> &InstanceKey {
        &self.key
    }

    /// Decides a mail login from `client` (the real client address, after any
    /// PROXY header from a trusted proxy).
    pub async fn check(
        &self,
        presented: &Credentials,
        protocol: Protocol,
        client: IpAddr,
        now: i64,
    ) -> Verdict {
        let Ok(address) = normalize_address(&presented.username) else {
            // Not local@domain: no domain postern knows, so it behaves as Disabled
            // and no app password can exist for it.
            return Self::passthrough(
                presented,
                presented.username.clone(),
                None,
                AfterSuccess::default(),
            );
        };
        let candidate = CanonicalAppPassword::parse(presented.password.expose());
        let key = CacheKey {
            lookup: candidate
                .as_ref()
                .map(|c| c.lookup_key(&self.key, &address)),
            address,
        };
        // `Some(epoch)` when read from the store now (and so worth remembering).
        let (context, read_after) = match self.cache.get(&key) {
            Some(context) => {
                metrics::counter!(crate::metrics::LOGIN_CACHE, "result" => "hit").increment(1);
                (context, None)
            }
            None => {
                metrics::counter!(crate::metrics::LOGIN_CACHE, "result" => "miss").increment(1);
                let read_at = self.store.epoch().now();
                match self.read_context(&key).await {
                    Ok(context) => (context, Some(read_at)),
                    Err(err) => {
                        return Verdict::Unavailable {
                            user: key.address,
                            detail: format!("store: {err}"),
                        };
                    }
                }
            }
        };
        let verdict = self.decide(presented, protocol, client, now, &key, &context);
        // A context without a user row is not remembered: the success creates
        // the row, and the next login reads it.
        if let (Verdict::Proceed { .. }, Some(read_at), true) =
            (&verdict, read_after, context.account.user.is_some())
        {
            let mut context = context;
            // The caller clears them once the upstream accepts; a failure
            // instead forgets this entry (`count_login_failure`).
            context.account.failures = Default::default();
            self.cache.put(key, context, read_at);
        }
        verdict
    }

    /// The user and domain and, for a password shaped like an app password, the
    /// app-password row its lookup key finds.
    async fn read_context(&self, key: &CacheKey) -> Result<LoginContext, StoreError> {
        let account = self.store.account(&key.address).await?;
        let app_password = match (&key.lookup, &account.user) {
            (Some(lookup), Some(user)) => {
                self.store.app_password_by_lookup(user.id, lookup).await?
            }
            _ => None,
        };
        Ok(LoginContext {
            account,
            app_password,
        })
    }

    /// Decides a login from the stored context (fresh or cached).
    fn decide(
        &self,
        presented: &Credentials,
        protocol: Protocol,
        client: IpAddr,
        now: i64,
        key: &CacheKey,
        context: &LoginContext,
    ) -> Verdict {
        let address = key.address.clone();
        let account = &context.account;
        if account.failures.block(now) {
            return Verdict::Blocked { user: address };
        }
        let after_success = AfterSuccess::for_account(account);
        // A row found by the presented password's keyed hash is that password.
        let (credential, app_password_id) = match &context.app_password {
            Some(record) => (
                Credential::AppPassword {
                    scopes: record.scopes,
                    expires_at: record.expires_at,
                    source: Source {
                        networks: &record.networks,
                        client,
                    },
                },
                Some(record.id),
            ),
            None => (Credential::Primary, None),
        };

        let domain_policy = account.policy();
        let state = account.state();
        let allowed_until = policy::allowed_until(domain_policy.as_ref(), state, credential);
        match policy::decide_mail_login(domain_policy.as_ref(), state, credential, protocol, now) {
            Decision::Refuse(reason) => Verdict::Refuse {
                user: address,
                reason,
            },
            Decision::Allow(UpstreamLogin::Passthrough) => {
                Self::passthrough(presented, address, allowed_until, after_success)
            }
            Decision::Allow(UpstreamLogin::Master) => {
                let Some(master) = &self.master else {
                    return Verdict::Unavailable {
                        user: address,
                        detail: "upstream_auth has no master password configured".into(),
                    };
                };
                let id = app_password_id.unwrap_or_default();
                Verdict::Proceed {
                    upstream: UpstreamCredentials {
                        authzid: address.clone(),
                        authcid: master.user.clone(),
                        password: master.password.clone(),
                    },
                    user: address,
                    credential: SessionCredential::AppPassword(id),
                    allowed_until,
                    after_success,
                }
            }
        }
    }

    /// Counts a failed login against `user`'s stored account, shared by every
    /// node (best effort: a store failure is logged and the refusal stands).
    pub async fn count_login_failure(&self, user: &str, now: i64, ip: std::net::IpAddr) {
        self.cache.forget_user(user);
        let ip = ip.to_string();
        if let Err(err) = self
            .store
            .count_login_failure_from(user, now, penalty::forget_failures_before(now), Some(&ip))
            .await
        {
            tracing::warn!(error = %err, "could not count a failed login");
        }
    }

    /// What a login the upstream accepted writes (see [`AfterSuccess`]; best
    /// effort: a store failure is logged and the session goes on).
    pub async fn login_succeeded(&self, address: &str, after: AfterSuccess) {
        if after.clear_failures
            && let Err(err) = self.store.clear_login_failures(address).await
        {
            tracing::warn!(error = %err, "could not clear failed logins");
        }
        if after.create_user
            && let Err(err) = self.store.ensure_user(address).await
        {
            tracing::warn!(error = %err, "could not record a new user");
        }
    }

    /// The event-log tail read the whole log in a read that began at `started`
    /// and applied every change it found: remembered logins may be used (see
    /// [`cache`]).
    pub fn event_log_read(&self, started: std::time::Instant) {
        self.store.epoch().log_read(started);
    }

    /// The event-log tail could not read the log: remembered logins are
    /// dropped, and every login reads the store until the log is read again.
    pub fn event_log_unreadable(&self) {
        self.store.epoch().log_unreadable();
        self.cache.clear();
    }

    /// Whether a login may be answered from remembered store reads: the event
    /// log was read recently (see [`crate::epoch::FRESHNESS`]).
    pub fn remembers_logins(&self) -> bool {
        self.store.epoch().fresh()
    }

    /// Resolves once repeat logins are answered from memory (the event log
    /// was just read).
    pub async fn until_remembering(&self) {
        self.store.epoch().until_fresh().await
    }

    /// Resolves once every audit row queued so far is written (shutdown).
    pub async fn flush_audit(&self) {
        self.audit.flush().await;
    }

    fn passthrough(
        presented: &Credentials,
        user: String,
        allowed_until: Option<i64>,
        after_success: AfterSuccess,
    ) -> Verdict {
        Verdict::Proceed {
            allowed_until,
            after_success,
            user,
            credential: SessionCredential::Primary,
            upstream: UpstreamCredentials {
                authzid: String::new(),
                authcid: presented.username.clone(),
                password: presented.password.clone(),
            },
        }
    }

    /// Re-runs the policy for a live session after a change, from the same
    /// store read as a login ([`Store::account`]). A store error is returned,
    /// never taken for an answer: the caller keeps the session with its
    /// deadline and tries again (live sessions survive a database outage).
    pub async fn recheck(
        &self,
        user: &str,
        protocol: Protocol,
        credential: SessionCredential,
        now: i64,
    ) -> Result<Recheck, StoreError> {
        let Ok(address) = normalize_address(user) else {
            // Not local@domain: no domain postern knows, as at login.
            return Ok(Recheck::Keep {
                allowed_until: None,
            });
        };
        let account = self.store.account(&address).await?;
        let credential = match (credential, &account.user) {
            (SessionCredential::Primary, _) => Credential::Primary,
            (SessionCredential::AppPassword(id), Some(user)) => {
                match self.store.app_password(user.id, id).await? {
                    // The source networks were checked at login: they never
                    // change, and neither does a session's address.
                    Some(app) => Credential::AppPassword {
                        scopes: app.scopes,
                        expires_at: app.expires_at,
                        source: Source::ANYWHERE,
                    },
                    None => Credential::RevokedAppPassword,
                }
            }
            (SessionCredential::AppPassword(_), None) => Credential::RevokedAppPassword,
        };
        let policy = account.policy();
        let state = account.state();
        Ok(
            match policy::decide_mail_login(policy.as_ref(), state, credential, protocol, now) {
                Decision::Refuse(reason) => Recheck::Drop(reason),
                Decision::Allow(_) => Recheck::Keep {
                    allowed_until: policy::allowed_until(policy.as_ref(), state, credential),
                },
            },
        )
    }

    /// Appends a login result to the audit log, off the login's path (a slow or
    /// failing store never delays or changes the answer).
    pub fn audit_login(
        &self,
        user: &str,
        protocol: Protocol,
        ip: IpAddr,
        result: &str,
        detail: &str,
    ) {
        self.spawn_audit("login", user, format!("{protocol} {result} {detail}"), ip);
    }

    /// Appends a dropped session to the audit log.
    pub fn audit_session_drop(&self, user: &str, protocol: Protocol, ip: IpAddr, reason: &str) {
        self.spawn_audit("session-drop", user, format!("{protocol} {reason}"), ip);
    }

    fn spawn_audit(&self, action: &'static str, user: &str, detail: String, ip: IpAddr) {
        let queued = self.audit.push(NewAudit {
            actor: "mail-client".into(),
            action: action.into(),
            target: user.to_owned(),
            detail,
            ip: Some(ip.to_string()),
        });
        if !queued {
            tracing::warn!("audit queue full; an audit row was dropped");
        }
    }

    /// Records a successful app-password login (best effort: a failure is logged,
    /// the session goes on).
    pub async fn record_use(
        &self,
        credential: SessionCredential,
        ip: IpAddr,
        protocol: Protocol,
        now: i64,
    ) {
        let SessionCredential::AppPassword(id) = credential else {
            return;
        };
        if self
            .last_use
            .get(&id)
            .is_some_and(|(at, last_ip, last_protocol)| {
                now - at < LAST_USE_RESOLUTION && last_ip == ip && last_protocol == protocol
            })
        {
            return;
        }
        self.last_use.insert(id, (now, ip, protocol));
        if let Err(err) = self
            .store
            .record_app_password_use(id, now, &ip.to_string(), protocol)
            .await
        {
            tracing::warn!(error = %err, "could not record app password use");
        }
    }
}
