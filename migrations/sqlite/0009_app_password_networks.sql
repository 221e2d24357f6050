-- An app password may be limited to source networks: CIDRs separated by
-- commas, as `SourceNetworks` prints them ('' for anywhere). Fixed at creation
-- (keep in step with the other flavour's 0009).
ALTER TABLE app_passwords ADD COLUMN networks TEXT NOT NULL DEFAULT '';
