-- Applications and API keys. Timestamps are Unix milliseconds.
CREATE TABLE applications (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX applications_by_account ON applications (account_id, id);

CREATE TABLE api_keys (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL,
    name            TEXT NOT NULL,
    scopes          TEXT NOT NULL,    -- JSON array of scope strings
    application_ids TEXT NOT NULL,    -- JSON array; empty = all of the account's
    secret_hash     TEXT NOT NULL,    -- argon2id PHC string; the secret itself is never stored
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    expires_at      BIGINT,
    revoked_at      BIGINT,
    revoked_reason  TEXT,
    version         BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX api_keys_by_account ON api_keys (account_id, id);
