-- Why a followed domain's follower last failed, and when (cleared by its next good look): a
-- follower that runs in a server, or as a service, says so where status and the console read.
ALTER TABLE follows
    ADD COLUMN last_error    text,
    ADD COLUMN last_error_at timestamptz;
