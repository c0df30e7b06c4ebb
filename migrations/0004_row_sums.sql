-- Schema 4: every row a restore trusts carries a checksum of its own values (see
-- docs/DESIGN.md "Row checksums"): a flipped byte in index.db is damage that is reported,
-- never a wrong owner, mode or time written with exit 0. Existing rows are sealed by the
-- migration itself (src/store/index.rs), from the values they hold when it runs.

ALTER TABLE points ADD COLUMN sum BLOB;
ALTER TABLE entries ADD COLUMN sum BLOB;
ALTER TABLE changes ADD COLUMN sum BLOB;
ALTER TABLE restores ADD COLUMN sum BLOB;
ALTER TABLE boot_captures ADD COLUMN sum BLOB;
