-- Batches for the pgbench completion scripts (run with psql -v clients=.. -v batches=..
-- -v players=.. -v hot_players=..): for each client c and k < batches a batch 'pgb-c-k' with
-- `players` expected players, and the hot batches 'pgh1-0-0' and 'pgh16-0-0' (one per client
-- count) with `hot_players`. Each has its BatchStarted event and its two read-model rows, as
-- Cutover's StartBatch leaves them.
CREATE TEMP TABLE bench_batches AS
SELECT format('pgb-%s-%s', c, k) AS batch_id,
       (SELECT array_agg(format('p%s', p) ORDER BY p) FROM generate_series(0, :players - 1) AS p) AS players
  FROM generate_series(0, :clients - 1) AS c, generate_series(0, :batches - 1) AS k
UNION ALL
SELECT h, (SELECT array_agg(format('p%s', p) ORDER BY p) FROM generate_series(0, :hot_players - 1) AS p)
  FROM unnest(ARRAY['pgh1-0-0', 'pgh16-0-0']) AS h;

INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT 'prediction_batch', batch_id, 1, 'BatchStarted', '1.0',
       jsonb_build_object('BatchStarted', jsonb_build_object('expected_players', to_jsonb(players))),
       '{"command": "StartBatch"}'
  FROM bench_batches;

INSERT INTO batch_state (batch_id, expected_players, completed_players, predictions_by_player,
                         total_predictions, is_complete, updated_at, last_sequence)
SELECT batch_id, players, '{}', '{}', 0, false, now(), 1 FROM bench_batches;

INSERT INTO batch_counters (batch_id, expected_count, completed_count, total_predictions,
                            is_complete, last_updated, last_sequence, expected_players)
SELECT batch_id, cardinality(players), 0, 0, false, now(), 1, players FROM bench_batches;

VACUUM ANALYZE;
