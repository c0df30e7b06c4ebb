-- Schema 5: how far index.log is committed. Every index transaction records the log's length
-- after the records it appended; a writer that finds the log longer cuts it back, so the log
-- holds exactly the committed writes (records of a transaction that never committed would
-- otherwise be replayed by a repair). The row carries its own checksum like every other.

CREATE TABLE log_state (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    len INTEGER NOT NULL,
    sum BLOB
);
