-- Consecutive failed mail logins per account, shared by every node (keep in step
-- with migrations/postgres/0003_login_failures.sql). `failed_logins` counts the
-- failures since the last success or administrator clear; `last_failed_at` is the
-- Unix time of the latest one (0: never). The account is blocked on the mail
-- protocols while failed_logins reaches the limit and the latest failure is
-- recent (src/penalty.rs).
ALTER TABLE users ADD COLUMN failed_logins INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN last_failed_at INTEGER NOT NULL DEFAULT 0;
