-- Passkeys (WebAuthn credentials) as a second factor, and the ceremonies in
-- progress (keep in step with migrations/postgres/0013_passkeys.sql).
-- A passkey makes its user enrolled like a confirmed second factor.
CREATE TABLE passkeys (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    -- The credential id (base64url), unique across all users.
    credential_id TEXT NOT NULL UNIQUE,
    -- webauthn-rs's Passkey as JSON: the public key and the signature counter.
    credential    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER
);
CREATE INDEX passkeys_user ON passkeys (user_id);

-- A registration or sign-in ceremony begun on any node, finished on any node:
-- the challenge state, bound to its user, deleted when used or expired.
CREATE TABLE webauthn_ceremonies (
    id         TEXT PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    TEXT NOT NULL CHECK (purpose IN ('register', 'login')),
    state      TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX webauthn_ceremonies_expiry ON webauthn_ceremonies (expires_at);
