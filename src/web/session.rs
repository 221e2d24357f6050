//! Web sign-in sessions, kept in the store (`crate::store` `web_sessions`) so
//! that any node serves any browser and a restart signs nobody out.
//!
//! The browser holds a random id in an HttpOnly, SameSite=Strict cookie; the
//! store holds only its HMAC under the instance key, so a copy of the database
//! (or a backup) signs nobody in. The id is replaced after every login step
//! (the old row deleted) so an id seen before a login is worthless after it. A
//! half-logged-in session (password right, second step pending) carries only
//! the address, in its row, so the second step may continue on another node or
//! after a restart; the page handlers let it reach nothing else. What a
//! signed-in user may do is not kept here: the policy decides it again on every
//! request from the stored state (`crate::policy::decide_web_access`), so a
//! domain forced after sign-in binds the session at once.
//!
//! A visitor who has not signed in yet (the login forms) is not stored at all:
//! the cookie carries `a.<issued>.<random>`, and the form token is that id's
//! HMAC under the instance key, so a flood of visits writes nothing, any node
//! checks the token, and another visitor's token is worthless. The first row
//! is written by the first login step that succeeds.
//!
//! Cost per request: one read (the row, expiry checked by the store), none for
//! an anonymous visitor, and a write of "last seen" at most once a minute per
//! session.

use cookie::{Cookie, SameSite};
use tracing::error;

use crate::clock::unix_now;
use crate::credentials::InstanceKey;
use crate::policy::Proof;
use crate::store::{Store, WebSessionRow};

/// The cookie's name over plain HTTP.
pub const COOKIE: &str = "postern_session";
/// The cookie's name when `public_url` is https: the `__Host-` prefix makes
/// browsers refuse it unless Secure, Path=/ and without Domain, so a sibling
/// host cannot plant or shadow it.
pub const HOST_COOKIE: &str = "__Host-postern_session";

/// Idle time after which a session ends.
const IDLE: i64 = 30 * 60;
/// Idle time for sessions that are not (yet) logged in.
const IDLE_PENDING: i64 = 10 * 60;
/// No session lives longer than this, however active.
const ABSOLUTE: i64 = 12 * 3600;
/// "Last seen" is written at most this often per session: the idle deadline
/// may thus come up to this much early, never late.
const TOUCH_EVERY: i64 = 60;
/// How often each node deletes expired rows.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// Who the browser is, as far as postern knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Nobody yet: holds only a CSRF token for the login forms.
    Anonymous,
    /// Primary password right; a TOTP or backup code is due. `password_tag`:
    /// the primary password's 16-bit tag, with which the browser may be
    /// trusted once the second step passes (see [`super::trusted`]); `None`
    /// for a session stored before postern kept it.
    SecondStep {
        address: String,
        password_tag: Option<u16>,
    },
    /// Signed in as a mail user (every step the sign-in asked for passed);
    /// `impersonator` is the system administrator acting as this (domain
    /// administrator) user, if any. Whether the user may do everything or only
    /// enroll is derived per request, never stored.
    User {
        address: String,
        impersonator: Option<String>,
    },
    /// Logged in as a system administrator.
    Sysadmin { name: String },
}

impl Auth {
    fn pending(&self) -> bool {
        matches!(self, Auth::Anonymous | Auth::SecondStep { .. })
    }

    /// `(kind, subject, impersonator)` as stored.
    fn to_columns(&self) -> (&'static str, String, Option<String>) {
        match self {
            Auth::Anonymous => ("anonymous", String::new(), None),
            Auth::SecondStep { address, .. } => ("second_step", address.clone(), None),
            Auth::User {
                address,
                impersonator,
            } => ("user", address.clone(), impersonator.clone()),
            Auth::Sysadmin { name } => ("sysadmin", name.clone(), None),
        }
    }

    /// The password tag as stored (second step only).
    fn password_tag(&self) -> Option<i64> {
        match self {
            Auth::SecondStep { password_tag, .. } => password_tag.map(i64::from),
            _ => None,
        }
    }

    fn from_columns(
        kind: &str,
        subject: String,
        impersonator: Option<String>,
        password_tag: Option<i64>,
    ) -> Option<Self> {
        Some(match kind {
            "anonymous" => Auth::Anonymous,
            "second_step" => Auth::SecondStep {
                address: subject,
                password_tag: password_tag.and_then(|t| u16::try_from(t).ok()),
            },
            "user" => Auth::User {
                address: subject,
                impersonator,
            },
            "sysadmin" => Auth::Sysadmin { name: subject },
            _ => return None,
        })
    }
}

fn proof_name(proof: Proof) -> &'static str {
    match proof {
        Proof::PrimaryPassword => "primary_password",
        Proof::SecondFactor => "second_factor",
    }
}

fn proof_from_name(name: &str) -> Option<Proof> {
    match name {
        "primary_password" => Some(Proof::PrimaryPassword),
        "second_factor" => Some(Proof::SecondFactor),
        _ => None,
    }
}

