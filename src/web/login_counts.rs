//! `postern_web_logins_total{result}`: each web UI or JSON API sign-in step
//! (the password, then a code) counted by what it led to. Both front ends go
//! through [`super::ops`], so they are counted there, once.

use super::ops::{CodeOutcome, PasswordOutcome, WebError};
use super::session::Auth;
use crate::policy::WebLoginStep;

/// The `result` of a password step.
pub fn password(outcome: &Result<PasswordOutcome, WebError>) -> &'static str {
    match outcome {
        Ok(PasswordOutcome::Next {
            step: WebLoginStep::MustEnroll,
            ..
        }) => "must_enroll",
        Ok(PasswordOutcome::Next {
            auth: Auth::User { .. },
            ..
        }) => "ok",
        Ok(PasswordOutcome::Next {
            auth: Auth::SecondStep { .. },
            ..
        }) => "second_step",
        Ok(PasswordOutcome::Next { .. }) | Ok(PasswordOutcome::Wrong) => "refused",
        Err(WebError::Forbidden(_)) => "refused",
        Err(_) => "unavailable",
    }
}

/// The `result` of a second-step code.
pub fn code(outcome: &Result<CodeOutcome, WebError>) -> &'static str {
    match outcome {
        Ok(CodeOutcome::Accepted) => "ok",
        Ok(CodeOutcome::Locked) => "locked",
        Ok(CodeOutcome::Wrong | CodeOutcome::Replayed | CodeOutcome::Expired) => "code_refused",
        Err(_) => "unavailable",
    }
}

/// Counts one step.
pub fn count(result: &'static str) {
    metrics::counter!(crate::metrics::WEB_LOGINS, "result" => result).increment(1);
}
