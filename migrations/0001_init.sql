-- restorepoint store index, schema 1.
-- Paths are BLOBs relative to the system root, without a leading slash; the root itself is ''.
-- BLOBs compare with memcmp, so ORDER BY path is plain byte order.

CREATE TABLE points (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,   -- stable, never reused
    created_at   TEXT    NOT NULL,                    -- RFC 3339, local offset
    kind         TEXT    NOT NULL CHECK (kind IN ('scheduled', 'manual', 'pre-restore')),
    label        TEXT,
    state        TEXT    NOT NULL CHECK (state IN ('running', 'complete')),
    sources      TEXT    NOT NULL,                    -- JSON array of source paths
    files        INTEGER NOT NULL DEFAULT 0,          -- entries in the point
    bytes        INTEGER NOT NULL DEFAULT 0,          -- apparent size of its regular files
    stored_bytes INTEGER NOT NULL DEFAULT 0,          -- size of its pack
    warnings     INTEGER NOT NULL DEFAULT 0
);

-- The replica's state: the latest complete point (plus, while a point runs, the rows it has
-- already committed). ino/ctime are the source's, for the quick check of the next snapshot.
CREATE TABLE entries (
    path     BLOB    PRIMARY KEY,
    kind     INTEGER NOT NULL,
    mode     INTEGER NOT NULL,
    uid      INTEGER NOT NULL,
    gid      INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    mtime_s  INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    rdev     INTEGER NOT NULL,
    target   BLOB,
    hash     BLOB,
    xattrs   BLOB,
    flags    INTEGER NOT NULL,
    link     BLOB,
    sparse   INTEGER NOT NULL,
    ino      INTEGER NOT NULL,
    ctime_s  INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL
) WITHOUT ROWID;

-- Per point P and path: the path's state at the point before P, and how to get its content
-- back from its content at P. content: 'absent' (added in P: no old state), 'same' (no
-- frame: old content equals new, or the old state has no content), 'delta' (zstd patch-from
-- with the new content as prefix), 'chunked' (CDC-aligned delta for large files), 'full'
-- (old content compressed alone). new_hash is the content hash at P, which tells a rollback
-- whether the replica file was already replaced.
CREATE TABLE changes (
    point_id     INTEGER NOT NULL REFERENCES points(id),
    path         BLOB    NOT NULL,
    content      TEXT    NOT NULL CHECK (content IN ('absent', 'same', 'delta', 'chunked', 'full')),
    kind         INTEGER,
    mode         INTEGER,
    uid          INTEGER,
    gid          INTEGER,
    size         INTEGER,
    mtime_s      INTEGER,
    mtime_ns     INTEGER,
    rdev         INTEGER,
    target       BLOB,
    hash         BLOB,
    xattrs       BLOB,
    flags        INTEGER,
    link         BLOB,
    sparse       INTEGER,
    frame_offset INTEGER,
    frame_len    INTEGER,
    new_hash     BLOB,
    PRIMARY KEY (point_id, path)
) WITHOUT ROWID;

CREATE INDEX changes_by_path ON changes (path, point_id);
