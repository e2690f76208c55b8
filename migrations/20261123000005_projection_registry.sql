-- The projection registry: every projection, the tables it owns, and whether the command path
-- keeps it up to date. The CLI and every server instance act on these rows.
CREATE TABLE projections
(
    name          text PRIMARY KEY,
    -- the domain whose read model it is: collections, batches, competencies
    domain        text        NOT NULL,
    -- which of the domain's two shapes it is
    shape         text        NOT NULL CHECK (shape IN ('legacy', 'new')),
    tables        text[]      NOT NULL,
    -- bumped each time a rebuild swaps new tables in
    version       integer     NOT NULL DEFAULT 1,
    -- live: maintained inline; rebuilding: a rebuild is under way; retired: tables dropped
    state         text        NOT NULL CHECK (state IN ('live', 'rebuilding', 'retired')),
    -- whether commands update its tables inline (false once retired, until a rebuild swaps
    -- fresh tables in)
    inline_active boolean     NOT NULL,
    -- the log position the last rebuild had reached when it swapped its tables in
    rebuilt_to    bigint,
    changed_at    timestamptz NOT NULL DEFAULT now()
);

INSERT INTO projections (name, domain, shape, tables, state, inline_active)
VALUES ('collections', 'collections', 'legacy', '{collections}', 'live', true),
       ('project_collections', 'collections', 'new', '{project_collections}', 'live', true),
       ('batch_state', 'batches', 'legacy', '{batch_state}', 'live', true),
       ('batch_completions', 'batches', 'new', '{batch_completions,batch_counters}', 'live', true),
       ('legacy_competencies', 'competencies', 'legacy',
        '{legacy_attempts,legacy_reviews,legacy_competencies}', 'live', true),
       ('student_competencies', 'competencies', 'new',
        '{student_attempts,student_reviews,student_competencies,skill_analytics}', 'live', true);

-- Rebuild jobs and their progress, visible to every instance.
CREATE TABLE rebuild_jobs
(
    id            uuid PRIMARY KEY,
    -- the projections rebuilt together by this job
    projections   text[]      NOT NULL,
    -- scratch jobs (verify) build into a schema that is dropped, never swapped in
    purpose       text        NOT NULL CHECK (purpose IN ('rebuild', 'verify')),
    status        text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    events_done   bigint      NOT NULL DEFAULT 0,
    -- the events to replay, counted at the start (appends made meanwhile add to it)
    events_total  bigint      NOT NULL DEFAULT 0,
    -- the log position the job has reached
    position      bigint      NOT NULL DEFAULT 0,
    -- milliseconds that appends were held back while the tables were swapped in
    swap_hold_ms  double precision,
    error         text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX rebuild_jobs_recent ON rebuild_jobs (started_at DESC);

-- Empty copies of every read-model table: a rebuild creates its shadow tables LIKE these,
-- including for a retired projection whose live tables were dropped. A migration that changes
-- a read-model table must change its template here too.
CREATE SCHEMA cutover_templates;
CREATE TABLE cutover_templates.collections (LIKE public.collections INCLUDING ALL);
CREATE TABLE cutover_templates.project_collections (LIKE public.project_collections INCLUDING ALL);
CREATE TABLE cutover_templates.batch_state (LIKE public.batch_state INCLUDING ALL);
CREATE TABLE cutover_templates.batch_completions (LIKE public.batch_completions INCLUDING ALL);
CREATE TABLE cutover_templates.batch_counters (LIKE public.batch_counters INCLUDING ALL);
CREATE TABLE cutover_templates.legacy_attempts (LIKE public.legacy_attempts INCLUDING ALL);
CREATE TABLE cutover_templates.legacy_reviews (LIKE public.legacy_reviews INCLUDING ALL);
CREATE TABLE cutover_templates.legacy_competencies (LIKE public.legacy_competencies INCLUDING ALL);
CREATE TABLE cutover_templates.student_attempts (LIKE public.student_attempts INCLUDING ALL);
CREATE TABLE cutover_templates.student_reviews (LIKE public.student_reviews INCLUDING ALL);
CREATE TABLE cutover_templates.student_competencies (LIKE public.student_competencies INCLUDING ALL);
CREATE TABLE cutover_templates.skill_analytics (LIKE public.skill_analytics INCLUDING ALL);

-- Legacy rows of an existing deployment, to adopt with `cutover import-legacy`: load them
-- here (psql \copy) and each becomes one genesis event.
CREATE TABLE import_collections
(
    collection_id   uuid PRIMARY KEY,
    project_id      uuid        NOT NULL,
    collection_name text        NOT NULL,
    description     text        NOT NULL DEFAULT '',
    is_active       boolean     NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
