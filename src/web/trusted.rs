//! Trusted browsers: "don't ask again on this browser for 30 days" at the web
//! sign-in's second step.
//!
//! The browser gets a cookie of its own, apart from the session's, holding a
//! random 256-bit id (HttpOnly, SameSite=Strict, Path=/; `__Host-` and Secure
//! behind an https `public_url`, as the session cookie). The store keeps only
//! the id's HMAC under the instance key, with the user, the times, a short
//! description of the browser from `User-Agent`, and a 16-bit tag of a keyed
//! hash of the primary password the browser was trusted with. Everything is in
//! the store, so any node honours the cookie and a restart forgets nothing.
//!
//! At sign-in, once the primary password is accepted and the policy table
//! asks for the second step, [`skips_second_step`] is the one call that may
//! let the browser skip it; whether it may is
//! `crate::policy::decide_trusted_browser`'s decision. A password tag that
//! differs from the stored one means the password was changed upstream (which
//! postern never sees): the row is voided. Why 16 bits: SECURITY.md.
//!
//! This module never signs anyone in by itself: the cookie only ever replaces
//! the second step, after a right primary password.

use cookie::{Cookie, SameSite};
use tracing::{info, warn};

use super::ops::{Requester, WebError, user_context};
use super::session::random_token;
use super::{Current, TrustedCookie, WebState};
use crate::clock::unix_now;
use crate::credentials::InstanceKey;
use crate::policy::{
    TRUSTED_BROWSER_SECS, TrustedBrowser, TrustedBrowserCheck, WebLoginStep,
    decide_trusted_browser, may_trust_browser,
};
use crate::store::{Account, AuditActor, NewTrustedBrowser, RemoteActor, TrustedBrowserRecord};

/// The cookie's name over plain HTTP.
pub const COOKIE: &str = "postern_trusted";
/// The cookie's name when `public_url` is https (see `super::session::HOST_COOKIE`).
pub const HOST_COOKIE: &str = "__Host-postern_trusted";

/// The `Set-Cookie` value that trusts this browser with `id` for
/// [`TRUSTED_BROWSER_SECS`], or (`None`) removes the cookie.
pub fn set_cookie(id: Option<&str>, https: bool) -> String {
    let name = if https { HOST_COOKIE } else { COOKIE };
    let max_age = if id.is_some() {
        TRUSTED_BROWSER_SECS
    } else {
        0
    };
    Cookie::build((name, id.unwrap_or("").to_owned()))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(https)
        .max_age(cookie::time::Duration::seconds(max_age))
        .build()
        .to_string()
}

