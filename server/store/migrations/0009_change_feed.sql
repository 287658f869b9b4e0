-- the change feed: which tenants' version, balance or documents changed, in commit order
-- Every worker reads the rows after the last one it saw (O(changes) per poll, not O(tenants)). Writers are
-- serialised (one write transaction at a time), so seq order is commit order and a reader never skips a row
-- that commits later with a smaller seq. Old rows are pruned; `changes_pruned.upto` says up to where, and a
-- worker that had not read that far reads everything again.
CREATE TABLE changes (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT    NOT NULL
);

CREATE TABLE changes_pruned (
    upto INTEGER NOT NULL
);

INSERT INTO changes_pruned (upto) VALUES (0);

CREATE TRIGGER current_inserted AFTER INSERT ON "current" BEGIN
    INSERT INTO changes (tenant) VALUES (new.tenant);
END;

CREATE TRIGGER current_updated AFTER UPDATE ON "current" BEGIN
    INSERT INTO changes (tenant) VALUES (new.tenant);
END;

CREATE TRIGGER current_deleted AFTER DELETE ON "current" BEGIN
    INSERT INTO changes (tenant) VALUES (old.tenant);
END;

CREATE TRIGGER accounts_inserted AFTER INSERT ON accounts BEGIN
    INSERT INTO changes (tenant) VALUES (new.tenant);
END;

CREATE TRIGGER accounts_updated AFTER UPDATE ON accounts BEGIN
    INSERT INTO changes (tenant) VALUES (new.tenant);
END;

CREATE TRIGGER accounts_deleted AFTER DELETE ON accounts BEGIN
    INSERT INTO changes (tenant) VALUES (old.tenant);
END;
