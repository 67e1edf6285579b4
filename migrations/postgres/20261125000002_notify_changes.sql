-- Every change to a key, an application or a session notifies every replica, from inside the
-- transaction that makes it (Postgres delivers NOTIFY on commit). The payload carries only
-- ids and the send time: "<kind>:<id>:<unix millis>". The channel is per schema, so
-- deployments (and tests) sharing one database do not hear each other.
CREATE FUNCTION keygate_notify_change() RETURNS trigger AS $$
DECLARE
    changed_id TEXT := CASE TG_OP WHEN 'DELETE' THEN OLD.id ELSE NEW.id END;
BEGIN
    PERFORM pg_notify(
        'keygate_changes_' || TG_TABLE_SCHEMA,
        TG_ARGV[0] || ':' || changed_id || ':' || (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT
    );
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER api_keys_notify_change
    AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION keygate_notify_change('key');

CREATE TRIGGER applications_notify_change
    AFTER INSERT OR UPDATE OR DELETE ON applications
    FOR EACH ROW EXECUTE FUNCTION keygate_notify_change('app');

CREATE TRIGGER sessions_notify_change
    AFTER INSERT OR UPDATE OR DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION keygate_notify_change('ses');