/// The trusted-browser id a request's `Cookie` headers carry, if it has the
/// form of one (64 hex digits); anything else is ignored unread.
pub fn cookie_id<'a>(headers: impl IntoIterator<Item = &'a str>, https: bool) -> Option<String> {
    let name = if https { HOST_COOKIE } else { COOKIE };
    headers
        .into_iter()
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
        .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What is stored for the cookie id `id`: its keyed hash.
fn id_hash(key: &InstanceKey, id: &str) -> String {
    hex::encode(key.mac(&[b"trusted-browser", id.as_bytes()]))
}

/// The 16-bit tag of the primary password `password` of `address`: the first
/// two bytes of its HMAC under the instance key. Enough to notice a changed
/// password (all but one in 65,536 changes), too short to test guesses
/// against (SECURITY.md).
pub fn password_tag(key: &InstanceKey, address: &str, password: &str) -> u16 {
    let mac = key.mac(&[
        b"trusted-browser-password",
        address.as_bytes(),
        password.as_bytes(),
    ]);
    u16::from_be_bytes([mac[0], mac[1]])
}

/// Bytes of `User-Agent` looked at; the rest is ignored.
const MAX_USER_AGENT: usize = 512;

/// A short description of a browser from its `User-Agent` ("Firefox on
/// Linux", "Safari on iPhone"), from a fixed vocabulary: the header itself is
/// never stored.
pub fn describe_browser(user_agent: &str) -> String {
    let end = (0..=user_agent.len().min(MAX_USER_AGENT))
        .rev()
        .find(|i| user_agent.is_char_boundary(*i))
        .unwrap_or(0);
    let ua = &user_agent[..end];
    let has = |needle: &str| ua.contains(needle);
    // Order matters: Edge and Opera also say Chrome, Chrome also says Safari.
    let browser = if has("Edg/") || has("EdgA/") || has("EdgiOS/") {
        "Edge"
    } else if has("OPR/") || has("Opera") {
        "Opera"
    } else if has("SamsungBrowser/") {
        "Samsung Internet"
    } else if has("Firefox/") || has("FxiOS/") {
        "Firefox"
    } else if has("Chrome/") || has("CriOS/") || has("Chromium/") {
        "Chrome"
    } else if has("Safari/") && has("Version/") {
        "Safari"
    } else if has("curl/") {
        "curl"
    } else {
        "Unknown browser"
    };
    let system = if has("iPhone") {
        Some("iPhone")
    } else if has("iPad") {
        Some("iPad")
    } else if has("Android") {
        Some("Android")
    } else if has("Windows") {
        Some("Windows")
    } else if has("CrOS") {
        Some("ChromeOS")
    } else if has("Macintosh") || has("Mac OS X") {
        Some("macOS")
    } else if has("Linux") || has("X11") {
        Some("Linux")
    } else {
        None
    };
    match system {
        Some(system) => format!("{browser} on {system}"),
        None => browser.to_owned(),
    }
}

/// The one call in the sign-in: the primary password of `account` was just
/// accepted and the policy table asks for `step`. True when the browser's
/// trusted-browser cookie (`cookie`) lets this sign-in skip the second step:
/// the use is recorded and audited. A browser the policy voids (expired, the
/// password changed, the domain no longer allows it) is forgotten. A store
/// failure is logged and the second step asked, never skipped.
pub async fn skips_second_step(
    state: &WebState,
    account: &Account,
    password: &str,
    cookie: Option<&str>,
    step: WebLoginStep,
    ip: Option<&str>,
) -> bool {
    let (Some(id), Some(user)) = (cookie, &account.user) else {
        return false;
    };
    if step != WebLoginStep::SecondStep {
        return false;
    }
    let row = match state.store.trusted_browser(&id_hash(&state.key, id)).await {
        // Another user's trusted browser vouches for nobody else.
        Ok(Some(row)) if row.user_id == user.id => row,
        Ok(_) => return false,
        Err(err) => {
            warn!(error = %err, "cannot read a trusted browser; asking for the second step");
            return false;
        }
    };
    let browser = TrustedBrowser {
        expires_at: row.expires_at,
        same_password: row.password_tag == password_tag(&state.key, &user.address, password),
    };
    let allows = account.domain.as_ref().is_none_or(|d| d.trusted_browsers);
    let now = unix_now();
    match decide_trusted_browser(allows, account.state(), step, Some(browser), now) {
        TrustedBrowserCheck::Skip => {
            match state
                .store
                .trusted_browser_signed_in(user.id, row.id, now, ip)
                .await
            {
                Ok(()) => true,
                Err(err) => {
                    warn!(error = %err, "cannot record a trusted browser's use; asking for the second step");
                    false
                }
            }
        }
        TrustedBrowserCheck::NoSkip => false,
        TrustedBrowserCheck::Void(why) => {
            let actor = RemoteActor {
                name: "system".into(),
                ip: ip.map(str::to_owned),
            };
            match state
                .store
                .forget_trusted_browser(user.id, row.id, why.as_str(), &actor)
                .await
            {
                Ok(()) => {
                    info!(user = %user.address, why = why.as_str(), "a trusted browser was voided at sign-in")
                }
                Err(err) => warn!(error = %err, "cannot forget a voided trusted browser"),
            }
            false
        }
    }
}

/// After a second step that passed with "Don't ask again on this browser"
/// ticked: trusts this browser for the user at `address`, if the policy lets
/// it, and returns the cookie to set. The primary password's tag is the one
/// the session kept from the password step. A failure is logged and the
/// sign-in goes on without trusting the browser.
pub async fn trust_this_browser(
    state: &WebState,
    current: &Current,
    address: &str,
) -> Option<TrustedCookie> {
    let tag = current.password_tag()?;
    let (domain, user) = match user_context(state, address).await {
        Ok(found) => found,
        Err(err) => {
            warn!(error = %err, "cannot trust a browser");
            return None;
        }
    };
    let allows = domain.as_ref().is_none_or(|d| d.trusted_browsers);
    if !may_trust_browser(allows, false) {
        return None;
    }
    let id = random_token();
    let hash = id_hash(&state.key, &id);
    let replaces = current
        .trusted
        .as_deref()
        .map(|old| id_hash(&state.key, old));
    let now = unix_now();
    let browser = current.browser();
    let record = NewTrustedBrowser {
        id_hash: &hash,
        browser: &browser,
        password_tag: tag,
        created_at: now,
        expires_at: now + TRUSTED_BROWSER_SECS,
        replaces: replaces.as_deref(),
    };
    let actor = RemoteActor {
        name: super::ops::user_actor(&user.address, None),
        ip: current.ip_string(),
    };
    match state.store.trust_browser(user.id, &record, &actor).await {
        Ok(_) => Some(TrustedCookie::Set(id)),
        Err(err) => {
            warn!(error = %err, "cannot trust a browser");
            None
        }
    }
}

/// Whether the domain of `address` lets browsers be trusted: the second step
/// offers the checkbox only then.
pub async fn offered(state: &WebState, address: &str) -> bool {
    match user_context(state, address).await {
        Ok((domain, _)) => may_trust_browser(domain.is_none_or(|d| d.trusted_browsers), false),
        Err(_) => false,
    }
}

/// One of the user's trusted browsers, as the account page and the API show it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrustedBrowserView {
    pub id: i64,
    pub browser: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub expires_at: i64,
    /// The browser this request comes from.
    pub this_browser: bool,
}

