-- How many events of each projection's aggregate types reached the log without passing
-- through it since its tables were last built: `cutover seed` appends its synthetic history
-- that way. A live projection's lag is this count; the swap of a rebuild, which read the
-- whole log, sets it back to 0.
ALTER TABLE projections ADD COLUMN unprojected bigint NOT NULL DEFAULT 0;
