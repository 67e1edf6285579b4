-- Key lifecycle (issue 17): owners, rolls, imported keys.
--
-- owner_id: whom the key belongs to in the customer's own terms (unique per account).
-- rolled_from / rolled_to: the roll that made this key, and the one that replaced it. While
--   a rolled key overlaps its successor it spends the successor's credits (the row moved).
-- lookup: for a key imported from another system, how its credential (which has no keygate
--   id) finds the row: 'sha256:<hex>' of the whole credential, or before its first use the
--   imported form ('sha256:<hex>' of the prefix-stripped secret, 'start:<first characters>').
-- import_ref / import_id: the imported form, never changed, and the import that brought it:
--   re-running an import finds its keys by import_ref and changes nothing.
ALTER TABLE api_keys ADD COLUMN owner_id TEXT;
ALTER TABLE api_keys ADD COLUMN rolled_from TEXT;
ALTER TABLE api_keys ADD COLUMN rolled_to TEXT;
ALTER TABLE api_keys ADD COLUMN lookup TEXT;
ALTER TABLE api_keys ADD COLUMN import_ref TEXT;
ALTER TABLE api_keys ADD COLUMN import_id TEXT;

CREATE UNIQUE INDEX api_keys_by_lookup ON api_keys (lookup);
CREATE UNIQUE INDEX api_keys_by_import_ref ON api_keys (import_ref);
CREATE INDEX api_keys_by_owner ON api_keys (account_id, owner_id);

-- An owner's shared terms: limits and the refill rule of its credits (JSON, as
-- api_keys.terms). Its balance is a key_credits row whose key_id is
-- 'owner/<account_id>/<owner_id>' (ids never contain '/').
CREATE TABLE owners (
    account_id TEXT NOT NULL,
    owner_id   TEXT NOT NULL,
    terms      TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, owner_id)
);

CREATE INDEX sessions_by_account_id ON sessions (account_id, id);
