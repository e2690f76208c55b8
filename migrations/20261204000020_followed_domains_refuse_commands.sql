-- While a domain is followed from the old system (`cutover follow`), its writer is the old
-- application: Cutover's own commands on it are refused. Every append statement calls
-- cutover_may_write with its events' aggregate types; it takes a shared lock that
-- `cutover follow` takes exclusively while it marks a domain followed, so an append made
-- before the mark commits before it, and one made after it sees it. The follower's own
-- sessions set cutover.writer = follow.
ALTER TABLE follows ADD COLUMN aggregate_type text NOT NULL DEFAULT 'collection';
ALTER TABLE follows ALTER COLUMN aggregate_type DROP DEFAULT;

CREATE FUNCTION cutover_may_write(aggregate_types text[]) RETURNS boolean
    LANGUAGE plpgsql
AS
$$
DECLARE
    followed text;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtextextended('cutover:follows', 0));
    IF current_setting('cutover.writer', true) = 'follow' THEN
        RETURN true;
    END IF;
    SELECT domain INTO followed FROM follows WHERE aggregate_type = ANY (aggregate_types) LIMIT 1;
    IF followed IS NOT NULL THEN
        RAISE EXCEPTION 'the % domain is followed from the old system (cutover follow): its writes come from there; stop following it (cutover follow --drop) to write here', followed
            USING ERRCODE = 'CF409';
    END IF;
    RETURN true;
END
$$;
