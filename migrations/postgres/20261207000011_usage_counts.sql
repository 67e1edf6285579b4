-- Decisions by outcome, per subject (a key, an owner within its account, an account) and
-- time bucket (minute, hour, day; the bucket's start in Unix milliseconds, UTC). Each
-- replica adds what it counted (n = usage_counts.n + excluded.n), so replicas sum exactly.
CREATE TABLE usage_counts (
    subject_kind TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    granularity TEXT NOT NULL,
    bucket_start BIGINT NOT NULL,
    code TEXT NOT NULL,
    reason TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (subject_kind, account_id, subject_id, granularity, bucket_start, code, reason)
);

-- An account's top keys over a range.
CREATE INDEX usage_counts_by_account ON usage_counts (account_id, subject_kind, granularity, bucket_start);

-- Pruning by retention.
CREATE INDEX usage_counts_by_age ON usage_counts (granularity, bucket_start);
