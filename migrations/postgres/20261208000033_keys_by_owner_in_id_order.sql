-- An owner's keys in id order (the admin list filtered by owner, a page at a time): the
-- list reads them from this index instead of walking the account's keys for matches.
DROP INDEX api_keys_by_owner;
CREATE INDEX api_keys_by_owner ON api_keys (account_id, owner_id, id);
