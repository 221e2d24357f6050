-- A scheduled Forced roll-out's mails to users who have not enrolled: the
-- notice and the reminder, each sent once per user and announced date, however
-- many nodes run and restart (keep in step with migrations/postgres/0016_rollout_mails.sql).
-- A node claims a row by inserting it, or by taking a pending one whose
-- retry_at has passed, in one statement; only the claim's token may then mark it.
CREATE TABLE rollout_mails (
    user_id     INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('notice', 'reminder')),
    -- The date the mail announces (the domain's grace_until when it was due):
    -- a new date is a new roll-out, with mails of its own.
    forced_from BIGINT NOT NULL,
    -- pending: claimed or failed; sent; skipped (a reminder a late notice made needless).
    state       TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'skipped')),
    -- The claim's random token: marks the row only for the node that took it.
    claim       TEXT NOT NULL,
    -- Pending: nobody takes it again before this time (the claim's lease, or
    -- the back-off after a failed send).
    retry_at    BIGINT NOT NULL,
    attempts    BIGINT NOT NULL,
    done_at     BIGINT,
    PRIMARY KEY (user_id, kind, forced_from)
);
