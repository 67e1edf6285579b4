-- A key's row notifies every replica when it changes what a decision reads, which every
-- such write marks by bumping `version` (or by inserting or deleting the row). Writes that
-- only record what a replica learned — the keyed digest of a verified credential, an
-- imported key's re-hash — no longer notify: the replica that wrote it updated its own
-- cache in place, and a notification would only make it (and every other replica) reload
-- a record that still decides the same way.
DROP TRIGGER api_keys_notify_change ON api_keys;

CREATE TRIGGER api_keys_notify_change
    AFTER INSERT OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION keygate_notify_change('key');

CREATE TRIGGER api_keys_notify_update
    AFTER UPDATE ON api_keys
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION keygate_notify_change('key');
