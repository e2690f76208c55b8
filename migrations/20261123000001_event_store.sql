-- The event log: postgres-es's `events` layout (its tooling can still read it), extended
-- with a global position, the committing transaction's id and the recording time.
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    -- the aggregate's version after this event; 1 for its first event
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        jsonb                        NOT NULL,
    metadata       jsonb                        NOT NULL,
    -- global position, handed out at insert time: NOT commit order. Readers that follow the
    -- log order by (transaction_id, position) and read only below the oldest running
    -- transaction, so an event that commits late is never skipped.
    position       bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- id of the transaction that appended the event
    transaction_id xid8                         NOT NULL DEFAULT pg_current_xact_id(),
    -- start of the appending transaction; every event of one command shares it
    recorded_at    timestamptz                  NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

-- the gap-free reading order of the log
CREATE INDEX events_log_order ON events (transaction_id, position);

-- postgres-es's snapshot table, kept so its repository works against this database unchanged
CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          jsonb                                NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- Which read model each domain's GET routes serve: 'legacy' or 'new'.
CREATE TABLE read_sources
(
    domain     text PRIMARY KEY,
    source     text        NOT NULL CHECK (source IN ('legacy', 'new')),
    changed_at timestamptz NOT NULL DEFAULT now()
);
