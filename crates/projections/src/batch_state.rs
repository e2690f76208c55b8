//! Legacy read model of prediction batches: table `batch_state`, one row per batch with the
//! completed players as an array and their counts as a JSON map.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate as _;
use cutover_core::domain::batch::PredictionBatch;
use cutover_core::projection::{ProjectionError, Projector};
use cutover_core::store::StoredEvent;
use serde::Serialize;
use sqlx::PgConnection;

use crate::batches::{apply_steps, BatchRow, BatchStatements};

/// The projection's name.
pub const NAME: &str = "batch_state";

const INSERT: &str = "\
INSERT INTO batch_state (batch_id, expected_players, completed_players, predictions_by_player,
                         total_predictions, is_complete, updated_at, last_sequence)
VALUES ($1, $2, '{}', '{}', 0, false, $3, $4)
ON CONFLICT (batch_id) DO NOTHING";

const ADD_COMPLETIONS: &str = "\
UPDATE batch_state
   SET completed_players = completed_players || $2::text[],
       predictions_by_player = predictions_by_player
           || (SELECT jsonb_object_agg(p, n) FROM unnest($2::text[], $3::int[]) AS c(p, n)),
       total_predictions = total_predictions
           + (SELECT coalesce(sum(n), 0) FROM unnest($3::int[]) AS c(n)),
       updated_at = $4,
       last_sequence = $5
 WHERE batch_id = $1 AND last_sequence < $6";

const COMPLETE: &str = "\
UPDATE batch_state SET is_complete = true, updated_at = $2, last_sequence = $3
 WHERE batch_id = $1 AND last_sequence < $3";

const STATEMENTS: BatchStatements = BatchStatements {
    started: INSERT,
    completions: ADD_COMPLETIONS,
    completed: COMPLETE,
};

const SELECT_ONE: &str = "\
SELECT batch_id, expected_players, completed_players, predictions_by_player, total_predictions,
       is_complete, updated_at, last_sequence
  FROM batch_state
 WHERE batch_id = $1";

const SELECT_SUMMARY: &str = "\
SELECT batch_id, cardinality(expected_players) AS expected_count,
       cardinality(completed_players) AS completed_count, total_predictions, is_complete,
       updated_at AS last_updated, last_sequence
  FROM batch_state
 WHERE batch_id = $1";

const SELECT_COMPLETION: &str = "\
SELECT $2::text AS player_lookup, (predictions_by_player ->> $2)::int AS predictions_count,
       NULL::timestamptz AS completed_at
  FROM batch_state
 WHERE batch_id = $1 AND predictions_by_player ? $2";

const SELECT_COMPLETIONS: &str = "\
SELECT p AS player_lookup, (b.predictions_by_player ->> p)::int AS predictions_count,
       NULL::timestamptz AS completed_at
  FROM batch_state AS b, unnest(b.completed_players) AS p
 WHERE b.batch_id = $1 AND p > $2
 ORDER BY p
 LIMIT $3";

/// Projector of the legacy `batch_state` table.
pub struct LegacyBatchState;

#[async_trait]
impl Projector for LegacyBatchState {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        &["batch_state"]
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

/// A row of the legacy `batch_state` table.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct BatchState {
    pub batch_id: String,
    pub expected_players: Vec<String>,
    pub completed_players: Vec<String>,
    pub predictions_by_player: serde_json::Value,
    pub total_predictions: i64,
    pub is_complete: bool,
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    pub last_sequence: i64,
}

impl BatchRow for BatchState {
    const SELECT_ONE: &'static str = SELECT_ONE;
    const SELECT_SUMMARY: &'static str = SELECT_SUMMARY;
    const SELECT_COMPLETION: &'static str = SELECT_COMPLETION;
    const SELECT_COMPLETIONS: &'static str = SELECT_COMPLETIONS;
}
