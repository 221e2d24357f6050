-- App passwords are verified by their keyed lookup alone (keep in step with the
-- other flavour's 0005): `lookup` is HMAC-SHA-256 under the instance key (kept
-- outside the database) of the user and the generated secret, unique per user,
-- so finding the row is the verification. The Argon2 hash beside it protected
-- nothing the keyed hash does not (see SECURITY.md, "App passwords") and cost a
-- cold login 17 ms of CPU; every existing row verifies by its lookup already.
ALTER TABLE app_passwords DROP COLUMN hash;
