-- Applications, API keys (and application runtime keys), dashboard sessions.
-- Timestamps are Unix milliseconds.
CREATE TABLE applications (
    id                 TEXT PRIMARY KEY,
    account_id         TEXT NOT NULL,
    name               TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    -- Bumped by every runtime key rotation: the row lock that serializes rotations.
    runtime_rotations  BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX applications_by_account ON applications (account_id, id);

CREATE TABLE api_keys (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL,
    kind            TEXT NOT NULL DEFAULT 'api_key',  -- 'api_key' or 'runtime'
    runtime_of      TEXT,             -- the application, for runtime keys
    name            TEXT NOT NULL,
    scopes          TEXT NOT NULL,    -- JSON array of scope strings
    application_ids TEXT NOT NULL,    -- JSON array; empty = all of the account's
    secret_hash     TEXT NOT NULL,    -- argon2id PHC string; the secret itself is never stored
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    expires_at      BIGINT,
    revoked_at      BIGINT,
    retire_at       BIGINT,           -- a rotated runtime key: revoked from this time on
    revoked_reason  TEXT,
    version         BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX api_keys_by_account ON api_keys (account_id, id);
CREATE INDEX api_keys_runtime_of ON api_keys (runtime_of);

CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    -- SHA-256 (hex) of the token's 262-bit random secret. A slow hash protects guessable
    -- secrets; this one cannot be guessed, and sessions are checked on every dashboard call.
    secret_digest  TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    version        BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX sessions_by_account ON sessions (account_id, user_id);
