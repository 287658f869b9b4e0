-- snapshot checksums, the store's identity, the health probe
ALTER TABLE snapshots ADD COLUMN checksum TEXT NOT NULL DEFAULT '';  -- blake2b-128 of blob, checked on every read

CREATE TABLE store_identity (               -- one row: the id the data directory's marker file repeats
    id          TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE health_probe (                 -- one row per process: a real write, made to tell if writes work
    pid INTEGER PRIMARY KEY,
    at  REAL    NOT NULL
);
