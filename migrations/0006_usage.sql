-- Schema 6: the store's data usage (allocated bytes of the replica's contents and of the
-- packs), kept up to date by the writes that change it, so that a run does not walk the whole
-- store to measure it. Derived data: not in index.log; a writer measures it again when the row
-- is missing (a new index, after a rollback) or fails its checksum.

CREATE TABLE usage (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    replica INTEGER NOT NULL,
    packs   INTEGER NOT NULL,
    sum     BLOB
);
