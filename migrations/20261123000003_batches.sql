-- Prediction batches, legacy shape: one document-like row per batch, the completed players
-- as an array and their counts as a map.
CREATE TABLE batch_state
(
    batch_id              text PRIMARY KEY,
    expected_players      text[]      NOT NULL,
    -- players in the order they completed
    completed_players     text[]      NOT NULL,
    -- {"player_lookup": predictions_count, ...}
    predictions_by_player jsonb       NOT NULL,
    total_predictions     bigint      NOT NULL,
    -- true once every expected player has completed
    is_complete           boolean     NOT NULL,
    updated_at            timestamptz NOT NULL,
    -- projection bookkeeping: the batch's event sequence this row reflects
    last_sequence         bigint      NOT NULL
);

-- Prediction batches, new shape: one row per completion ...
CREATE TABLE batch_completions
(
    batch_id          text        NOT NULL,
    player_lookup     text        NOT NULL,
    predictions_count integer     NOT NULL,
    completed_at      timestamptz NOT NULL,
    PRIMARY KEY (batch_id, player_lookup)
);

-- ... and one row of counters per batch.
CREATE TABLE batch_counters
(
    batch_id          text PRIMARY KEY,
    -- how many players the batch waits for
    expected_count    integer     NOT NULL,
    completed_count   integer     NOT NULL,
    total_predictions bigint      NOT NULL,
    -- true once every expected player has completed
    is_complete       boolean     NOT NULL,
    last_updated      timestamptz NOT NULL,
    -- projection bookkeeping: the batch's event sequence this row reflects
    last_sequence     bigint      NOT NULL
);

INSERT INTO read_sources (domain, source) VALUES ('batches', 'legacy');