#[derive(Clone, Debug)]
pub struct WebSession {
    pub auth: Auth,
    /// Checked on every state-changing request (form field or `X-CSRF-Token`).
    pub csrf: String,
    /// The last time (Unix seconds) this session proved who its user is, and how:
    /// sensitive actions ask again when it is too old
    /// (`crate::policy::decide_sensitive_action`).
    pub proved: Option<(Proof, i64)>,
}

/// The deadline of a session created at `created` and last seen at `seen`.
fn expires_at(auth: &Auth, created: i64, seen: i64) -> i64 {
    let idle = if auth.pending() { IDLE_PENDING } else { IDLE };
    (seen + idle).min(created + ABSOLUTE)
}

/// How an anonymous (unstored) session id starts.
const ANONYMOUS_PREFIX: &str = "a.";

/// 256 random bits, hex.
pub fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The web sessions of every node, through the store.
///
/// A store failure is logged and the browser is treated as having no session
/// (its next form is refused with "your session ended"), never as signed in.
#[derive(Clone)]
pub struct SessionStore {
    store: Store,
    key: InstanceKey,
}

impl SessionStore {
    pub fn new(store: Store, key: InstanceKey) -> Self {
        Self { store, key }
    }

    /// What is stored for the cookie id `id`: its keyed hash.
    fn hash(&self, id: &str) -> String {
        hex::encode(self.key.mac(&[b"web-session", id.as_bytes()]))
    }

    async fn insert(
        &self,
        replaces: Option<&str>,
        auth: Auth,
        proved: Option<(Proof, i64)>,
    ) -> (String, WebSession) {
        if auth == Auth::Anonymous {
            // Nothing to store; a stored session it replaces ends.
            if let Some(old) = replaces {
                self.remove(old).await;
            }
            return self.new_anonymous();
        }
        let now = unix_now();
        let session = WebSession {
            auth,
            csrf: random_token(),
            proved,
        };
        let id = random_token();
        let (kind, subject, impersonator) = session.auth.to_columns();
        let row = WebSessionRow {
            kind: kind.to_owned(),
            subject,
            impersonator,
            csrf: session.csrf.clone(),
            password_tag: session.auth.password_tag(),
            proved: proved.map(|(p, at)| (proof_name(p).to_owned(), at)),
            created_at: now,
            last_seen_at: now,
            expires_at: expires_at(&session.auth, now, now),
        };
        let old = replaces
            .filter(|old| !old.starts_with(ANONYMOUS_PREFIX))
            .map(|old| self.hash(old));
        if let Err(err) = self
            .store
            .insert_web_session(&self.hash(&id), &row, old.as_deref())
            .await
        {
            error!(error = %err, "cannot store a web session");
        }
        (id, session)
    }

    /// A new session with a fresh id and CSRF token. An anonymous one is not
    /// stored (see the module documentation).
    pub async fn create(&self, auth: Auth) -> (String, WebSession) {
        if auth == Auth::Anonymous {
            return self.new_anonymous();
        }
        self.insert(None, auth, None).await
    }

    fn new_anonymous(&self) -> (String, WebSession) {
        let id = format!("{ANONYMOUS_PREFIX}{}.{}", unix_now(), random_token());
        let session = self.anonymous(&id);
        (id, session)
    }

    /// The anonymous session an unstored id stands for: its form token is
    /// derived from the id.
    fn anonymous(&self, id: &str) -> WebSession {
        WebSession {
            auth: Auth::Anonymous,
            csrf: hex::encode(self.key.mac(&[b"web-anonymous-csrf", id.as_bytes()])),
            proved: None,
        }
    }

    /// The anonymous session `id` names, if it is one of ours in its form and
    /// was issued within the pending idle time (a login form left open longer
    /// is refused as before). Nothing is read from the store.
    fn live_anonymous(&self, id: &str, now: i64) -> Option<WebSession> {
        let rest = id.strip_prefix(ANONYMOUS_PREFIX)?;
        let (issued, random) = rest.split_once('.')?;
        let issued: i64 = issued.parse().ok()?;
        let fresh = issued <= now + TOUCH_EVERY && now - issued < IDLE_PENDING;
        let well_formed = random.len() == 64 && random.bytes().all(|b| b.is_ascii_hexdigit());
        (fresh && well_formed).then(|| self.anonymous(id))
    }

