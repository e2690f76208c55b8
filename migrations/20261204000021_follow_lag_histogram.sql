-- How long after their old transaction committed a followed domain's changes were written here:
-- the count of changes in each bucket of the follower's lag histogram (upper bounds 5 ms, 10 ms,
-- 25 ms, 50 ms, 100 ms, 250 ms, 500 ms, 750 ms, 1 s, 2.5 s, 5 s, 10 s, 30 s, 60 s, and later),
-- added to in the transaction that writes the changes.
ALTER TABLE follows ADD COLUMN lag_histogram bigint[] NOT NULL DEFAULT '{}';
