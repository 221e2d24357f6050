-- One-time codes sent to a recovery address (keep in step with
-- migrations/postgres/0002_email_codes.sql). Only a keyed hash of the code is kept.
-- `purpose` is 'confirm' (proving the address while adding it) or 'login' (the
-- second step). A code is live for 10 minutes after created_at while used_at IS NULL
-- and failures is below the limit; sending a new code spends the older ones.
CREATE TABLE email_codes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    factor_id  INTEGER NOT NULL REFERENCES second_factors (id) ON DELETE CASCADE,
    purpose    TEXT NOT NULL CHECK (purpose IN ('confirm', 'login')),
    code_hash  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    failures   INTEGER NOT NULL DEFAULT 0,
    used_at    INTEGER
);
CREATE INDEX email_codes_user ON email_codes (user_id, created_at);
CREATE INDEX email_codes_factor ON email_codes (factor_id);
