-- Failed-login counts move off the users table (keep in step with
-- migrations/postgres/0004_login_failures_by_address.sql): a refused login for
-- an address postern has never let in must not create a user row (it would show
-- in the domain's user list), yet its failures still count towards the account
-- block on every node. One row per address with recent failures; rows older
-- than the quiet period are deleted when the next failure is counted
-- (src/penalty.rs), a success or an administrator's enable or reset deletes
-- the address's row.
CREATE TABLE login_failures (
    address        TEXT PRIMARY KEY NOT NULL,
    failed_logins  INTEGER NOT NULL,
    last_failed_at INTEGER NOT NULL
);
CREATE INDEX login_failures_last ON login_failures (last_failed_at);
INSERT INTO login_failures (address, failed_logins, last_failed_at)
    SELECT address, failed_logins, last_failed_at FROM users WHERE failed_logins > 0;
ALTER TABLE users DROP COLUMN failed_logins;
ALTER TABLE users DROP COLUMN last_failed_at;
