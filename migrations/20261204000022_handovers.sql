-- Domains whose writes moved from the old system to Cutover (`cutover handover`): the old
-- table they were followed from, where the old log stood when its last change was applied,
-- and how many old rows were compared, with no difference, before Cutover's commands opened.
CREATE TABLE handovers
(
    domain          text        NOT NULL,
    legacy_table    text        NOT NULL,
    lsn             pg_lsn      NOT NULL,
    rows_compared   bigint      NOT NULL,
    handed_over_at  timestamptz NOT NULL DEFAULT now()
);
