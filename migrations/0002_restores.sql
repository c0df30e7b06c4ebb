-- Schema 2: what each point left out (a restore must leave the same paths alone), and the
-- restore journal (an interrupted in-place restore is finished by running it again).

ALTER TABLE points ADD COLUMN excludes TEXT;   -- JSON array of patterns; NULL: the defaults

CREATE TABLE restores (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    point_id     INTEGER NOT NULL,               -- may be pruned later: no foreign key
    target       TEXT    NOT NULL,               -- the root restored in place
    paths        TEXT    NOT NULL,               -- JSON array of --path selections ([] = all)
    safety_point INTEGER,                        -- the pre-restore point taken first
    started_at   TEXT    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('running', 'complete'))
);