fn view(record: TrustedBrowserRecord, this: Option<&str>) -> TrustedBrowserView {
    TrustedBrowserView {
        this_browser: this == Some(record.id_hash.as_str()),
        id: record.id,
        browser: record.browser,
        created_at: record.created_at,
        last_used_at: record.last_used_at,
        expires_at: record.expires_at,
    }
}

/// The user's trusted browsers that have not expired, newest first; the one
/// `current` comes from is marked.
pub async fn list(
    state: &WebState,
    address: &str,
    current: &Current,
) -> Result<Vec<TrustedBrowserView>, WebError> {
    let (_, user) = user_context(state, address).await?;
    let this = current.trusted.as_deref().map(|id| id_hash(&state.key, id));
    Ok(state
        .store
        .trusted_browsers(user.id, unix_now())
        .await?
        .into_iter()
        .map(|r| view(r, this.as_deref()))
        .collect())
}

/// Forgets one of the user's trusted browsers: the next sign-in there asks for
/// the second step again. Returns the cookie change for this browser (cleared
/// when it is the one forgotten).
pub async fn forget(
    state: &WebState,
    who: &Requester<'_>,
    id: i64,
    current: &Current,
) -> Result<Option<TrustedCookie>, WebError> {
    let (_, user) = user_context(state, who.address).await?;
    let this = current.trusted.as_deref().map(|c| id_hash(&state.key, c));
    let was_this = state
        .store
        .trusted_browsers(user.id, unix_now())
        .await?
        .iter()
        .any(|r| r.id == id && this.as_deref() == Some(r.id_hash.as_str()));
    state
        .store
        .forget_trusted_browser(user.id, id, "forgotten", &who.actor())
        .await?;
    Ok(was_this.then_some(TrustedCookie::Clear))
}

