-- The activity history: every read-source switch, who asked for it and whether it overrode
-- the verification gate (a switch needs a clean consistency report of its domain taken after
-- the last rebuild, repair or retirement of the domain's projections, unless forced).
CREATE TABLE admin_actions
(
    id     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    -- read_source
    action text        NOT NULL,
    domain text        NOT NULL,
    -- who: `cli:<user>`, or `api:<scope> token <fingerprint>` (never the token itself)
    actor  text        NOT NULL,
    -- the gate was closed and the action was forced past it
    forced boolean     NOT NULL,
    -- {source, gate: {open, reason}}
    detail jsonb       NOT NULL
);
CREATE INDEX admin_actions_recent ON admin_actions (at DESC);

-- A competency stream's aggregate id from its four parts, as the domain writes it
-- (`SubskillKey::aggregate_id`: `%` and `_` inside a part written `%25` and `%5F`), so that a
-- repair and verify find a subskill's rows by the aggregate they belong to. A test compares it
-- with the Rust function on awkward parts.
CREATE FUNCTION public.cutover_subskill_id(student_id bigint, subject text, skill_id text,
                                           subskill_id text)
    RETURNS text
    LANGUAGE sql
    IMMUTABLE PARALLEL SAFE AS
$$
SELECT student_id || '_' || replace(replace(subject, '%', '%25'), '_', '%5F') || '_'
           || replace(replace(skill_id, '%', '%25'), '_', '%5F') || '_'
           || replace(replace(subskill_id, '%', '%25'), '_', '%5F')
$$;
