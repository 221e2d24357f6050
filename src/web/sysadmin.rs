//! The system administrators' own login: sign-in, the one-time password of a
//! first start, and changing a password. Shared by the pages and the JSON API.
//!
//! Everything here is reached before anyone is authenticated, so every field is
//! capped before it is used ([`MAX_NAME_BYTES`], [`MAX_PASSWORD_BYTES`]), a
//! client network may try [`RATE_LIMIT`](super::attempts::RATE_LIMIT) times a
//! minute, and a wrong password
//! - delays that client's next answer as on the mail ports (`crate::penalty`),
//! - counts towards a lock of the name *for that client network only*
//!   ([`super::attempts`]), so nobody can lock `admin` out for everyone,
//! - costs one Argon2 run whether or not the name exists.
//!
//! It must not decide mail logins, nor keep anything per request beyond the
//! bounded counters above.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::WebState;
use super::ops::WebError;
use crate::credentials::AppPassword;
use crate::login_log::LoginAttempt;
use crate::net::ClientKey;
use crate::secret::Secret;
use crate::store::Store;

/// Longest system administrator name accepted (bytes).
pub const MAX_NAME_BYTES: usize = 256;
/// Longest password accepted (bytes): far above NIST SP 800-63B's 64
/// characters, far below what would make Argon2 or a log line expensive.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Shortest password a system administrator may choose (characters).
pub const MIN_PASSWORD_CHARS: usize = 12;
/// The name of the first start's system administrator.
pub const FIRST_SYSADMIN: &str = "admin";

/// What a sign-in led to.
#[derive(Debug, PartialEq, Eq)]
pub enum SysadminLogin {
    Wrong,
    SignedIn,
    /// The password was right but is the one-time password of a first start:
    /// a new one must be chosen before anything else.
    MustChangePassword,
}

/// What a password change led to.
#[derive(Debug, PartialEq, Eq)]
pub enum PasswordChange {
    Changed,
    /// Wrong name or current password (counted like a wrong sign-in).
    WrongCurrent,
    /// The new password is not acceptable; the text says why.
    Rejected(String),
}

