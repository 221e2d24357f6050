//! Passkeys (WebAuthn) as a second factor through the router, with a software
//! ES256 authenticator written here (CBOR by hand, P-256 from `p256`): register,
//! sign in at the second step, remove; the ceremonies' one-time use and expiry;
//! the Forced last-factor rule; what enrollment does to mail logins.

mod common;

use axum::Router;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use common::browser::{Browser, Page};
use common::fake_imap::FakeImap;
use common::{Gateway, connect};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use postern::policy::{DomainStatus, Protocol};
use postern::store::{AuditFilter, CeremonyPurpose};
use postern::web::{WebState, router};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ALICE: &str = "alice@example.test";
const DAVE: &str = "dave@forced.test";
const ORIGIN: &str = "https://mail.example.test";
const RP_ID: &str = "mail.example.test";

struct World {
    _fake: FakeImap,
    gateway: Gateway,
    app: Router,
}

async fn world() -> World {
    let fake = FakeImap::start(&[(ALICE, "alice-primary"), (DAVE, "dave-primary")]).await;
    let gateway = Gateway::start_imap(fake.addr, "allow_plaintext_auth = true").await;
    gateway.domain("example.test", DomainStatus::Enabled).await;
    gateway.domain("forced.test", DomainStatus::Forced).await;
    let mut config = gateway.config.clone();
    config.web.public_url = Some(ORIGIN.into());
    let state = WebState::from_runtime(&gateway.runtime, &config).expect("web state");
    World {
        _fake: fake,
        app: router(state),
        gateway,
    }
}

/// A software authenticator: one P-256 key per credential, user verification on.
struct Authenticator {
    key: SigningKey,
    id: Vec<u8>,
    counter: u32,
}

fn cbor_head(major: u8, n: usize) -> Vec<u8> {
    let m = major << 5;
    match n {
        0..=23 => vec![m | n as u8],
        24..=255 => vec![m | 24, n as u8],
        _ => {
            let mut v = vec![m | 25];
            v.extend_from_slice(&(n as u16).to_be_bytes());
            v
        }
    }
}

fn cbor_bytes(data: &[u8]) -> Vec<u8> {
    let mut v = cbor_head(2, data.len());
    v.extend_from_slice(data);
    v
}

fn cbor_text(text: &str) -> Vec<u8> {
    let mut v = cbor_head(3, text.len());
    v.extend_from_slice(text.as_bytes());
    v
}

fn client_data(kind: &str, options: &Value) -> Vec<u8> {
    let challenge = options["options"]["publicKey"]["challenge"]
        .as_str()
        .expect("challenge");
    json!({ "type": kind, "challenge": challenge, "origin": ORIGIN, "crossOrigin": false })
        .to_string()
        .into_bytes()
}

impl Authenticator {
    fn new() -> Self {
        let key = SigningKey::from_slice(&rand::random::<[u8; 32]>()).expect("key");
        Self {
            key,
            id: rand::random::<[u8; 32]>().to_vec(),
            counter: 0,
        }
    }

    fn auth_data(&self, flags: u8) -> Vec<u8> {
        let mut data = Sha256::digest(RP_ID.as_bytes()).to_vec();
        data.push(flags);
        data.extend_from_slice(&self.counter.to_be_bytes());
        data
    }

