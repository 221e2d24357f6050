//! The WebAuthn relying party for passkeys, derived from `[web] public_url`: its
//! host is the relying-party id, its scheme, host and port the one origin
//! browsers may sign for. Without a `public_url` there is none and passkeys are
//! refused with [`NO_PUBLIC_URL`].

use webauthn_rs::prelude::{Url, Webauthn, WebauthnBuilder};

/// What a user or operator is told when passkeys cannot work.
pub const NO_PUBLIC_URL: &str = "passkeys need the web UI's address: set [web] public_url \
     (for example https://mail.example.org) in postern.toml";

/// The relying party for `public_url`, or why there is none.
pub fn relying_party(public_url: Option<&str>) -> Result<Webauthn, String> {
    let url = public_url
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| NO_PUBLIC_URL.to_owned())?;
    let origin = Url::parse(url).map_err(|err| format!("[web] public_url {url:?}: {err}"))?;
    if !matches!(origin.scheme(), "https" | "http") {
        return Err(format!("[web] public_url {url:?} must start with https://"));
    }
    let host = origin
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("[web] public_url {url:?} has no host name"))?
        .to_owned();
    WebauthnBuilder::new(&host, &origin)
        .and_then(|b| b.rp_name("postern").build())
        .map_err(|err| format!("[web] public_url {url:?} cannot be a WebAuthn origin: {err}"))
}

/// The credential id as stored and compared: base64url without padding.
pub fn credential_id(id: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relying_party_follows_the_public_url() {
        assert!(relying_party(Some("https://mail.example.org")).is_ok());
        assert!(relying_party(Some("http://localhost:8080/")).is_ok());
        assert_eq!(relying_party(None).err().as_deref(), Some(NO_PUBLIC_URL));
        assert_eq!(
            relying_party(Some(" ")).err().as_deref(),
            Some(NO_PUBLIC_URL)
        );
        let bad = relying_party(Some("mail.example.org"))
            .err()
            .unwrap_or_default();
        assert!(bad.contains("public_url"), "{bad}");
    }
}
