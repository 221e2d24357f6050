//! Credentials postern issues or checks itself: app passwords (generate, hash,
//! keyed lookup, verification cache), the instance key, and TOTP secrets.
//!
//! Primary passwords are never stored or checked here: only the upstream server
//! knows them.

pub mod app_password;
pub mod issue;
pub mod key;
pub mod totp;
pub mod verifier;

pub use app_password::{AppPassword, CanonicalAppPassword};
pub use issue::{BadExpiry, IssuedAppPassword, expiry_after_days, issue_app_password};
pub use key::InstanceKey;
pub use verifier::AppPasswordVerifier;
