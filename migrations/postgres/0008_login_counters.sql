-- Login counters move from each node's memory into the store (keep in step with
-- migrations/sqlite/0008_login_counters.sql), so every node behind a load
-- balancer counts towards one limit and a restart forgets nothing.
--
-- client_penalties: the per-client login delay (src/penalty.rs), one row per
-- client network (IPv4 address, IPv6 /64) with recent failures. `accounts`
-- lists the latest accounts tried, each as a hash of the name, its failures
-- and a keyed hash of the last wrong credential (never a name or password).
CREATE TABLE client_penalties (
    client   TEXT PRIMARY KEY NOT NULL,
    failures BIGINT NOT NULL,
    last_at  BIGINT NOT NULL,
    accounts TEXT NOT NULL
);
CREATE INDEX client_penalties_last ON client_penalties (last_at);
-- attempt_counters: wrong second-step codes and wrong system-administrator
-- passwords (src/web/attempts.rs), by a hash of the key (a session, a user, a
-- name and client network). locked_until is 0 while not locked.
CREATE TABLE attempt_counters (
    key_hash     TEXT PRIMARY KEY NOT NULL,
    failures     BIGINT NOT NULL,
    since        BIGINT NOT NULL,
    locked_until BIGINT NOT NULL
);
CREATE INDEX attempt_counters_since ON attempt_counters (since);
-- client_rates: system-administrator sign-in attempts per client network in a
-- fixed window.
CREATE TABLE client_rates (
    client  TEXT PRIMARY KEY NOT NULL,
    since   BIGINT NOT NULL,
    count   BIGINT NOT NULL
);
CREATE INDEX client_rates_since ON client_rates (since);
-- A failure from a client is announced in the event log, so that every node
-- learns which clients to read the delay of.
ALTER TABLE events ADD COLUMN client TEXT;
