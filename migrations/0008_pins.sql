-- Schema 8: pinned points (`system_snapshot pin ID`). Retention never removes a pinned
-- point, and `prune ID` refuses it until it is unpinned. Logged like every write, so a repair
-- from index.log keeps the pins; a repair from the packs alone does not (they do not record
-- pins).

CREATE TABLE pins (
    point_id  INTEGER PRIMARY KEY REFERENCES points(id) ON DELETE CASCADE,
    pinned_at TEXT NOT NULL,   -- RFC 3339
    sum       BLOB
);
