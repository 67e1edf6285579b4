-- The audit trail: one row per admin action, written in the same transaction as the
-- change it records. Append-only; nothing in keygate updates or deletes a row.
CREATE TABLE audit_events (
    id            TEXT PRIMARY KEY,   -- evt_ + time + counter + random: sorts by time
    account_id    TEXT NOT NULL,
    category      TEXT NOT NULL,      -- ApiKey, Application, Session, Login
    action        TEXT NOT NULL,      -- e.g. api_key.revoke
    actor         TEXT NOT NULL,      -- the admin credential's fingerprint
    on_behalf_of  TEXT,               -- x-keygate-actor, when the caller named one
    target        TEXT NOT NULL,      -- the id acted on
    request_id    TEXT NOT NULL,
    occurred_at   BIGINT NOT NULL,    -- Unix milliseconds
    detail        TEXT NOT NULL       -- JSON object; never a secret or a hash
);
CREATE INDEX audit_events_by_account ON audit_events (account_id, id);

-- When each key was last used, written in batches (about once a minute per key at most).
-- A table of its own: a use is not a change, so it bumps no version and notifies no replica.
CREATE TABLE key_usage (
    key_id        TEXT PRIMARY KEY,
    last_used_at  BIGINT NOT NULL
);
