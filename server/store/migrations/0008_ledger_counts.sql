-- ledger entries counted by kind (the metrics' callgate_ledger_writes_total)
-- A trigger keeps the count in the entry's own transaction, so a rolled-back write is never counted, and every
-- worker reads the same figure with one small query (counting the ledger itself at every scrape would read all of it)
CREATE TABLE ledger_counts (
    kind    TEXT    PRIMARY KEY,
    entries INTEGER NOT NULL
);

INSERT INTO ledger_counts (kind, entries) SELECT kind, count(*) FROM ledger GROUP BY kind;

CREATE TRIGGER ledger_counted AFTER INSERT ON ledger BEGIN
    INSERT INTO ledger_counts (kind, entries) VALUES (new.kind, 1)
        ON CONFLICT (kind) DO UPDATE SET entries = entries + 1;
END;
