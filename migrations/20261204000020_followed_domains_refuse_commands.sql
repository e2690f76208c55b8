-- While a domain is followed from the old system (`cutover follow`), its writer is the old
-- application: Cutover's own commands on it are refused. Every append statement checks
-- `follows` for its events' aggregate types (and calls cutover_refuse_followed, which raises,
-- only when one is followed). Every command holds the append lock shared from its BEGIN, and
-- `cutover follow` marks a domain followed under that lock held exclusively, so a command
-- begun before the mark commits before it, and one begun after it sees it. The follower's own
-- sessions set cutover.writer = follow.
ALTER TABLE follows ADD COLUMN aggregate_type text NOT NULL DEFAULT 'collection';
ALTER TABLE follows ALTER COLUMN aggregate_type DROP DEFAULT;

CREATE FUNCTION cutover_refuse_followed(aggregate_types text[]) RETURNS boolean
    LANGUAGE plpgsql
AS
$$
DECLARE
    followed text;
BEGIN
    SELECT domain INTO followed FROM follows WHERE aggregate_type = ANY (aggregate_types) LIMIT 1;
    RAISE EXCEPTION 'the % domain is followed from the old system (cutover follow): its writes come from there; stop following it (cutover follow --drop) to write here', followed
        USING ERRCODE = 'CF409';
END
$$;
