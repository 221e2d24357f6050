//! Credentials postern issues or checks itself: app passwords (generate, keyed
//! lookup), the instance key, TOTP secrets, the passkeys' WebAuthn relying party, and the Argon2id hashes of system
//! administrators' passwords.
//!
//! Primary passwords are never stored or checked here: only the upstream server
//! knows them.

pub mod admin_password;
pub mod app_password;
pub mod issue;
pub mod key;
pub mod passkey;
pub mod totp;

pub use admin_password::AdminPasswords;
pub use app_password::{AppPassword, CanonicalAppPassword};
pub use issue::{
    AppPasswordLimits, BadExpiry, IssuedAppPassword, expiry_after_days, issue_app_password,
    issue_limited_app_password,
};
pub use key::InstanceKey;
