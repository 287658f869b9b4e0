-- ledger entries counted by kind (the metrics' callgate_ledger_writes_total)
-- A trigger keeps the count in the entry's own transaction, so a rolled-back write is never counted, and every
-- worker reads the same figure with one small query (counting the ledger itself at every scrape would read all of it)
CREATE TABLE ledger_counts (
    kind    TEXT    PRIMARY KEY,
    entries BIGINT NOT NULL
);

INSERT INTO ledger_counts (kind, entries) SELECT kind, count(*) FROM ledger GROUP BY kind;

CREATE FUNCTION ledger_counted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_counts (kind, entries) VALUES (NEW.kind, 1)
        ON CONFLICT (kind) DO UPDATE SET entries = ledger_counts.entries + 1;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_counted AFTER INSERT ON ledger FOR EACH ROW EXECUTE FUNCTION ledger_counted();
