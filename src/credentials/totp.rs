//! TOTP secrets (RFC 6238): 160-bit, SHA-1, 6 digits, 30 s steps, one step of
//! drift. Replay (a code accepted once only) is enforced by the store's
//! `last_used_step`; this module only computes.

use totp_rs::{Algorithm, Builder, Secret as TotpSecret, Totp};

/// Seconds per step.
pub const STEP: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum TotpError {
    #[error("the secret is not valid base32 (RFC 4648)")]
    NotBase32,
    #[error("the secret is shorter than 128 bits")]
    TooShort,
}

/// Normalises an operator- or app-supplied base32 secret (spaces removed, upper
/// case) after checking it decodes to at least 128 bits.
pub fn normalize_secret(base32: &str) -> Result<String, TotpError> {
    let cleaned: String = base32
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let cleaned = cleaned.trim_end_matches('=').to_owned();
    let secret = TotpSecret::try_from_base32(&cleaned).map_err(|_| TotpError::NotBase32)?;
    if secret.as_ref().len() < 16 {
        return Err(TotpError::TooShort);
    }
    Ok(cleaned)
}

/// A new random 160-bit secret, base32.
pub fn generate_secret() -> String {
    TotpSecret::generate().to_base32()
}

fn totp(base32: &str) -> Result<Totp, TotpError> {
    let secret = TotpSecret::try_from_base32(base32).map_err(|_| TotpError::NotBase32)?;
    // Non-compliant build because provisioning may hand us 128-bit secrets too.
    Ok(Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(STEP)
        .with_secret(secret)
        .build_noncompliant())
}

/// The code for a Unix time (tests and the CLI's self-check).
pub fn code_at(base32: &str, unix_time: u64) -> Result<String, TotpError> {
    Ok(totp(base32)?.generate(unix_time).to_string())
}

/// If `code` is valid at `unix_time` (± one step), the step it belongs to; the
/// caller then records that step so the code is never accepted twice.
pub fn matching_step(base32: &str, code: &str, unix_time: u64) -> Result<Option<i64>, TotpError> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    Ok(totp(base32)?.check(code, unix_time).map(|step| step as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 secret "12345678901234567890".
    const RFC_SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

    #[test]
    fn rfc6238_vectors() {
        assert_eq!(code_at(RFC_SECRET, 59).unwrap(), "287082");
        assert_eq!(code_at(RFC_SECRET, 1_111_111_109).unwrap(), "081804");
        assert_eq!(code_at(RFC_SECRET, 1_234_567_890).unwrap(), "005924");
    }

    #[test]
    fn one_step_of_drift_either_way() {
        let t = 1_234_567_890;
        let code = code_at(RFC_SECRET, t).unwrap();
        let step = (t / STEP) as i64;
        assert_eq!(matching_step(RFC_SECRET, &code, t).unwrap(), Some(step));
        assert_eq!(
            matching_step(RFC_SECRET, &code, t + STEP).unwrap(),
            Some(step)
        );
        assert_eq!(
            matching_step(RFC_SECRET, &code, t - STEP).unwrap(),
            Some(step)
        );
        assert_eq!(
            matching_step(RFC_SECRET, &code, t + 2 * STEP).unwrap(),
            None
        );
        assert_eq!(matching_step(RFC_SECRET, "000000", t).unwrap(), None);
    }

    #[test]
    fn secrets_are_checked_and_normalised() {
        assert_eq!(
            normalize_secret("gezd gnbv gy3t qojq gezd gnbv gy3t qojq").unwrap(),
            RFC_SECRET
        );
        assert!(matches!(
            normalize_secret("not base32!"),
            Err(TotpError::NotBase32)
        ));
        assert!(matches!(
            normalize_secret("GEZDGNBV"),
            Err(TotpError::TooShort)
        ));
        assert_eq!(normalize_secret(&generate_secret()).unwrap().len(), 32);
    }
}
