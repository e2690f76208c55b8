-- The new read models hold everything the old answers show, so that the old clients' routes
-- answer the same bodies whichever model serves them, and the legacy projection can be retired
-- without changing an answer:
-- - project_collections keeps the collection's name, its description exactly as the old row
--   had it (NULL for an imported row without one) and whether it is active: a deleted
--   collection keeps its row with is_active = false (the new shape's readers list the rows
--   WHERE is_active);
-- - batch_counters keeps the expected players, and batch_completions the batch event sequence
--   of each completion, which orders the completed players as the old array did.
-- Existing rows are filled from the legacy tables where they exist; otherwise a rebuild of the
-- new projection (`cutover rebuild project_collections batch_completions`) fills them.

ALTER TABLE IF EXISTS public.project_collections
    ADD COLUMN collection_name text    NOT NULL DEFAULT '',
    ADD COLUMN description     text,
    ADD COLUMN is_active       boolean NOT NULL DEFAULT true;
ALTER TABLE IF EXISTS public.project_collections
    ALTER COLUMN collection_name DROP DEFAULT,
    ALTER COLUMN is_active DROP DEFAULT;
ALTER TABLE cutover_templates.project_collections
    ADD COLUMN collection_name text    NOT NULL,
    ADD COLUMN description     text,
    ADD COLUMN is_active       boolean NOT NULL;
COMMENT ON COLUMN cutover_templates.project_collections.description IS
    'the description as the old row had it (NULL for an imported row without one)';

ALTER TABLE IF EXISTS public.batch_counters ADD COLUMN expected_players text[] NOT NULL DEFAULT '{}';
ALTER TABLE IF EXISTS public.batch_counters ALTER COLUMN expected_players DROP DEFAULT;
ALTER TABLE cutover_templates.batch_counters ADD COLUMN expected_players text[] NOT NULL;

ALTER TABLE IF EXISTS public.batch_completions ADD COLUMN sequence bigint NOT NULL DEFAULT 0;
ALTER TABLE IF EXISTS public.batch_completions ALTER COLUMN sequence DROP DEFAULT;
ALTER TABLE cutover_templates.batch_completions ADD COLUMN sequence bigint NOT NULL;

DO
$$
BEGIN
    IF to_regclass('public.project_collections') IS NOT NULL
        AND to_regclass('public.collections') IS NOT NULL THEN
        UPDATE public.project_collections AS n
           SET collection_name = l.collection_name, description = l.description
          FROM public.collections AS l
         WHERE l.collection_id = n.collection_id;
        INSERT INTO public.project_collections
            (project_id, collection_id, research_context, tags, linked_project_question_ids,
             linked_project_hypothesis_ids, created_at, updated_at, last_sequence,
             collection_name, description, is_active)
        SELECT l.project_id, l.collection_id, coalesce(l.description, ''), '{}', '{}', '{}',
               l.created_at, l.updated_at, l.last_sequence, l.collection_name, l.description,
               false
          FROM public.collections AS l
         WHERE NOT l.is_active
        ON CONFLICT DO NOTHING;
    END IF;
    IF to_regclass('public.batch_counters') IS NOT NULL
        AND to_regclass('public.batch_state') IS NOT NULL THEN
        UPDATE public.batch_counters AS n
           SET expected_players = l.expected_players
          FROM public.batch_state AS l
         WHERE l.batch_id = n.batch_id;
        -- the k-th completion of a batch is its event k + 1 (the batch's start is event 1)
        UPDATE public.batch_completions AS n
           SET sequence = array_position(l.completed_players, n.player_lookup) + 1
          FROM public.batch_state AS l
         WHERE l.batch_id = n.batch_id;
    END IF;
END
$$;

DO
$$
BEGIN
    IF to_regclass('public.project_collections') IS NOT NULL THEN
        COMMENT ON COLUMN public.project_collections.description IS
            'the description as the old row had it (NULL for an imported row without one)';
        COMMENT ON COLUMN public.project_collections.is_active IS
            'false once the collection is deleted: its row stays, for the old answers';
    END IF;
    IF to_regclass('public.batch_completions') IS NOT NULL THEN
        COMMENT ON COLUMN public.batch_completions.sequence IS
            'the batch event sequence of the completion: orders the completed players';
    END IF;
END
$$;
