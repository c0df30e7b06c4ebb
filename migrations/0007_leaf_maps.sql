-- Schema 7: leaf maps of large files (src/delta/leaves.rs): the BLAKE3 chaining value of every
-- 1 MiB leaf of the replica's copy and which leaves are all zeros, so that the next snapshot
-- reads only the leaves of the live file that hold data and patches only those that changed.
-- Derived data: not in index.log. A map is used only when its row sum holds, its hash and size
-- are the entry's, and its leaves merge to that hash; otherwise the file is read whole.

CREATE TABLE leaf_maps (
    path   BLOB PRIMARY KEY,
    hash   BLOB NOT NULL,
    size   INTEGER NOT NULL,
    leaves BLOB NOT NULL,
    sum    BLOB
);