    /// The answer to `navigator.credentials.create` for these options.
    fn create(&self, options: &Value) -> Value {
        let point = self.key.verifying_key().to_encoded_point(false);
        let mut cose = cbor_head(5, 5);
        cose.extend([0x01, 0x02]); // kty: EC2
        cose.extend([0x03, 0x26]); // alg: ES256 (-7)
        cose.extend([0x20, 0x01]); // crv: P-256
        cose.push(0x21); // x
        cose.extend(cbor_bytes(point.x().expect("x")));
        cose.push(0x22); // y
        cose.extend(cbor_bytes(point.y().expect("y")));
        // User present, user verified, attested credential data.
        let mut auth_data = self.auth_data(0x45);
        auth_data.extend([0u8; 16]); // AAGUID
        auth_data.extend((self.id.len() as u16).to_be_bytes());
        auth_data.extend(&self.id);
        auth_data.extend(cose);
        let mut attestation = cbor_head(5, 3);
        attestation.extend(cbor_text("fmt"));
        attestation.extend(cbor_text("none"));
        attestation.extend(cbor_text("attStmt"));
        attestation.extend(cbor_head(5, 0));
        attestation.extend(cbor_text("authData"));
        attestation.extend(cbor_bytes(&auth_data));
        json!({
            "id": B64.encode(&self.id),
            "rawId": B64.encode(&self.id),
            "type": "public-key",
            "response": {
                "attestationObject": B64.encode(attestation),
                "clientDataJSON": B64.encode(client_data("webauthn.create", options)),
            },
            "extensions": {},
        })
    }

    /// The answer to `navigator.credentials.get` for these options.
    fn get(&mut self, options: &Value) -> Value {
        self.counter += 1;
        let auth_data = self.auth_data(0x05);
        let client_data = client_data("webauthn.get", options);
        let mut signed = auth_data.clone();
        signed.extend(Sha256::digest(&client_data));
        let signature: Signature = self.key.sign(&signed);
        json!({
            "id": B64.encode(&self.id),
            "rawId": B64.encode(&self.id),
            "type": "public-key",
            "response": {
                "authenticatorData": B64.encode(auth_data),
                "clientDataJSON": B64.encode(client_data),
                "signature": B64.encode(signature.to_der().as_bytes()),
                "userHandle": null,
            },
            "extensions": {},
        })
    }
}

fn body(page: &Page) -> Value {
    serde_json::from_str(&page.body).unwrap_or_else(|_| panic!("not JSON: {}", page.body))
}

/// The CSRF token of the signed-in browser (from the 2-Step page).
async fn csrf(browser: &mut Browser) -> String {
    let page = browser.get("/account/two-step").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    page.csrf()
}

/// Adds a passkey named `name` from the 2-Step page; the finishing answer.
async fn add_passkey(browser: &mut Browser, key: &Authenticator, name: &str) -> Page {
    let token = csrf(browser).await;
    let begun = browser
        .json("POST", "/account/passkeys/begin", Some(&token), "{}")
        .await;
    assert_eq!(begun.status, StatusCode::OK, "{}", begun.body);
    let begun = body(&begun);
    let finish = json!({
        "ceremony": begun["ceremony"],
        "name": name,
        "credential": key.create(&begun),
    });
    browser
        .json(
            "POST",
            "/account/passkeys/finish",
            Some(&token),
            &finish.to_string(),
        )
        .await
}

/// At the second step: begins a passkey sign-in; the ceremony's JSON.
async fn begin_login(browser: &mut Browser, csrf: &str) -> Value {
    let begun = browser
        .json("POST", "/login/passkey/begin", Some(csrf), "{}")
        .await;
    assert_eq!(begun.status, StatusCode::OK, "{}", begun.body);
    body(&begun)
}

async fn finish_login(browser: &mut Browser, csrf: &str, ceremony: &Value, answer: Value) -> Page {
    let finish = json!({ "ceremony": ceremony["ceremony"], "credential": answer });
    browser
        .json(
            "POST",
            "/login/passkey/finish",
            Some(csrf),
            &finish.to_string(),
        )
        .await
}

async fn imap_login(w: &World, password: &str) -> String {
    let mut client = connect(w.gateway.addr(Protocol::Imap, false)).await;
    client.line().await;
    client
        .send(format!("a LOGIN \"{ALICE}\" \"{password}\"\r\n").as_bytes())
        .await;
    client.until("a ").await.concat()
}

async fn audit_actions(w: &World, address: &str) -> Vec<(String, String)> {
    w.gateway
        .store()
        .list_audit(AuditFilter {
            user: Some(address.into()),
            limit: 1000,
            ..AuditFilter::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.action, r.detail))
        .collect()
}

