//! Mail addresses as postern keys them: trimmed and lower-cased (Unicode, so
//! `JÜRGEN@example.org` and `jürgen@example.org` are one user), checked once.
//!
//! Every place that compares or keys a user by address goes through here: the
//! store ([`Address::parse`], behind `store::normalize_address`), the login
//! penalties, the live-session re-checks and the recovery-address rule
//! ([`fold`], for names that may not be addresses at all). One fold everywhere
//! means no two places can disagree on whether two spellings are one account.

use std::fmt;

/// The longest address accepted, in bytes (after folding).
pub const MAX_LEN: usize = 256;

/// A folded, checked `local@domain`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(String);

/// Why a text is not an address; names the folded text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} {why}")]
pub struct AddressError {
    pub text: String,
    pub why: &'static str,
}

/// The key of a name typed at a login or into a form, whether or not it is an
/// address: trimmed, lower-cased as [`Address`] does.
pub fn fold(name: &str) -> String {
    name.trim().to_lowercase()
}

/// Whether two names are one account.
pub fn same(a: &str, b: &str) -> bool {
    fold(a) == fold(b)
}

impl Address {
    /// `text` folded: exactly one '@', both parts non-empty, no whitespace or
    /// control characters, at most [`MAX_LEN`] bytes.
    pub fn parse(text: &str) -> Result<Self, AddressError> {
        let folded = fold(text);
        let bad = |why| {
            Err(AddressError {
                text: folded.clone(),
                why,
            })
        };
        if folded.len() > MAX_LEN {
            return bad("is longer than 256 bytes");
        }
        if folded.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("contains whitespace or control characters");
        }
        match folded.split_once('@') {
            Some((local, domain))
                if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
            {
                Ok(Self(folded))
            }
            _ => bad("is not local@domain"),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after '@'.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Address {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_address_fold_to_one() {
        let a = Address::parse(" JÜRGEN@Example.ORG ").expect("valid");
        assert_eq!(a.as_str(), "jürgen@example.org");
        assert_eq!(a.domain(), "example.org");
        assert_eq!(a, Address::parse("jürgen@example.org").expect("valid"));
        assert!(same("JÜRGEN@x.test", "jürgen@X.test"));
        assert!(!same("jurgen@x.test", "jürgen@x.test"));
    }

    #[test]
    fn what_is_not_local_at_domain_is_refused_naming_the_text() {
        for bad in ["", "alice", "@x", "a@", "a@b@c", "a b@x", "a\u{7}@x"] {
            assert!(Address::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}@x.test", "a".repeat(MAX_LEN));
        let err = Address::parse(&long).expect_err("too long");
        assert_eq!(err.why, "is longer than 256 bytes");
        assert_eq!(
            Address::parse("Alice").expect_err("no @").to_string(),
            "\"alice\" is not local@domain"
        );
    }
}
