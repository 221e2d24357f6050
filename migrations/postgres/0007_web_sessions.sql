-- Web sign-in sessions, shared by every node so that any node serves any
-- browser and a restart signs nobody out (keep in step with the other
-- backend's 0007_web_sessions.sql). The cookie holds a random id; only its
-- HMAC under the instance key (hex) is stored, so a copy of the database
-- signs nobody in.
CREATE TABLE web_sessions (
    id_hash TEXT PRIMARY KEY,
    -- anonymous | second_step | user | sysadmin
    kind TEXT NOT NULL,
    -- The user's address (second_step, user) or the system administrator's
    -- name (sysadmin); '' for anonymous.
    subject TEXT NOT NULL DEFAULT '',
    -- The system administrator acting as this user, if any.
    impersonator TEXT,
    csrf TEXT NOT NULL,
    -- The latest proof of who the user is: primary_password | second_factor.
    proved_kind TEXT,
    proved_at BIGINT,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    -- The earlier of the idle and the absolute deadline, refreshed with
    -- last_seen_at: a row past it is never returned and is swept.
    expires_at BIGINT NOT NULL
);
CREATE INDEX web_sessions_by_subject ON web_sessions (subject);
CREATE INDEX web_sessions_by_expiry ON web_sessions (expires_at);