#[tokio::test]
async fn a_passkey_enrolls_the_user_and_signs_in_at_the_second_step() {
    let w = world().await;
    // Before: the primary password works in mail apps.
    assert!(imap_login(&w, "alice-primary").await.starts_with("a OK"));
    let mut browser = Browser::new(&w.app);
    let page = browser.password_step(ALICE, "alice-primary").await;
    assert_eq!(page.location(), "/account");
    let two_step = browser.get("/account/two-step").await;
    assert!(two_step.body.contains("Add a passkey"), "{}", two_step.body);
    assert!(two_step.body.contains("src=\"/passkey.js\""));

    let mut laptop = Authenticator::new();
    let added = add_passkey(&mut browser, &laptop, "laptop").await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    let phone = Authenticator::new();
    let added = add_passkey(&mut browser, &phone, "phone").await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    let listed = browser.get("/account/two-step").await;
    assert!(listed.body.contains("2-Step Authentication is on."));
    assert!(listed.body.contains("laptop") && listed.body.contains("phone"));
    assert!(listed.body.contains("last used never"), "{}", listed.body);

    // Enrolled: the primary password no longer works in mail apps.
    let user = w.gateway.store().user(ALICE).await.unwrap().unwrap();
    assert!(user.enrolled);
    assert!(imap_login(&w, "alice-primary").await.starts_with("a NO"));

    // Sign out, sign in again: the second step offers the passkey.
    let token = csrf(&mut browser).await;
    browser.post("/logout", &[("csrf", &token)]).await;
    let page = browser.password_step(ALICE, "alice-primary").await;
    assert_eq!(page.location(), "/login/code");
    let code_page = browser.get("/login/code").await;
    assert!(
        code_page.body.contains("Use a passkey"),
        "{}",
        code_page.body
    );
    let token = code_page.csrf();
    let before = browser.cookie.clone();
    let begun = begin_login(&mut browser, &token).await;
    let answer = laptop.get(&begun);
    let done = finish_login(&mut browser, &token, &begun, answer.clone()).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(body(&done)["redirect"], "/account");
    assert_ne!(browser.cookie, before, "the session id rotates");
    assert_eq!(browser.get("/account").await.status, StatusCode::OK);
    let listed = browser.get("/account/two-step").await;
    assert_eq!(
        listed.body.matches("last used never").count(),
        1,
        "{}",
        listed.body
    );
    let stored = w.gateway.store().passkeys(user.id).await.unwrap();
    assert!(stored[0].last_used_at.is_some() && stored[1].last_used_at.is_none());

    let actions = audit_actions(&w, ALICE).await;
    assert_eq!(
        actions.iter().filter(|(a, _)| a == "passkey.add").count(),
        2
    );
    assert!(
        actions
            .iter()
            .any(|(a, d)| a == "web.login" && d.contains("passkey \"laptop\"")),
        "{actions:?}"
    );

    // The same signed answer does not sign anyone in again.
    let mut thief = Browser::new(&w.app);
    thief.password_step(ALICE, "alice-primary").await;
    let token = thief.get("/login/code").await.csrf();
    let replay = finish_login(&mut thief, &token, &begun, answer).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED, "{}", replay.body);
    assert_eq!(thief.get("/account").await.location(), "/login/code");
    assert!(
        audit_actions(&w, ALICE)
            .await
            .iter()
            .any(|(a, _)| a == "web.login.passkey_refused")
    );

    // Removing one passkey (signed in with a fresh second step).
    let token = csrf(&mut browser).await;
    let path = format!("/account/passkeys/{}/remove", stored[1].id);
    let removed = browser.post(&path, &[("csrf", &token)]).await;
    assert_eq!(removed.status, StatusCode::SEE_OTHER, "{}", removed.body);
    let listed = browser.get("/account/two-step").await;
    assert!(listed.body.contains("laptop") && !listed.body.contains(">phone<"));
    assert!(
        audit_actions(&w, ALICE)
            .await
            .iter()
            .any(|(a, _)| a == "passkey.remove")
    );
}

