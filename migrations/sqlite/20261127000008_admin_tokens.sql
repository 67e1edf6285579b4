-- Admin tokens (issue 19): named credentials for the admin API, each with a role and,
-- optionally, the one account it may act on and an expiry. Only the SHA-256 of a token is
-- kept (256 random bits: nothing to guess). A revoked token stays, so its name, which the
-- audit trail records as `token:<name>`, is never given to another token.
CREATE TABLE admin_tokens (
    name       TEXT PRIMARY KEY,
    digest     TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL,
    account_id TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    created_by TEXT NOT NULL,
    revoked_by TEXT
);
