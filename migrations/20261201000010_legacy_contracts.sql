-- The old system's contracts, kept exactly.
--
-- 1. Legacy rows as the old tables held them: the staging table takes every column the old
--    `collections` table allowed to be NULL (`cutover import-legacy` lists and skips rows
--    without an id's project or a valid name, and maps the other NULLs as docs/operations.md
--    says), and the legacy table keeps a NULL description as NULL.
ALTER TABLE import_collections
    ALTER COLUMN project_id DROP NOT NULL,
    ALTER COLUMN collection_name DROP NOT NULL,
    ALTER COLUMN description DROP NOT NULL,
    ALTER COLUMN description DROP DEFAULT,
    ALTER COLUMN is_active DROP NOT NULL,
    ALTER COLUMN created_at DROP NOT NULL,
    ALTER COLUMN updated_at DROP NOT NULL;

-- (A retired projection has no live table: only its template is changed then.)
ALTER TABLE IF EXISTS public.collections ALTER COLUMN description DROP NOT NULL;
ALTER TABLE cutover_templates.collections ALTER COLUMN description DROP NOT NULL;

-- 2. The old document ids: a legacy competency document's id is exactly
--    `{student_id}_{subject}_{skill_id}_{subskill_id}`, with nothing escaped. Documents
--    written before used `%25` and `%5F` inside a part; they get the old store's id.
COMMENT ON COLUMN cutover_templates.legacy_competencies.id IS
    '{student_id}_{subject}_{skill_id}_{subskill_id}, exactly as the old document store wrote it';
DO
$$
BEGIN
    IF to_regclass('public.legacy_competencies') IS NOT NULL THEN
        UPDATE public.legacy_competencies
           SET id = student_id || '_' || (doc ->> 'subject') || '_' || (doc ->> 'skill_id') || '_'
                    || (doc ->> 'subskill_id')
         WHERE id IS DISTINCT FROM student_id || '_' || (doc ->> 'subject') || '_'
                    || (doc ->> 'skill_id') || '_' || (doc ->> 'subskill_id');
        COMMENT ON COLUMN public.legacy_competencies.id IS
            '{student_id}_{subject}_{skill_id}_{subskill_id}, exactly as the old document store wrote it';
    END IF;
END
$$;

-- Two subskills that the old id format maps to one id (`a_b` + `c` against `a` + `b_c`) are
-- never merged: the legacy projector's upsert calls this when the id it writes already
-- belongs to another subskill, and the command, rebuild or verification fails with SQLSTATE
-- CUT01 and a message naming both. (Schema-qualified by its callers: a rebuild's search_path
-- is its shadow schema.)
CREATE FUNCTION public.cutover_legacy_id_taken(id text, existing jsonb, incoming jsonb)
    RETURNS jsonb
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'CUT01',
        MESSAGE = format(
            'legacy competency id %s is already the id of subskill (subject %L, skill_id %L, subskill_id %L) of student %s; subskill (subject %L, skill_id %L, subskill_id %L) maps to the same id',
            id, existing ->> 'subject', existing ->> 'skill_id', existing ->> 'subskill_id',
            existing ->> 'student_id', incoming ->> 'subject', incoming ->> 'skill_id',
            incoming ->> 'subskill_id');
END
$$;
