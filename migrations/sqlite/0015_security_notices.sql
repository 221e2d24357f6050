-- Security notices by e-mail (keep in step with migrations/postgres/0015_security_notices.sql).
-- The outbox: a row per notice and recipient, inserted in the same transaction as
-- the change it reports, sent by whichever node claims it first. Never a secret.
CREATE TABLE notices (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The account the notice is about.
    user_address    TEXT NOT NULL,
    kind            TEXT NOT NULL,
    -- The mailbox itself, or a confirmed recovery address.
    recipient       TEXT NOT NULL,
    -- What changed, in words (a factor's kind, a device's name).
    detail          TEXT NOT NULL,
    -- Who made the change (as the audit log names them) and from where.
    actor           TEXT NOT NULL,
    ip              TEXT,
    created_at      INTEGER NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    -- The claim of the node sending it now; a claim older than the timeout lapses.
    claim           TEXT,
    claimed_at      INTEGER
);
CREATE INDEX notices_due ON notices (state, next_attempt_at);
CREATE INDEX notices_user ON notices (user_address, created_at);

-- The notice kinds the domain administrator turned off, comma-separated.
ALTER TABLE domains ADD COLUMN notices_off TEXT NOT NULL DEFAULT '';
