-- Record a completion: the PlayerCompleted event (its sequence follows the batch's counters
-- row, locked FOR UPDATE so that writers of one batch queue), then the legacy `batch_state`
-- update and the new `batch_completions` + `batch_counters` statement (Cutover's projector
-- statements). Variables (-D): prefix, partitioned (1: each client its own batches
-- prefix-client-k; 0: every client on prefix-0-0, the hot batch), batches.
\set k random(0, :batches - 1)
\set owner :client_id * :partitioned
\set count random(0, 6)
BEGIN;
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT 'prediction_batch', batch_id, last_sequence + 1, 'PlayerCompleted', '1.0',
       jsonb_build_object('PlayerCompleted', jsonb_build_object(
           'player_lookup', 'p' || (last_sequence + 1), 'predictions_count', CAST(:count AS int))),
       '{"command": "RecordCompletion"}'
  FROM batch_counters
 WHERE batch_id = format('%s-%s-%s', CAST(:prefix AS text), CAST(:owner AS text), CAST(:k AS text))
   FOR UPDATE
RETURNING aggregate_id AS bid, sequence AS seq, recorded_at AS at,
          payload -> 'PlayerCompleted' ->> 'player_lookup' AS player
\gset
UPDATE batch_state
   SET completed_players = completed_players || ARRAY[CAST(:player AS text)],
       predictions_by_player = predictions_by_player
           || (SELECT jsonb_object_agg(p, n)
                 FROM unnest(ARRAY[CAST(:player AS text)], ARRAY[CAST(:count AS int)]) AS c(p, n)),
       total_predictions = total_predictions
           + (SELECT coalesce(sum(n), 0) FROM unnest(ARRAY[CAST(:count AS int)]) AS c(n)),
       updated_at = CAST(:at AS timestamptz),
       last_sequence = CAST(:seq AS bigint)
 WHERE batch_id = CAST(:bid AS text) AND last_sequence < CAST(:seq AS bigint);
WITH inserted AS (
    INSERT INTO batch_completions (batch_id, player_lookup, predictions_count, completed_at, sequence)
    SELECT CAST(:bid AS text), c.p, c.n, CAST(:at AS timestamptz), CAST(:seq AS bigint)
      FROM unnest(ARRAY[CAST(:player AS text)], ARRAY[CAST(:count AS int)]) AS c(p, n)
    ON CONFLICT (batch_id, player_lookup) DO NOTHING
    RETURNING predictions_count
)
UPDATE batch_counters
   SET completed_count = completed_count + (SELECT count(*) FROM inserted),
       total_predictions = total_predictions
           + (SELECT coalesce(sum(predictions_count), 0) FROM inserted),
       last_updated = CAST(:at AS timestamptz),
       last_sequence = CAST(:seq AS bigint)
 WHERE batch_id = CAST(:bid AS text) AND last_sequence < CAST(:seq AS bigint);
END;
