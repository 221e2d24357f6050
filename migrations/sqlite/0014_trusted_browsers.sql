-- Trusted browsers: "don't ask again on this browser for 30 days" at the web
-- sign-in's second step (keep in step with migrations/postgres/0014_trusted_browsers.sql).
-- The browser holds a random 256-bit id in a cookie of its own; only the id's
-- HMAC under the instance key (hex) is stored, so a copy of the database
-- vouches for no browser.
CREATE TABLE trusted_browsers (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    id_hash      TEXT NOT NULL UNIQUE,
    -- A short description derived from User-Agent, e.g. 'Firefox on Linux'.
    browser      TEXT NOT NULL,
    -- 16 bits of a keyed hash of the primary password the browser was trusted
    -- with: a different one at sign-in means the password was changed
    -- upstream, and voids the row (see SECURITY.md).
    password_tag INTEGER NOT NULL CHECK (password_tag BETWEEN 0 AND 65535),
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    -- created_at + 30 days: a row past it is never honoured and is swept.
    expires_at   INTEGER NOT NULL
);
CREATE INDEX trusted_browsers_user ON trusted_browsers (user_id);
CREATE INDEX trusted_browsers_expiry ON trusted_browsers (expires_at);

-- The domain administrator's "Remember trusted browsers": 1 allowed, 0 not
-- allowed (every sign-in asks for the second step).
ALTER TABLE domains ADD COLUMN trusted_browsers INTEGER NOT NULL DEFAULT 1 CHECK (trusted_browsers IN (0, 1));

-- A session whose second step is due keeps the primary password's tag (as
-- trusted_browsers.password_tag) until the browser may be trusted with it.
ALTER TABLE web_sessions ADD COLUMN password_tag INTEGER CHECK (password_tag BETWEEN 0 AND 65535);
