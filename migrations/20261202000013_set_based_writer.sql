-- skill_analytics.mean_score becomes a generated column: the mean of the scores summed so far,
-- computed by Postgres from score_sum and attempts, so that writers only add to the sums (a
-- rebuild adds a whole batch's attempts of a subskill in one write). The column keeps its name
-- and type; it moves to the end of the table.
ALTER TABLE public.skill_analytics DROP COLUMN mean_score;
ALTER TABLE public.skill_analytics
    ADD COLUMN mean_score double precision
        GENERATED ALWAYS AS ((score_sum / attempts)::double precision) STORED;
COMMENT ON COLUMN public.skill_analytics.mean_score IS
    'mean of the attempts'' scores: score_sum / attempts';

ALTER TABLE cutover_templates.skill_analytics DROP COLUMN mean_score;
ALTER TABLE cutover_templates.skill_analytics
    ADD COLUMN mean_score double precision
        GENERATED ALWAYS AS ((score_sum / attempts)::double precision) STORED;

-- The command path names the projections it writes inline in the statement that appends the
-- events; the statement calls this when the registry's inline projections are another set
-- (a rebuild swapped or a projection was retired since the server last read them), so that it
-- fails, writes nothing, and the server reads the registry again and retries.
CREATE FUNCTION public.cutover_inline_projections_changed(expected text[], actual text[])
    RETURNS boolean
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'CUT02',
        MESSAGE = format('the projections maintained inline are %s, not %s', actual, expected);
END
$$;