/// At most `max` bytes of `text`, cut at a character boundary (for log lines).
fn capped(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn refusal(name: &str, ip: IpAddr, reason: &'static str) {
    LoginAttempt::new("admin", "password", capped(name, MAX_NAME_BYTES), ip).refused(reason);
}

/// Refuses over-long fields before anything is read, stored or locked.
fn check_caps(name: &str, ip: IpAddr, passwords: &[&str]) -> Result<(), WebError> {
    if name.len() > MAX_NAME_BYTES {
        refusal(name, ip, "field-too-long");
        return Err(WebError::BadRequest(format!(
            "name: at most {MAX_NAME_BYTES} bytes"
        )));
    }
    if passwords.iter().any(|p| p.len() > MAX_PASSWORD_BYTES) {
        refusal(name, ip, "field-too-long");
        return Err(WebError::BadRequest(format!(
            "password: at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

fn lock_key(name: &str, ip: IpAddr) -> String {
    format!("a:{}:{}", name, ClientKey::new(ip))
}

fn penalty_account(name: &str) -> String {
    format!("sysadmin:{name}")
}

/// The rate limit and the penalty delay, before any other work.
async fn admit(state: &WebState, name: &str, ip: IpAddr) -> Result<(), WebError> {
    if !state.admin_rate.allow(ip).await? {
        refusal(name, ip, "rate-limited");
        return Err(WebError::TooMany(
            "too many sign-in attempts from your address; wait a minute".into(),
        ));
    }
    let delay = state.penalties.delay(ip).await;
    if !delay.is_zero() {
        metrics::counter!(crate::metrics::PENALTY_SECONDS).increment(delay.as_secs());
        tokio::time::sleep(delay).await;
    }
    if state.attempts.locked(&[&lock_key(name, ip)]).await? {
        refusal(name, ip, "locked");
        return Err(WebError::Forbidden(
            "too many wrong passwords from your address; wait 15 minutes".into(),
        ));
    }
    Ok(())
}

/// Checks `name` and `password` (one Argon2 run, also for an unknown name).
/// Returns the stored hash when right, `None` when wrong (counted and logged).
async fn verify(
    state: &WebState,
    name: &str,
    password: &Secret<String>,
    ip: IpAddr,
) -> Result<Option<crate::store::SysadminRecord>, WebError> {
    let record = state.store.sysadmin(name).await?;
    let right = state
        .admin_passwords
        .verify(password, record.as_ref().map(|r| r.password_hash.as_str()))
        .await
        .unwrap_or_else(|_| {
            warn!("system administrator login: the Argon2 task failed");
            false
        });
    let ip_text = ip.to_string();
    if right {
        state.attempts.succeed(&[&lock_key(name, ip)]).await?;
        state.penalties.succeeded(ip, &penalty_account(name)).await;
        return Ok(record);
    }
    state.attempts.fail(&[&lock_key(name, ip)]).await?;
    let attempt = state.key.mac(&[
        b"sysadmin-attempt",
        name.as_bytes(),
        password.expose().as_bytes(),
    ]);
    state
        .penalties
        .failed(ip, &penalty_account(name), attempt)
        .await;
    refusal(
        name,
        ip,
        if record.is_some() {
            "wrong-password"
        } else {
            "unknown-user"
        },
    );
    state
        .store
        .audit(
            &format!("sysadmin:{name}"),
            "web.admin_login.refused",
            name,
            "",
            Some(&ip_text),
        )
        .await?;
    Ok(None)
}

fn client_or_loopback(client: Option<IpAddr>) -> IpAddr {
    client.unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// A system administrator's sign-in.
pub async fn sign_in(
    state: &WebState,
    name: &str,
    password: &str,
    client: Option<IpAddr>,
) -> Result<SysadminLogin, WebError> {
    let ip = client_or_loopback(client);
    check_caps(name, ip, &[password])?;
    let name = name.trim();
    admit(state, name, ip).await?;
    let password = Secret::from(password);
    let Some(record) = verify(state, name, &password, ip).await? else {
        return Ok(SysadminLogin::Wrong);
    };
    if record.must_change_password {
        LoginAttempt::new("admin", "password", name, ip).password_ok("change-password");
        return Ok(SysadminLogin::MustChangePassword);
    }
    LoginAttempt::new("admin", "password", name, ip).ok();
    let ip_text = ip.to_string();
    state
        .store
        .audit(
            &format!("sysadmin:{name}"),
            "web.admin_login",
            name,
            "",
            Some(&ip_text),
        )
        .await?;
    Ok(SysadminLogin::SignedIn)
}

/// Changes `name`'s password after checking the current one (with the same
/// limits as a sign-in). Clears the one-time flag.
pub async fn change_password(
    state: &WebState,
    name: &str,
    current: &str,
    new: &str,
    confirm: &str,
    client: Option<IpAddr>,
) -> Result<PasswordChange, WebError> {
    let ip = client_or_loopback(client);
    check_caps(name, ip, &[current, new, confirm])?;
    let name = name.trim();
    admit(state, name, ip).await?;
    if let Err(why) = acceptable_new_password(name, current, new, confirm) {
        return Ok(PasswordChange::Rejected(why));
    }
    let current = Secret::from(current);
    let Some(record) = verify(state, name, &current, ip).await? else {
        return Ok(PasswordChange::WrongCurrent);
    };
    let new_hash = state
        .admin_passwords
        .hash(&Secret::from(new))
        .await
        .map_err(|_| WebError::TooMany("the server is busy; try again in a minute".into()))?;
    let ip_text = ip.to_string();
    if !state
        .store
        .change_sysadmin_password(name, &record.password_hash, &new_hash, Some(&ip_text))
        .await?
    {
        // Changed by someone else between the check and the write.
        return Ok(PasswordChange::WrongCurrent);
    }
    info!(user = %name, client = %ip, one_time = record.must_change_password, "a system administrator changed their password");
    if record.must_change_password
        && let Some(file) = &state.first_password_file
        && file.exists()
        && let Err(err) = std::fs::remove_file(file)
    {
        warn!(file = %file.display(), error = %err, "could not remove the one-time password file");
    }
    Ok(PasswordChange::Changed)
}

/// The most common passwords of breach corpora that the length rule alone does
/// not stop (no crate ships a breached-password list for offline use), and the
/// words that, with digits or symbols around them, make the rest of such lists.
const COMMON_PASSWORDS: &[&str] = &[
    "123456789012",
    "1234567890123",
    "12345678901234",
    "123456789987654321",
    "1234567890qwerty",
    "qwertyuiop123",
    "qwertyuiopasdfghjkl",
    "qwertyuiopasdfgh",
    "1q2w3e4r5t6y",
    "1q2w3e4r5t6y7u8i",
    "1qaz2wsx3edc",
    "1qaz2wsx3edc4rfv",
    "qazwsxedcrfv",
    "zaq12wsxcde3",
    "abcdefghijkl",
    "abcdefghijklmnop",
    "abc123abc123",
    "123abc123abc",
    "123qweasdzxc",
    "passwordpassword",
    "adminadminadmin",
    "administrator",
    "correcthorsebatterystaple",
    "thequickbrownfox",
];
const COMMON_WORDS: &[&str] = &[
    "password",
    "passw0rd",
    "p@ssw0rd",
    "admin",
    "administrator",
    "root",
    "qwerty",
    "letmein",
    "welcome",
    "changeme",
    "iloveyou",
    "postern",
    "master",
    "secret",
    "default",
    "login",
];

/// NIST SP 800-63B §5.1.1.2: a length floor, a generous ceiling, no composition
/// rules, and a check against common and context-specific passwords.
pub fn acceptable_new_password(
    name: &str,
    current: &str,
    new: &str,
    confirm: &str,
) -> Result<(), String> {
    if new != confirm {
        return Err("the two new passwords differ".into());
    }
    if new.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "choose a password of at least {MIN_PASSWORD_CHARS} characters (a few words make a good one)"
        ));
    }
    if new.len() > MAX_PASSWORD_BYTES {
        return Err(format!("at most {MAX_PASSWORD_BYTES} bytes"));
    }
    if new == current {
        return Err("choose a password other than the current one".into());
    }
    let folded = new.to_lowercase();
    let mut distinct: Vec<char> = folded.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() <= 2 {
        return Err("that password repeats one or two characters; choose another".into());
    }
    // Without separators, and without the digits and symbols people put
    // around a word to pass composition rules.
    let bare: String = folded.chars().filter(|c| c.is_alphanumeric()).collect();
    let core = folded.trim_matches(|c: char| !c.is_alphabetic());
    let name = name.to_lowercase();
    if COMMON_PASSWORDS.contains(&bare.as_str())
        || COMMON_WORDS.contains(&core)
        || core == name
        || folded == name
    {
        return Err("that password is too common or too easy to guess; choose another".into());
    }
    Ok(())
}

/// Where a first start writes the one-time password: beside the instance key,
/// in the data folder.
pub fn first_password_file(key_file: &Path) -> PathBuf {
    key_file
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("first-admin-password")
}

/// Writes the password to a new file only its owner can read.
fn write_secret_file(path: &Path, password: &str) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    writeln!(file, "{password}")?;
    file.sync_all()
}

/// A first start with no system administrator: create `admin` with a random
/// one-time password, written to [`first_password_file`] (mode 0600), never to
/// the log. If that file cannot be written the password goes to standard error
/// once. Signing in with it leads straight to choosing a new password.
pub async fn ensure_first_sysadmin(store: &Store, file: &Path) {
    match store.sysadmin_count().await {
        Ok(0) => {}
        Ok(_) => return,
        Err(err) => {
            warn!(error = %err, "could not count system administrators");
            return;
        }
    }
    let password = AppPassword::generate().display();
    let secret = password.clone();
    let hashed = tokio::task::spawn_blocking(move || {
        crate::credentials::admin_password::hash_blocking(secret.expose())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    let hash = match hashed {
        Ok(hash) => hash,
        Err(err) => {
            warn!(error = %err, "could not hash the first administrator's password");
            return;
        }
    };
    match store.create_first_sysadmin(FIRST_SYSADMIN, &hash).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(err) => {
            warn!(error = %err, "could not create the first system administrator");
            return;
        }
    }
    match write_secret_file(file, password.expose()) {
        Ok(()) => warn!(
            file = %file.display(),
            "no system administrator existed: created `admin` with a one-time password, \
             written to this file (readable by its owner only); sign in at /admin/login, \
             choose your own password, and the file is removed"
        ),
        Err(err) => {
            warn!(
                file = %file.display(),
                error = %err,
                "no system administrator existed: created `admin` with a one-time password; \
                 it could not be written to this file, so it is on standard error"
            );
            eprintln!(
                "postern: one-time password of system administrator `admin`: {} \
                 (sign in at /admin/login to choose your own)",
                password.expose()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_passwords_follow_nist_length_rules_without_composition_rules() {
        let ok = |p: &str| acceptable_new_password("admin", "old-one-time", p, p);
        assert!(ok("short").is_err());
        assert!(ok("elevenchars").is_err());
        assert!(ok("twelve chars").is_ok(), "no composition rules");
        assert!(ok("tout à fait ça, 🙂 ok").is_ok(), "any character");
        assert!(ok(&"long passphrase ".repeat(8)).is_ok(), "128 characters");
        assert!(ok(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        assert!(acceptable_new_password("admin", "", "twelve chars", "twelve charz").is_err());
        assert!(
            acceptable_new_password(
                "admin",
                "same as before",
                "same as before",
                "same as before"
            )
            .is_err()
        );
    }

    #[test]
    fn common_and_context_specific_passwords_are_refused() {
        let ok = |p: &str| acceptable_new_password("operator-jane", "x", p, p);
        for bad in [
            "123456789012",
            "Password1234",
            "P@ssw0rd!!2024",
            "administrator",
            "aaaaaaaaaaaaaa",
            "abababababab",
            "1qaz2wsx3edc",
            "Operator-Jane",
            "operator-jane99",
            "postern123456",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
        assert!(ok("correct horse battery").is_ok());
    }

    #[test]
    fn the_first_password_file_is_beside_the_key() {
        assert_eq!(
            first_password_file(Path::new("data/postern.key")),
            PathBuf::from("data/first-admin-password")
        );
        assert_eq!(
            first_password_file(Path::new("postern.key")),
            PathBuf::from("./first-admin-password")
        );
    }
}
