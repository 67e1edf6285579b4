-- What a key may carry (issue 16). `disabled` is a reversible switch (0 or 1): a disabled
-- key is denied until enabled again. `terms` is JSON: the key's own limits, IP allowlist,
-- metadata and credit refill; NULL when it carries none.
ALTER TABLE api_keys ADD COLUMN disabled BIGINT NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN terms TEXT;

-- A key's credits, spent by every allowed call with one conditional UPDATE (atomic across
-- replicas). Kept apart from api_keys, like key_usage, so that spending does not count as
-- a change of the key: no version bump, and on Postgres no NOTIFY to every replica per
-- call. No row: the key's calls are not counted.
CREATE TABLE key_credits (
    key_id     TEXT PRIMARY KEY,
    remaining  BIGINT NOT NULL,
    -- The refill period (counted from the Unix epoch) the credits were last refilled in.
    period     BIGINT NOT NULL,
    -- The refill rule `period` is counted in ("amount/interval/mode", '' for none). A
    -- spend computed under another rule (a replica that has not seen a change yet) finds
    -- no row to update and fails closed, rather than refilling in the wrong units.
    refill     TEXT NOT NULL DEFAULT ''
);
