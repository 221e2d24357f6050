//! Sends the mail postern writes (recovery e-mail codes, security notices)
//! through the `[relay]` SMTP server.
//!
//! This module only builds and submits the message: it does not generate, store
//! or check codes (the web layer and the store do). The relay is spoken to in
//! plain SMTP (RFC 5321) without authentication, as a loopback or private-network
//! relay (Postfix's `inet_interfaces = loopback-only`) expects. Every send is
//! bounded by [`SEND_TIMEOUT`], so a slow relay never holds a request for long.
//! Errors never carry the code.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::client::Tls;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::RelayConfig;

/// The longest a send may take, connecting included.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a code was not sent. None of them says the code.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The recipient is not an address a relay would accept.
    #[error("not an e-mail address: {0}")]
    Recipient(String),
    /// The message could not be built.
    #[error("the message could not be built: {0}")]
    Message(String),
    /// The relay could not be reached, or refused the message.
    #[error("the relay {relay} failed: {detail}")]
    Relay { relay: String, detail: String },
    /// The relay did not finish within [`SEND_TIMEOUT`].
    #[error("the relay {0} did not answer in time")]
    Timeout(String),
}

/// Why a `[relay]` section is unusable.
#[derive(Debug, thiserror::Error)]
pub enum RelayConfigError {
    #[error("[relay] smtp = {0:?}: expected host:port")]
    Smtp(String),
    #[error("[relay] from = {0:?} is not an e-mail address")]
    From(String),
}

/// What a code is for, which sets the subject and the wording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeMail {
    /// Confirming a new recovery address.
    Confirm,
    /// The second step of a sign-in.
    Login,
}

/// Submits code mails to the configured relay.
#[derive(Clone, Debug)]
pub struct RecoveryMailer {
    host: String,
    port: u16,
    from: Mailbox,
    timeout: Duration,
}

/// Whether `text` is an address postern can send a code to.
pub fn parse_address(text: &str) -> Option<Address> {
    let text = text.trim();
    if text.len() > 254 {
        return None;
    }
    text.parse::<Address>().ok()
}

/// `a***@example.org`: enough for its owner to recognise, little for anyone else.
pub fn mask_address(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

impl RecoveryMailer {
    /// From the `[relay]` section: `smtp = "host:port"` (IPv6 as `[::1]:25`).
    pub fn from_config(relay: &RelayConfig) -> Result<Self, RelayConfigError> {
        let bad_smtp = || RelayConfigError::Smtp(relay.smtp.clone());
        let (host, port) = relay.smtp.trim().rsplit_once(':').ok_or_else(bad_smtp)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad_smtp())?;
        if host.is_empty() || port == 0 {
            return Err(bad_smtp());
        }
        let from = parse_address(&relay.from)
            .map(|address| Mailbox::new(Some("postern".into()), address))
            .ok_or_else(|| RelayConfigError::From(relay.from.clone()))?;
        Ok(Self {
            host: host.to_owned(),
            port,
            from,
            timeout: SEND_TIMEOUT,
        })
    }

    fn relay_name(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Sends `code` to `to`, within [`SEND_TIMEOUT`].
    pub async fn send_code(&self, to: &str, code: &str, kind: CodeMail) -> Result<(), SendError> {
        let (subject, reason) = match kind {
            CodeMail::Confirm => (
                "Confirm your recovery e-mail address",
                "Someone (hopefully you) is adding this address as a recovery e-mail \
                 for 2-Step Authentication.",
            ),
            CodeMail::Login => (
                "Your sign-in code",
                "Someone (hopefully you) signed in with your password and asked for a \
                 code at this recovery address.",
            ),
        };
        let body = format!(
            "{reason}\n\nYour code is: {code}\n\nIt is valid for 10 minutes and works once.\n\
             If you did not ask for it, ignore this message; if it was a sign-in, \
             someone knows your password: change it.\n"
        );
        self.send_text(to, subject, body).await
    }

    /// Sends a plain-text message `subject` / `body` to `to`, within
    /// [`SEND_TIMEOUT`]. Every mail postern writes (codes, notices) goes out here.
    pub async fn send_text(&self, to: &str, subject: &str, body: String) -> Result<(), SendError> {
        let recipient = parse_address(to).ok_or_else(|| SendError::Recipient(to.to_owned()))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, recipient))
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| SendError::Message(e.to_string()))?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(self.host.clone())
            .port(self.port)
            .tls(Tls::None)
            .timeout(Some(self.timeout))
            .build();
        match tokio::time::timeout(self.timeout, transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(SendError::Relay {
                relay: self.relay_name(),
                detail: err.to_string(),
            }),
            Err(_) => Err(SendError::Timeout(self.relay_name())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_relay_that_never_answers_is_given_up_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let config = RelayConfig {
            smtp: listener.local_addr().expect("addr").to_string(),
            from: "p@example.org".into(),
        };
        // Accepts, then says nothing at all.
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let mut mailer = RecoveryMailer::from_config(&config).expect("valid");
        mailer.timeout = Duration::from_millis(300);
        let result = mailer
            .send_code("a@example.org", "1234 5678", CodeMail::Login)
            .await;
        silent.abort();
        let err = result.expect_err("no greeting, no mail");
        assert!(
            matches!(err, SendError::Timeout(_) | SendError::Relay { .. }),
            "{err:?}"
        );
        assert!(
            !err.to_string().contains("1234"),
            "the code is never in an error"
        );
    }

    #[test]
    fn addresses_are_masked_to_their_first_letter_and_domain() {
        assert_eq!(mask_address("alice@example.org"), "a***@example.org");
        assert_eq!(mask_address("nobody"), "***");
    }

    #[test]
    fn the_relay_setting_is_host_and_port() {
        let config = |smtp: &str, from: &str| RelayConfig {
            smtp: smtp.into(),
            from: from.into(),
        };
        let mailer =
            RecoveryMailer::from_config(&config("[::1]:2525", "p@example.org")).expect("valid");
        assert_eq!(mailer.relay_name(), "::1:2525");
        assert!(RecoveryMailer::from_config(&config("localhost", "p@example.org")).is_err());
        assert!(RecoveryMailer::from_config(&config("localhost:0", "p@example.org")).is_err());
        assert!(matches!(
            RecoveryMailer::from_config(&config("localhost:25", "not an address")),
            Err(RelayConfigError::From(_))
        ));
    }
}
