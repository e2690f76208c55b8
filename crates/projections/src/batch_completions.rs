//! New read model of prediction batches: one `batch_completions` row per completion and one
//! `batch_counters` row per batch, kept in step by one statement per run of completions.

use async_trait::async_trait;
use cqrs_es::Aggregate as _;
use cutover_core::domain::batch::PredictionBatch;
use cutover_core::projection::{ProjectionError, Projector};
use cutover_core::store::StoredEvent;
use sqlx::PgConnection;

use crate::batches::{apply_steps, BatchRow, BatchStatements, BatchSummary};

/// The projection's name.
pub const NAME: &str = "batch_completions";

const INSERT_COUNTERS: &str = "\
INSERT INTO batch_counters (batch_id, expected_count, completed_count, total_predictions,
                            is_complete, last_updated, last_sequence)
VALUES ($1, cardinality($2::text[]), 0, 0, false, $3, $4)
ON CONFLICT (batch_id) DO NOTHING";

/// Counts only the rows actually inserted, so a replayed run cannot count twice.
const ADD_COMPLETIONS: &str = "\
WITH inserted AS (
    INSERT INTO batch_completions (batch_id, player_lookup, predictions_count, completed_at)
    SELECT $1, c.p, c.n, $4 FROM unnest($2::text[], $3::int[]) AS c(p, n)
    ON CONFLICT (batch_id, player_lookup) DO NOTHING
    RETURNING predictions_count
)
UPDATE batch_counters
   SET completed_count = completed_count + (SELECT count(*) FROM inserted),
       total_predictions = total_predictions
           + (SELECT coalesce(sum(predictions_count), 0) FROM inserted),
       last_updated = $4,
       last_sequence = $5
 WHERE batch_id = $1 AND last_sequence < $6";

const COMPLETE: &str = "\
UPDATE batch_counters SET is_complete = true, last_updated = $2, last_sequence = $3
 WHERE batch_id = $1 AND last_sequence < $3";

const STATEMENTS: BatchStatements = BatchStatements {
    started: INSERT_COUNTERS,
    completions: ADD_COMPLETIONS,
    completed: COMPLETE,
};

const SELECT_ONE: &str = "\
SELECT batch_id, expected_count, completed_count, total_predictions, is_complete, last_updated,
       last_sequence
  FROM batch_counters
 WHERE batch_id = $1";

const SELECT_COMPLETION: &str = "\
SELECT player_lookup, predictions_count, completed_at
  FROM batch_completions
 WHERE batch_id = $1 AND player_lookup = $2";

const SELECT_COMPLETIONS: &str = "\
SELECT player_lookup, predictions_count, completed_at
  FROM batch_completions
 WHERE batch_id = $1 AND player_lookup > $2
 ORDER BY player_lookup
 LIMIT $3";

/// Projector of the new `batch_completions` and `batch_counters` tables.
pub struct BatchCompletions;

#[async_trait]
impl Projector for BatchCompletions {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["batch_completions", "batch_counters"]
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[PredictionBatch::TYPE]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&StoredEvent],
    ) -> Result<(), ProjectionError> {
        apply_steps(NAME, &STATEMENTS, conn, events).await
    }
}

/// The new model's batch row is its summary: `batch_counters` holds exactly those fields.
impl BatchRow for BatchSummary {
    const SELECT_ONE: &'static str = SELECT_ONE;
    const SELECT_SUMMARY: &'static str = SELECT_ONE;
    const SELECT_COMPLETION: &'static str = SELECT_COMPLETION;
    const SELECT_COMPLETIONS: &'static str = SELECT_COMPLETIONS;
}