    /// The live session with this id, if any; its idle timer restarts (written
    /// at most once a minute).
    pub async fn get(&self, id: &str) -> Option<WebSession> {
        if id.is_empty() || id.len() > 128 {
            return None;
        }
        let now = unix_now();
        if id.starts_with(ANONYMOUS_PREFIX) {
            return self.live_anonymous(id, now);
        }
        let hash = self.hash(id);
        let row = match self.store.web_session(&hash, now).await {
            Ok(row) => row?,
            Err(err) => {
                error!(error = %err, "cannot read a web session");
                return None;
            }
        };
        let Some(auth) =
            Auth::from_columns(&row.kind, row.subject, row.impersonator, row.password_tag)
        else {
            error!(kind = %row.kind, "a stored web session has an unknown kind");
            return None;
        };
        if now - row.last_seen_at >= TOUCH_EVERY {
            let deadline = expires_at(&auth, row.created_at, now);
            if let Err(err) = self.store.touch_web_session(&hash, now, deadline).await {
                error!(error = %err, "cannot record a web session's activity");
            }
        }
        let proved = row
            .proved
            .and_then(|(kind, at)| proof_from_name(&kind).map(|p| (p, at)));
        Some(WebSession {
            auth,
            csrf: row.csrf,
            proved,
        })
    }

    /// Ends `old` and starts a session with a new id and token for `auth`.
    pub async fn rotate(&self, old: &str, auth: Auth) -> (String, WebSession) {
        self.insert(Some(old), auth, None).await
    }

    /// Like [`rotate`](Self::rotate), for a sign-in step that just proved who the
    /// user is.
    pub async fn rotate_proved(&self, old: &str, auth: Auth, proof: Proof) -> (String, WebSession) {
        self.insert(Some(old), auth, Some((proof, unix_now())))
            .await
    }

    /// Records a re-authentication (or a factor just confirmed) in a live session.
    pub async fn record_proof(&self, id: &str, proof: Proof) {
        let hash = self.hash(id);
        if let Err(err) = self
            .store
            .prove_web_session(&hash, proof_name(proof), unix_now())
            .await
        {
            error!(error = %err, "cannot record a proof in a web session");
        }
    }

    /// Ends one session (sign-out).
    pub async fn remove(&self, id: &str) {
        if id.starts_with(ANONYMOUS_PREFIX) {
            return;
        }
        if let Err(err) = self.store.delete_web_session(&self.hash(id)).await {
            error!(error = %err, "cannot end a web session");
        }
    }

    /// Ends every session of the user `address`, on every node ("sign out
    /// everywhere"), audited as `actor`.
    pub async fn end_all(
        &self,
        address: &str,
        actor: &crate::store::RemoteActor,
    ) -> Result<u64, crate::store::StoreError> {
        let ended = self.store.end_user_web_sessions(address, actor).await?;
        tracing::info!(address, ended, "signed out everywhere");
        Ok(ended)
    }

    /// Deletes expired rows (sessions and trusted browsers), every
    /// [`SWEEP_EVERY`], for as long as the node runs.
    pub async fn sweep_forever(self) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tick.tick().await;
            if let Err(err) = self.store.sweep_web_sessions(unix_now()).await {
                error!(error = %err, "cannot sweep expired web sessions");
            }
            if let Err(err) = self.store.sweep_trusted_browsers(unix_now()).await {
                error!(error = %err, "cannot sweep expired trusted browsers");
            }
        }
    }
}

/// The `Set-Cookie` value for a session change: HttpOnly, SameSite=Strict,
/// Path=/; with `https`, Secure and the `__Host-` name.
pub fn set_cookie(id: Option<&str>, https: bool) -> String {
    let name = if https { HOST_COOKIE } else { COOKIE };
    let mut cookie = Cookie::build((name, id.unwrap_or("").to_owned()))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(https);
    if id.is_none() {
        cookie = cookie.max_age(cookie::time::Duration::ZERO);
    }
    cookie.build().to_string()
}

/// The session id a request's `Cookie` headers carry under the cookie's name
/// for this scheme.
pub fn session_id<'a>(headers: impl IntoIterator<Item = &'a str>, https: bool) -> Option<String> {
    let name = if https { HOST_COOKIE } else { COOKIE };
    headers
        .into_iter()
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_carry_the_host_prefix_and_flags_over_https() {
        let set = set_cookie(Some("abc"), true);
        assert!(set.starts_with("__Host-postern_session=abc"), "{set}");
        for flag in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(set.contains(flag), "{set}");
        }
        assert!(!set.contains("Domain"), "{set}");
        let plain = set_cookie(None, false);
        assert!(plain.starts_with("postern_session="), "{plain}");
        assert!(
            plain.contains("Max-Age=0") && !plain.contains("Secure"),
            "{plain}"
        );
        assert_eq!(
            session_id(["a=1; __Host-postern_session=xyz"], true).as_deref(),
            Some("xyz")
        );
        assert_eq!(session_id(["postern_session=xyz"], true), None);
    }

    #[test]
    fn the_deadline_is_the_earlier_of_idle_and_absolute() {
        let user = Auth::User {
            address: "a@b.test".into(),
            impersonator: None,
        };
        assert_eq!(expires_at(&user, 0, 100), 100 + IDLE);
        assert_eq!(expires_at(&Auth::Anonymous, 0, 100), 100 + IDLE_PENDING);
        assert_eq!(expires_at(&user, 0, ABSOLUTE), ABSOLUTE);
    }
}
