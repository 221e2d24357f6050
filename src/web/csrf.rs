//! CSRF protection: every state-changing request carries the session's token,
//! either as the `csrf` form field (HTML forms) or the `X-CSRF-Token` header (the
//! JSON API). SameSite=Strict cookies already stop most cross-site posts; the
//! token is the second lock.

use subtle::ConstantTimeEq;

/// The form field every HTML form carries.
pub const FIELD: &str = "csrf";
/// The header API clients send.
pub const HEADER: &str = "x-csrf-token";

/// Whether `presented` is the session's token (constant time).
pub fn matches(presented: Option<&str>, expected: &str) -> bool {
    match presented {
        Some(token) if !token.is_empty() => token.as_bytes().ct_eq(expected.as_bytes()).into(),
        _ => false,
    }
}

/// The `csrf` field of an `application/x-www-form-urlencoded` body.
pub fn form_token(body: &[u8]) -> Option<String> {
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
    fields
        .into_iter()
        .find(|(name, _)| name == FIELD)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_empty_or_wrong_tokens_fail() {
        assert!(!matches(None, "abc"));
        assert!(!matches(Some(""), ""));
        assert!(!matches(Some("abd"), "abc"));
        assert!(matches(Some("abc"), "abc"));
        assert_eq!(form_token(b"a=1&csrf=xyz").as_deref(), Some("xyz"));
        assert_eq!(form_token(b"a=1"), None);
    }
}
