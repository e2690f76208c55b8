-- The feed is no longer woken by a trigger: a transaction that NOTIFYs takes a database-wide
-- lock from its pre-commit to the end of its commit, so every appending command's commit (and
-- its WAL flush) ran one at a time. Servers now wake their own streams after each commit and
-- tell other instances with a NOTIFY of their own, outside the commands' transactions; streams
-- also look again every second for appends by anything else.
DROP TRIGGER events_appended ON events;
DROP FUNCTION notify_events_appended();
