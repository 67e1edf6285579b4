-- The change feed (keygate.v1.Watch): one row per change to what a decision reads (a key,
-- an application, a session, an owner, an admin token), written by a trigger inside the
-- transaction that makes the change, so the row commits with it or not at all. Its
-- revision is the feed's order. Rows carry only ids: the feed reads the record itself.
--
-- Revisions must commit in their own order, or a subscriber that has read revision 10
-- could miss 9, committed later. So every writer takes one transaction-scoped advisory
-- lock (per schema) before it takes a revision, and holds it until it commits: changes
-- commit one at a time (admin writes only; decisions write no such row). Admin
-- transactions take the same lock first thing (SqlStore::begin_change), so no transaction
-- can hold it while waiting on a row another holds.
CREATE TABLE changes (
    revision   BIGSERIAL PRIMARY KEY,
    kind       TEXT NOT NULL,
    object_id  TEXT NOT NULL,
    -- NULL for admin tokens that reach every account.
    account_id TEXT,
    deleted    BIGINT NOT NULL,
    changed_at BIGINT NOT NULL
);

CREATE FUNCTION keygate_record_change() RETURNS trigger AS $$
DECLARE
    changed JSONB;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed := to_jsonb(OLD);
    ELSE
        changed := to_jsonb(NEW);
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('keygate_changes_' || TG_TABLE_SCHEMA));
    INSERT INTO changes (kind, object_id, account_id, deleted, changed_at) VALUES (
        TG_ARGV[0],
        changed ->> TG_ARGV[1],
        changed ->> 'account_id',
        CASE TG_OP WHEN 'DELETE' THEN 1 ELSE 0 END,
        (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT
    );
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

-- A key changes what a decision reads when its version moves (as replicas' NOTIFY).
CREATE TRIGGER api_keys_change_row
    AFTER INSERT OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION keygate_record_change('key', 'id');
CREATE TRIGGER api_keys_change_update
    AFTER UPDATE ON api_keys
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION keygate_record_change('key', 'id');

CREATE TRIGGER applications_change_row
    AFTER INSERT OR DELETE ON applications
    FOR EACH ROW EXECUTE FUNCTION keygate_record_change('application', 'id');
CREATE TRIGGER applications_change_update
    AFTER UPDATE ON applications
    FOR EACH ROW WHEN (OLD.name IS DISTINCT FROM NEW.name)
    EXECUTE FUNCTION keygate_record_change('application', 'id');

CREATE TRIGGER sessions_change_row
    AFTER INSERT OR DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION keygate_record_change('session', 'id');
CREATE TRIGGER sessions_change_update
    AFTER UPDATE ON sessions
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version OR OLD.revoked_at IS DISTINCT FROM NEW.revoked_at)
    EXECUTE FUNCTION keygate_record_change('session', 'id');

CREATE TRIGGER owners_change_row
    AFTER INSERT OR DELETE ON owners
    FOR EACH ROW EXECUTE FUNCTION keygate_record_change('owner', 'owner_id');
CREATE TRIGGER owners_change_update
    AFTER UPDATE ON owners
    FOR EACH ROW WHEN (OLD.terms IS DISTINCT FROM NEW.terms)
    EXECUTE FUNCTION keygate_record_change('owner', 'owner_id');

CREATE TRIGGER admin_tokens_change_row
    AFTER INSERT OR DELETE ON admin_tokens
    FOR EACH ROW EXECUTE FUNCTION keygate_record_change('admin_token', 'name');
CREATE TRIGGER admin_tokens_change_update
    AFTER UPDATE ON admin_tokens
    FOR EACH ROW WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at)
    EXECUTE FUNCTION keygate_record_change('admin_token', 'name');