#[tokio::test]
async fn a_ceremony_is_taken_once_by_its_own_user_and_not_after_it_expires() {
    let w = world().await;
    let store = w.gateway.store();
    let alice = store.ensure_user(ALICE).await.unwrap();
    let dave = store.ensure_user(DAVE).await.unwrap();
    let id = store
        .begin_ceremony(alice.id, CeremonyPurpose::Login, "state")
        .await
        .unwrap();
    // Another user, or the other purpose, cannot take it.
    assert_eq!(
        store
            .take_ceremony(&id, dave.id, CeremonyPurpose::Login)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .take_ceremony(&id, alice.id, CeremonyPurpose::Register)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .take_ceremony(&id, alice.id, CeremonyPurpose::Login)
            .await
            .unwrap()
            .as_deref(),
        Some("state")
    );
    assert_eq!(
        store
            .take_ceremony(&id, alice.id, CeremonyPurpose::Login)
            .await
            .unwrap(),
        None,
        "used once"
    );
    let expired = store
        .begin_ceremony(alice.id, CeremonyPurpose::Login, "state")
        .await
        .unwrap();
    store.expire_ceremony(&expired).await.unwrap();
    assert_eq!(
        store
            .take_ceremony(&expired, alice.id, CeremonyPurpose::Login)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn an_expired_registration_is_refused_with_a_way_on() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    browser.password_step(ALICE, "alice-primary").await;
    let token = csrf(&mut browser).await;
    let begun = body(
        &browser
            .json("POST", "/account/passkeys/begin", Some(&token), "{}")
            .await,
    );
    let ceremony = begun["ceremony"].as_str().expect("id");
    w.gateway.store().expire_ceremony(ceremony).await.unwrap();
    let finish = json!({
        "ceremony": ceremony,
        "name": "laptop",
        "credential": Authenticator::new().create(&begun),
    });
    let page = browser
        .json(
            "POST",
            "/account/passkeys/finish",
            Some(&token),
            &finish.to_string(),
        )
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert!(
        body(&page)["error"]
            .as_str()
            .unwrap()
            .contains("start again")
    );
    let user = w.gateway.store().user(ALICE).await.unwrap().unwrap();
    assert!(!user.enrolled);
}

#[tokio::test]
async fn the_last_passkey_of_a_forced_user_cannot_be_removed() {
    let w = world().await;
    let store = w.gateway.store();
    w.gateway.enroll(DAVE).await;
    let mut browser = Browser::new(&w.app);
    browser.password_step(DAVE, "dave-primary").await;
    let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let code = postern::credentials::totp::code_at(secret, now).expect("code");
    browser.code_step(&code).await;
    let key = Authenticator::new();
    let added = add_passkey(&mut browser, &key, "security key").await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    // Only the passkey is left.
    let user = store.user(DAVE).await.unwrap().unwrap();
    for factor in store.second_factors(user.id).await.unwrap() {
        store
            .remove_second_factor(user.id, factor.id, "test")
            .await
            .unwrap();
    }
    assert!(store.user(DAVE).await.unwrap().unwrap().enrolled);
    let page = browser.get("/account/two-step").await;
    assert!(
        page.body.contains("before removing your last one"),
        "{}",
        page.body
    );
    let passkey = &store.passkeys(user.id).await.unwrap()[0];
    let path = format!("/account/passkeys/{}/remove", passkey.id);
    let refused = browser.post(&path, &[("csrf", &page.csrf())]).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(refused.body.contains("requires 2-Step"), "{}", refused.body);
    assert_eq!(store.passkeys(user.id).await.unwrap().len(), 1);
    // With a second passkey, one of them can go.
    let spare = Authenticator::new();
    let added = add_passkey(&mut browser, &spare, "spare").await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    let token = csrf(&mut browser).await;
    let removed = browser.post(&path, &[("csrf", &token)]).await;
    assert_eq!(removed.status, StatusCode::SEE_OTHER, "{}", removed.body);
    assert_eq!(store.passkeys(user.id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn without_a_public_url_passkeys_are_refused_clearly() {
    let w = world().await;
    let state = WebState::from_runtime(&w.gateway.runtime, &w.gateway.config).expect("state");
    let app = router(state);
    let mut browser = Browser::new(&app);
    browser.password_step(ALICE, "alice-primary").await;
    let page = browser.get("/account/two-step").await;
    assert!(page.body.contains("public_url"), "{}", page.body);
    let begun = browser
        .json("POST", "/account/passkeys/begin", Some(&page.csrf()), "{}")
        .await;
    assert_eq!(begun.status, StatusCode::FORBIDDEN);
    assert!(
        body(&begun)["error"]
            .as_str()
            .unwrap()
            .contains("public_url")
    );
}

// ---- the JSON API -----------------------------------------------------------

/// A JSON API client: its browser (the cookie) and the current CSRF token.
struct Api {
    browser: Browser,
    csrf: String,
}

impl Api {
    async fn new(app: &Router) -> Self {
        let mut browser = Browser::new(app);
        let session = browser.json("GET", "/api/v1/session", None, "").await;
        assert_eq!(session.status, StatusCode::OK, "{}", session.body);
        let csrf = body(&session)["csrf"].as_str().expect("csrf").to_owned();
        Self { browser, csrf }
    }

    async fn call(&mut self, method: &str, path: &str, json: &Value) -> Page {
        let page = self
            .browser
            .json(method, path, Some(&self.csrf), &json.to_string())
            .await;
        // A step that rotates the session hands out the new token.
        if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&page.body)
            && let Some(Value::String(token)) = map.get("csrf")
        {
            self.csrf = token.clone();
        }
        page
    }

    async fn get(&mut self, path: &str) -> Page {
        self.browser.json("GET", path, None, "").await
    }

    /// Address and password; the session's state afterwards.
    async fn login(&mut self, address: &str, password: &str) -> String {
        let page = self
            .call(
                "POST",
                "/api/v1/login",
                &json!({ "address": address, "password": password }),
            )
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        body(&page)["session"]["state"]
            .as_str()
            .expect("state")
            .to_owned()
    }

    /// Adds a passkey through the API; the finishing answer.
    async fn add_passkey(&mut self, key: &Authenticator, name: &str) -> Page {
        let begun = self
            .call("POST", "/api/v1/account/passkeys/begin", &json!({}))
            .await;
        assert_eq!(begun.status, StatusCode::OK, "{}", begun.body);
        let begun = body(&begun);
        let finish = json!({
            "ceremony": begun["ceremony"],
            "name": name,
            "credential": key.create(&begun),
        });
        self.call("POST", "/api/v1/account/passkeys/finish", &finish)
            .await
    }
}

#[tokio::test]
async fn the_api_adds_lists_and_removes_passkeys_and_signs_in_with_one() {
    let w = world().await;
    let mut api = Api::new(&w.app).await;
    assert_eq!(api.login(ALICE, "alice-primary").await, "user");
    let listed = api.get("/api/v1/account/passkeys").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert_eq!(body(&listed), json!([]));

    let mut laptop = Authenticator::new();
    let added = api.add_passkey(&laptop, "laptop").await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    let id = body(&added)["id"].as_i64().expect("id");
    let listed = body(&api.get("/api/v1/account/passkeys").await);
    assert_eq!(listed[0]["id"], id);
    assert_eq!(listed[0]["name"], "laptop");
    assert_eq!(listed[0]["last_used_at"], Value::Null);
    let two_step = body(&api.get("/api/v1/account/two-step").await);
    assert_eq!(two_step["enrolled"], true);
    assert_eq!(two_step["passkeys"], 1);
    // Enrolled: the primary password no longer works in mail apps.
    assert!(imap_login(&w, "alice-primary").await.starts_with("a NO"));

    // A new API session: the password, then the passkey as the second step.
    let mut api = Api::new(&w.app).await;
    assert_eq!(api.login(ALICE, "alice-primary").await, "second_step");
    let refused = api.get("/api/v1/account/passkeys").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    let begun = api
        .call("POST", "/api/v1/login/passkey/begin", &json!({}))
        .await;
    assert_eq!(begun.status, StatusCode::OK, "{}", begun.body);
    let begun = body(&begun);
    // An answer from a key that is not alice's is refused, and the ceremony is spent.
    let stranger = Authenticator::new().get(&begun);
    let wrong = api
        .call(
            "POST",
            "/api/v1/login/passkey/finish",
            &json!({ "ceremony": begun["ceremony"], "credential": stranger }),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.body);
    assert!(body(&wrong)["error"].as_str().unwrap().contains("passkey"));
    let begun = body(
        &api.call("POST", "/api/v1/login/passkey/begin", &json!({}))
            .await,
    );
    let before = api.browser.cookie.clone();
    let done = api
        .call(
            "POST",
            "/api/v1/login/passkey/finish",
            &json!({ "ceremony": begun["ceremony"], "credential": laptop.get(&begun) }),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(body(&done)["session"]["state"], "user");
    assert_eq!(body(&done)["session"]["proof"]["kind"], "code");
    assert_ne!(api.browser.cookie, before, "the session id rotates");
    let listed = body(&api.get("/api/v1/account/passkeys").await);
    assert!(listed[0]["last_used_at"].is_i64(), "{listed}");
    assert!(
        audit_actions(&w, ALICE)
            .await
            .iter()
            .any(|(a, d)| a == "web.login" && d.contains("passkey \"laptop\"")),
    );

    // Removing it (the session's proof is fresh): alice's domain is Enabled.
    let removed = api
        .call(
            "DELETE",
            &format!("/api/v1/account/passkeys/{id}"),
            &json!({}),
        )
        .await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "{}", removed.body);
    assert_eq!(body(&api.get("/api/v1/account/passkeys").await), json!([]));
    let missing = api
        .call(
            "DELETE",
            &format!("/api/v1/account/passkeys/{id}"),
            &json!({}),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.body);
    assert!(
        !w.gateway
            .store()
            .user(ALICE)
            .await
            .unwrap()
            .unwrap()
            .enrolled
    );
}

#[tokio::test]
async fn the_api_enrolls_a_forced_user_with_a_passkey_and_keeps_the_last_one() {
    let w = world().await;
    let mut api = Api::new(&w.app).await;
    assert_eq!(api.login(DAVE, "dave-primary").await, "must_enroll");
    let refused = api.get("/api/v1/account/app-passwords").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    let key = Authenticator::new();
    let before = api.browser.cookie.clone();
    let added = api.add_passkey(&key, "security key").await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    let added = body(&added);
    assert_eq!(added["session"]["state"], "user", "{added}");
    assert_ne!(api.browser.cookie, before, "the session id rotates");
    let id = added["id"].as_i64().expect("id");
    assert!(
        w.gateway
            .store()
            .user(DAVE)
            .await
            .unwrap()
            .unwrap()
            .enrolled
    );
    // Full access now, with the proof the new passkey gave: an app password.
    let created = api
        .call(
            "POST",
            "/api/v1/account/app-passwords",
            &json!({ "name": "phone" }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);

    // The last factor of a Forced user stays.
    let kept = api
        .call(
            "DELETE",
            &format!("/api/v1/account/passkeys/{id}"),
            &json!({}),
        )
        .await;
    assert_eq!(kept.status, StatusCode::FORBIDDEN, "{}", kept.body);
    assert!(
        body(&kept)["error"]
            .as_str()
            .unwrap()
            .contains("requires 2-Step")
    );
    let user = w.gateway.store().user(DAVE).await.unwrap().unwrap();
    assert_eq!(w.gateway.store().passkeys(user.id).await.unwrap().len(), 1);
}

// ---- the forced-enrollment page ---------------------------------------------

#[tokio::test]
async fn a_forced_user_may_enroll_with_a_passkey_first() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    let page = browser.password_step(DAVE, "dave-primary").await;
    assert_eq!(page.location(), "/login/enroll");
    let enroll = browser.get("/login/enroll").await;
    assert_eq!(enroll.status, StatusCode::OK);
    assert!(
        enroll
            .body
            .contains("data-begin=\"/login/enroll/passkey/begin\""),
        "{}",
        enroll.body
    );
    assert!(enroll.body.contains("Add a passkey"));
    let token = enroll.csrf();
    // The account page's own passkey calls are not open to it yet.
    let early = browser
        .json("POST", "/account/passkeys/begin", Some(&token), "{}")
        .await;
    assert_eq!(early.location(), "/login/enroll");

    let begun = browser
        .json("POST", "/login/enroll/passkey/begin", Some(&token), "{}")
        .await;
    assert_eq!(begun.status, StatusCode::OK, "{}", begun.body);
    let begun = body(&begun);
    let mut key = Authenticator::new();
    let finish = json!({
        "ceremony": begun["ceremony"],
        "name": "phone",
        "credential": key.create(&begun),
    });
    let before = browser.cookie.clone();
    let done = browser
        .json(
            "POST",
            "/login/enroll/passkey/finish",
            Some(&token),
            &finish.to_string(),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(body(&done)["redirect"], "/account/two-step");
    assert_ne!(browser.cookie, before, "the session id rotates");
    let two_step = browser.get("/account/two-step").await;
    assert_eq!(two_step.status, StatusCode::OK);
    assert!(two_step.body.contains("2-Step Authentication is on."));
    assert!(two_step.body.contains(">phone<"), "{}", two_step.body);
    assert!(
        w.gateway
            .store()
            .user(DAVE)
            .await
            .unwrap()
            .unwrap()
            .enrolled
    );
    // The enrollment proved the second step: an app password needs no more.
    let created = browser
        .post(
            "/account/app-passwords",
            &[
                ("csrf", &two_step.csrf()),
                ("name", "laptop"),
                ("imap", "on"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    assert!(created.body.contains("class=\"secret\""));

    // The next sign-in asks for the passkey.
    let token = csrf(&mut browser).await;
    browser.post("/logout", &[("csrf", &token)]).await;
    assert_eq!(
        browser.password_step(DAVE, "dave-primary").await.location(),
        "/login/code"
    );
    let token = browser.get("/login/code").await.csrf();
    let begun = begin_login(&mut browser, &token).await;
    let answer = key.get(&begun);
    let done = finish_login(&mut browser, &token, &begun, answer).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
}

// ---- "Confirm it is you" ------------------------------------------------------

/// Begins a passkey re-authentication on the page; the ceremony's JSON.
async fn begin_reauth(browser: &mut Browser, csrf: &str) -> Value {
    let begun = browser
        .json(
            "POST",
            "/account/reauthenticate/passkey/begin",
            Some(csrf),
            "{}",
        )
        .await;
    assert_eq!(begun.status, StatusCode::OK, "{}", begun.body);
    body(&begun)
}

async fn finish_reauth(browser: &mut Browser, csrf: &str, begun: &Value, answer: Value) -> Page {
    let finish = json!({
        "ceremony": begun["ceremony"],
        "credential": answer,
        "next": "/account/app-passwords",
    });
    browser
        .json(
            "POST",
            "/account/reauthenticate/passkey/finish",
            Some(csrf),
            &finish.to_string(),
        )
        .await
}

#[tokio::test]
async fn confirm_it_is_you_takes_a_passkey_under_the_code_lock() {
    let w = world().await;
    let mut browser = Browser::new(&w.app);
    // Signed in with the password alone, then a passkey added: the session has
    // no second-factor proof, so creating an app password asks first.
    browser.password_step(ALICE, "alice-primary").await;
    let mut laptop = Authenticator::new();
    let added = add_passkey(&mut browser, &laptop, "laptop").await;
    assert_eq!(added.status, StatusCode::OK, "{}", added.body);
    let token = csrf(&mut browser).await;
    let asked = browser
        .post(
            "/account/app-passwords",
            &[("csrf", &token), ("name", "phone"), ("imap", "on")],
        )
        .await;
    assert_eq!(asked.status, StatusCode::FORBIDDEN, "{}", asked.body);
    assert!(asked.body.contains("Confirm it is you"));
    assert!(
        asked
            .body
            .contains("data-begin=\"/account/reauthenticate/passkey/begin\""),
        "{}",
        asked.body
    );
    // Her only factor is the passkey: no code field to puzzle over.
    assert!(!asked.body.contains("action=\"/account/reauthenticate\""));
    assert_eq!(app_password_count(&w).await, 0);

    let begun = begin_reauth(&mut browser, &token).await;
    let done = finish_reauth(&mut browser, &token, &begun, laptop.get(&begun)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(body(&done)["redirect"], "/account/app-passwords");
    let created = browser
        .post(
            "/account/app-passwords",
            &[("csrf", &token), ("name", "phone"), ("imap", "on")],
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    assert_eq!(app_password_count(&w).await, 1);
    assert!(
        audit_actions(&w, ALICE)
            .await
            .iter()
            .any(|(a, d)| a == "web.reauth" && d.contains("passkey \"laptop\"")),
    );

    // Four wrong codes and a passkey that is not alice's make five failures:
    // then even her own passkey is refused, as a right code would be.
    for _ in 0..4 {
        let wrong = browser
            .post(
                "/account/reauthenticate",
                &[
                    ("csrf", &token),
                    ("secret", "000000"),
                    ("next", "/account/app-passwords"),
                ],
            )
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    }
    let begun = begin_reauth(&mut browser, &token).await;
    let stranger = Authenticator::new().get(&begun);
    let refused = finish_reauth(&mut browser, &token, &begun, stranger).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    let begun = begin_reauth(&mut browser, &token).await;
    let locked = finish_reauth(&mut browser, &token, &begun, laptop.get(&begun)).await;
    assert_eq!(
        locked.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        locked.body
    );
    assert!(
        body(&locked)["error"]
            .as_str()
            .unwrap()
            .contains("15 minutes")
    );
    assert!(
        audit_actions(&w, ALICE)
            .await
            .iter()
            .any(|(a, _)| a == "web.reauth.passkey_refused")
    );
}

#[tokio::test]
async fn the_api_reauthenticates_with_a_passkey() {
    let w = world().await;
    let mut api = Api::new(&w.app).await;
    assert_eq!(api.login(ALICE, "alice-primary").await, "user");
    let mut laptop = Authenticator::new();
    let added = api.add_passkey(&laptop, "laptop").await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.body);
    // The password proof is not enough for an enrolled user.
    let asked = api
        .call(
            "POST",
            "/api/v1/account/app-passwords",
            &json!({ "name": "phone" }),
        )
        .await;
    assert_eq!(asked.status, StatusCode::FORBIDDEN, "{}", asked.body);

    let begun = api
        .call("POST", "/api/v1/account/reauthenticate/passkey", &json!({}))
        .await;
    assert_eq!(begun.status, StatusCode::OK, "{}", begun.body);
    let begun = body(&begun);
    let stranger = Authenticator::new().get(&begun);
    let wrong = api
        .call(
            "POST",
            "/api/v1/account/reauthenticate",
            &json!({ "ceremony": begun["ceremony"], "credential": stranger }),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.body);
    let begun = body(
        &api.call("POST", "/api/v1/account/reauthenticate/passkey", &json!({}))
            .await,
    );
    let done = api
        .call(
            "POST",
            "/api/v1/account/reauthenticate",
            &json!({ "ceremony": begun["ceremony"], "credential": laptop.get(&begun) }),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert!(body(&done)["reauthenticated_until"].is_i64());
    let created = api
        .call(
            "POST",
            "/api/v1/account/app-passwords",
            &json!({ "name": "phone" }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
}

async fn app_password_count(w: &World) -> usize {
    let store = w.gateway.store();
    let user = store.user(ALICE).await.unwrap().unwrap();
    store.list_app_passwords(user.id).await.unwrap().len()
}
