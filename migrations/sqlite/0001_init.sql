-- postern schema, SQLite flavour. Keep in step with migrations/postgres/0001_init.sql:
-- same tables, columns, constraints and indexes. Times are Unix seconds; booleans
-- are 0/1 integers, so that sqlx's Any driver decodes every integer as i64.

CREATE TABLE domains (
    name        TEXT PRIMARY KEY NOT NULL,
    feature     INTEGER NOT NULL DEFAULT 0 CHECK (feature IN (0, 1)),
    status      TEXT NOT NULL DEFAULT 'disabled' CHECK (status IN ('disabled', 'enabled', 'forced')),
    grace_until INTEGER,
    created_at  INTEGER NOT NULL
);

-- A user's domain need not be in `domains`: unknown domains behave as Disabled.
CREATE TABLE users (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    address      TEXT NOT NULL UNIQUE,
    domain       TEXT NOT NULL,
    disabled     INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    domain_admin INTEGER NOT NULL DEFAULT 0 CHECK (domain_admin IN (0, 1)),
    created_at   INTEGER NOT NULL
);
CREATE INDEX users_domain ON users (domain, address);

CREATE TABLE second_factors (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id        INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind           TEXT NOT NULL CHECK (kind IN ('totp', 'email')),
    secret         TEXT NOT NULL,
    confirmed      INTEGER NOT NULL DEFAULT 0 CHECK (confirmed IN (0, 1)),
    last_used_step INTEGER,
    created_at     INTEGER NOT NULL
);
CREATE INDEX second_factors_user ON second_factors (user_id);

CREATE TABLE backup_codes (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id   INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    used_at   INTEGER
);
CREATE INDEX backup_codes_user ON backup_codes (user_id);

CREATE TABLE app_passwords (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id            INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name               TEXT NOT NULL,
    lookup             TEXT NOT NULL,
    hash               TEXT NOT NULL,
    scopes             TEXT NOT NULL,
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER,
    last_used_at       INTEGER,
    last_used_ip       TEXT,
    last_used_protocol TEXT,
    UNIQUE (user_id, lookup)
);

CREATE TABLE sysadmins (
    name          TEXT PRIMARY KEY NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE audit_log (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    ip     TEXT
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_target ON audit_log (target);
CREATE INDEX audit_log_actor ON audit_log (actor);

-- Tailed by every `postern serve` node to re-check live sessions after a change.
-- AUTOINCREMENT: ids never go backwards, so "events after id N" misses nothing.
CREATE TABLE events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    at              INTEGER NOT NULL,
    kind            TEXT NOT NULL,
    domain          TEXT,
    user_address    TEXT,
    app_password_id INTEGER
);

-- Live sessions of all nodes.
CREATE TABLE sessions (
    id           TEXT PRIMARY KEY NOT NULL,
    node         TEXT NOT NULL,
    user_address TEXT NOT NULL,
    protocol     TEXT NOT NULL,
    credential   TEXT NOT NULL,
    client_ip    TEXT NOT NULL,
    started_at   INTEGER NOT NULL
);
CREATE INDEX sessions_node ON sessions (node);
CREATE INDEX sessions_user ON sessions (user_address);