/// Forgets every trusted browser of the user ("Forget all browsers"); returns
/// how many there were, and clears this browser's cookie if it has one.
pub async fn forget_all(
    state: &WebState,
    who: &Requester<'_>,
    current: &Current,
) -> Result<(u64, Option<TrustedCookie>), WebError> {
    let (_, user) = user_context(state, who.address).await?;
    let forgotten = state
        .store
        .forget_trusted_browsers(user.id, "forget all", &who.actor())
        .await?;
    Ok((
        forgotten,
        current.trusted.is_some().then_some(TrustedCookie::Clear),
    ))
}

/// The user has no second factor left (2-Step turned off, or the last factor
/// removed): every trusted browser is forgotten, so that enrolling again starts
/// with none.
pub async fn two_step_off(
    state: &WebState,
    user_id: i64,
    actor: &(impl AuditActor + ?Sized),
) -> Result<(), WebError> {
    state
        .store
        .forget_trusted_browsers(user_id, "2-Step turned off", actor)
        .await?;
    Ok(())
}

/// The second step was passed (a code or a passkey, on a page or through the
/// API): the browser is trusted first when the user ticked "Don't ask again",
/// then the session is signed in under a new id. Returns the new id, its row,
/// and the trusted-browser cookie to set, if any.
pub async fn second_step_passed(
    state: &WebState,
    current: &Current,
    id: &str,
    address: String,
    remember: bool,
) -> (String, super::session::WebSession, Option<TrustedCookie>) {
    let trust = match remember {
        true => trust_this_browser(state, current, &address).await,
        false => None,
    };
    let auth = super::session::Auth::User {
        address,
        impersonator: None,
    };
    let (new_id, session) = state
        .sessions
        .rotate_proved(id, auth, crate::policy::Proof::SecondFactor)
        .await;
    (new_id, session, trust)
}

/// Attaches a trusted-browser cookie change, if any, to a response.
pub fn attach(
    change: Option<TrustedCookie>,
    response: axum::response::Response,
) -> axum::response::Response {
    match change {
        Some(change) => super::with_trusted_cookie(change, response),
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_are_described_from_a_fixed_vocabulary() {
        for (ua, expected) in [
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
                "Chrome on Linux",
            ),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36",
                "Chrome on Linux",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
                "Firefox on Windows",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
                "Edge on Windows",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
                "Safari on iPhone",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
                "Safari on macOS",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
                "Chrome on Android",
            ),
            ("", "Unknown browser"),
            ("<script>alert(1)</script>", "Unknown browser"),
        ] {
            assert_eq!(describe_browser(ua), expected, "{ua}");
        }
        // A huge header is looked at only so far, and cut on a character boundary.
        let long = format!("{}Firefox/1", "é".repeat(MAX_USER_AGENT));
        assert_eq!(describe_browser(&long), "Unknown browser");
    }

    #[test]
    fn the_cookie_is_long_lived_and_carries_the_session_cookies_flags() {
        let id = "ab".repeat(32);
        let set = set_cookie(Some(&id), true);
        assert!(
            set.starts_with(&format!("__Host-postern_trusted={id}")),
            "{set}"
        );
        for flag in [
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/",
            "Max-Age=2592000",
        ] {
            assert!(set.contains(flag), "{set}");
        }
        assert!(!set.contains("Domain"), "{set}");
        let cleared = set_cookie(None, false);
        assert!(cleared.starts_with("postern_trusted=;"), "{cleared}");
        assert!(cleared.contains("Max-Age=0") && !cleared.contains("Secure"));
        let header = format!("postern_session=x; __Host-postern_trusted={id}");
        assert_eq!(cookie_id([header.as_str()], true), Some(id.clone()));
        assert_eq!(cookie_id([header.as_str()], false), None);
        assert_eq!(cookie_id(["postern_trusted=short"], false), None);
    }
}
