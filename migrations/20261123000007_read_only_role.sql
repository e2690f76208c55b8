-- A read-only role for the people and tools that query the read models directly (psql, BI):
-- it can SELECT the read-model tables and nothing else — not the event log, not the
-- idempotency keys, not the registry. It cannot log in; give it to users:
--   CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE cutover_reader;
-- Roles belong to the whole cluster, so another database may have created it already.
DO
$$
BEGIN
    CREATE ROLE cutover_reader NOLOGIN;
EXCEPTION
    WHEN duplicate_object THEN NULL;
END
$$;

GRANT USAGE ON SCHEMA public TO cutover_reader;
-- A rebuild swaps new tables in; it grants them again (see the projections crate, rebuild).
GRANT SELECT ON collections, project_collections, batch_state, batch_completions, batch_counters,
    legacy_attempts, legacy_reviews, legacy_competencies, student_attempts, student_reviews,
    student_competencies, skill_analytics TO cutover_reader;
