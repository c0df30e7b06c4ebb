-- Schema 3: the boot area captured with each point. The bytes themselves are files in boot/,
-- named by their BLAKE3 hash (stored once per distinct content); the manifest names them.

CREATE TABLE boot_captures (
    point_id INTEGER NOT NULL REFERENCES points(id) ON DELETE CASCADE,
    disk     TEXT    NOT NULL,   -- the device or image file, as found when the point was taken
    manifest TEXT    NOT NULL,   -- JSON: how it was found, identity, layout, pieces, records
    PRIMARY KEY (point_id, disk)
);

ALTER TABLE points ADD COLUMN boot_note TEXT;   -- why no boot area was captured, if none was
