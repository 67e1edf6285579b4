-- The change feed (keygate.v1.Watch): one row per change to what a decision reads (a key,
-- an application, a session, an owner, an admin token), written by a trigger inside the
-- transaction that makes the change. SQLite has one writer at a time, so revisions
-- (AUTOINCREMENT: never reused, even after pruning) commit in their own order. Rows carry
-- only ids: the feed reads the record itself. See the Postgres migration of this name.
CREATE TABLE changes (
    revision   INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    object_id  TEXT NOT NULL,
    account_id TEXT,
    deleted    BIGINT NOT NULL,
    changed_at BIGINT NOT NULL
);

CREATE TRIGGER api_keys_change_insert AFTER INSERT ON api_keys BEGIN
    INSERT INTO changes (kind, object_id, account_id, deleted, changed_at)
    VALUES ('key', NEW.id, NEW.account_id, 0, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
CREATE TRIGGER api_keys_change_update AFTER UPDATE ON api_keys WHEN OLD.version IS NOT NEW.version BEGIN
    INSERT INTO changes (kind, object_id, account_id, deleted, changed_at)
    VALUES ('key', NEW.id, NEW.account_id, 0, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
CREATE TRIGGER api_keys_change_delete AFTER DELETE ON api_keys BEGIN
    INSERT INTO changes (kind, object_id, account_id, deleted, changed_at)
    VALUES ('key', OLD.id, OLD.account_id, 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

CREATE TRIGGER applications_change_insert AFTER INSERT ON applications BEGIN
    INSERT INTO changes (kind, object_id, account_id, deleted, changed_at)
    VALUES ('application', NEW.id, NEW.account_id, 0, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
CREATE TRIGGER applications_change_update AFTER UPDATE ON applications WHEN OLD.name IS NOT NEW.name BEGIN
    INSERT INTO changes (kind, object_id, account_id, deleted, changed_at)
    VALUES ('application', NEW.id, NEW.account_id, 0, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
CREATE TRIGGER applications_change_delete AFTER DELETE ON applications BEGIN
    INSERT INTO changes (kind, object_id, account_id, deleted, changed_at)
    VALUES ('application', OLD.id, OLD.account_id, 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

CREATE TRIGGER sessions_change_insert AFTER INSERT ON sessions BEGIN
    INSERT INTO changes (kind, object_id, account_id, deleted, changed_at)
    VALUES ('session', NEW.id, NEW.account_id, 0, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
CREATE TRIGGER sessions_change_update AFTER UPDATE ON sessions WHEN OLD.version IS NOT NEW.version OR OLD.revoked_at IS NOT NEW.revoked_at BEGIN
    INSERT INTO changes (kind, object_id, account_id, deleted, changed_at)
    VALUES ('session', NEW.id, NEW.account_id, 0, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
CREATE TRIGGER sessions_change_delete AFTER DELETE ON sessions BEGIN
    INSERT INTO changes (kind, object_id, account_id, deleted, changed_at)
    VALUES ('session', OLD.id, OLD.account_id, 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

CREATE TRIGGER owners_change_insert AFTER INSERT ON owners BEGIN
    INSERT INTO changes (kind, object_id, account_id, deleted, changed_at)
    VALUES ('owner', NEW.owner_id, NEW.account_id, 0, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
CREATE TRIGGER owners_change_update AFTER UPDATE ON owners WHEN OLD.terms IS NOT NEW.terms BEGIN
    INSERT INTO changes (kind, object_id, account_id, deleted, changed_at)
    VALUES ('owner', NEW.owner_id, NEW.account_id, 0, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
CREATE TRIGGER owners_change_delete AFTER DELETE ON owners BEGIN
    INSERT INTO changes (kind, object_id, account_id, deleted, changed_at)
    VALUES ('owner', OLD.owner_id, OLD.account_id, 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

CREATE TRIGGER admin_tokens_change_insert AFTER INSERT ON admin_tokens BEGIN
    INSERT INTO changes (kind, object_id, account_id, deleted, changed_at)
    VALUES ('admin_token', NEW.name, NEW.account_id, 0, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
CREATE TRIGGER admin_tokens_change_update AFTER UPDATE ON admin_tokens WHEN OLD.revoked_at IS NOT NEW.revoked_at BEGIN
    INSERT INTO changes (kind, object_id, account_id, deleted, changed_at)
    VALUES ('admin_token', NEW.name, NEW.account_id, 0, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
CREATE TRIGGER admin_tokens_change_delete AFTER DELETE ON admin_tokens BEGIN
    INSERT INTO changes (kind, object_id, account_id, deleted, changed_at)
    VALUES ('admin_token', OLD.name, OLD.account_id, 1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;
