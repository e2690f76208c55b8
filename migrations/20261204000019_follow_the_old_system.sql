-- Following the old system's database while it still writes (`cutover follow`): for each
-- followed domain, its replication slot and publication on the old database, and how far its
-- changes have been applied. The position commits in the same transaction as the events a
-- change made, so a follower that stops at any moment applies no change twice and loses none.
CREATE TABLE follows
(
    domain          text PRIMARY KEY,
    slot            text        NOT NULL,
    publication     text        NOT NULL,
    -- the old table followed, as schema.table
    legacy_table    text        NOT NULL,
    -- the snapshot the existing rows were copied under (pg_snapshot's text form), once copied;
    -- the stream skips the transactions it already showed
    snapshot        text,
    -- the commit position of the last old transaction applied, and how many of its row
    -- changes were (all of them once it is done)
    lsn             pg_lsn      NOT NULL DEFAULT '0/0',
    applied         integer     NOT NULL DEFAULT 0,
    changes_applied bigint      NOT NULL DEFAULT 0,
    changes_refused bigint      NOT NULL DEFAULT 0,
    -- how far behind the old database it was at its last look: WAL bytes not yet read, and
    -- the commit time of the oldest old transaction not yet applied (NULL: none waiting)
    lag_bytes       bigint      NOT NULL DEFAULT 0,
    waiting_since   timestamptz,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Changes of the old system the domain refused: kept with why, never dropped in silence.
CREATE TABLE follow_refusals
(
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain       text        NOT NULL REFERENCES follows (domain) ON DELETE CASCADE,
    -- the old transaction's commit position (NULL: a row of the initial copy)
    lsn          pg_lsn,
    legacy_table text        NOT NULL,
    -- the row as the old database showed it, column by column (text values)
    legacy_row   jsonb       NOT NULL,
    reason       text        NOT NULL,
    refused_at   timestamptz NOT NULL DEFAULT now()
);
