//! Credentials postern issues or checks itself: app passwords (generate, keyed
//! lookup), the instance key, and TOTP secrets.
//!
//! Primary passwords are never stored or checked here: only the upstream server
//! knows them.

pub mod app_password;
pub mod issue;
pub mod key;
pub mod totp;

pub use app_password::{AppPassword, CanonicalAppPassword};
pub use issue::{IssuedAppPassword, issue_app_password};
pub use key::InstanceKey;
