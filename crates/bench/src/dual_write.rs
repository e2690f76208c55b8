//! The hand-written dual-write peer: each request is one sqlx transaction that writes the
//! legacy and the new read-model tables (Cutover's own schema) directly. No events, no log, no
//! replay: the approach the product replaces, written as a careful team would write it.

use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use cutover_core::domain::batch::{BatchId, Completion, ExpectedPlayers};
use cutover_core::domain::collection::{CollectionName, Description};
use cutover_core::domain::competency::{Attempt, Competency, SubskillKey};
use cutover_projections::batch_completions::BatchSummary;
use cutover_projections::collections::LegacyCollection;
use cutover_projections::student_competencies::StudentCompetency;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use cutover_projections::legacy_competencies::legacy_documents;

use crate::shared::{
    AttemptBody, CollectionBody, CommandRoutes, CompletionBody, PeerError, StartBody,
};

type Answer = Result<(StatusCode, Json<Value>), PeerError>;

const INSERT_COLLECTION: &str = "\
INSERT INTO collections (collection_id, project_id, collection_name, description, is_active,
                         created_at, updated_at, last_sequence)
VALUES ($1, $2, $3, $4, true, now(), now(), 1)
RETURNING collection_id, project_id, collection_name, description, is_active, created_at,
          updated_at, last_sequence";

const INSERT_PROJECT_COLLECTION: &str = "\
INSERT INTO project_collections (project_id, collection_id, research_context, tags,
                                 linked_project_question_ids, linked_project_hypothesis_ids,
                                 created_at, updated_at, last_sequence, collection_name,
                                 description, is_active)
VALUES ($1, $2, $3, '{}', '{}', '{}', now(), now(), 1, $4, $3, true)";

const INSERT_BATCH_STATE: &str = "\
INSERT INTO batch_state (batch_id, expected_players, completed_players, predictions_by_player,
                         total_predictions, is_complete, updated_at, last_sequence)
VALUES ($1, $2, '{}', '{}', 0, false, now(), 1)
ON CONFLICT (batch_id) DO NOTHING";

const SUMMARY_COLUMNS: &str = "batch_id, expected_count, completed_count, total_predictions, \
                               is_complete, last_updated, last_sequence";

/// A completion of an expected player, unless the player has one.
const INSERT_COMPLETION: &str = "\
INSERT INTO batch_completions (batch_id, player_lookup, predictions_count, completed_at, sequence)
SELECT batch_id, $2, $3, now(), cardinality(completed_players) + 2
  FROM batch_state WHERE batch_id = $1 AND $2 = ANY (expected_players)
ON CONFLICT (batch_id, player_lookup) DO NOTHING";

const SELECT_COMPLETION: &str = "\
SELECT predictions_count FROM batch_completions WHERE batch_id = $1 AND player_lookup = $2";

const UPDATE_STATE: &str = "\
UPDATE batch_state
   SET completed_players = completed_players || $2::text,
       predictions_by_player = predictions_by_player || jsonb_build_object($2::text, $3::int),
       total_predictions = total_predictions + $3,
       is_complete = $4,
       updated_at = now(),
       last_sequence = last_sequence + 1
 WHERE batch_id = $1";

const INSERT_ATTEMPT: &str = "\
INSERT INTO student_attempts (attempt_id, student_id, subject, skill_id, subskill_id, score,
                              analysis, feedback, attempted_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())
RETURNING attempted_at";

const COUNT_ATTEMPTS: &str = "\
SELECT count(*), coalesce(sum(score), 0) FROM student_attempts
 WHERE student_id = $1 AND subject = $2 AND skill_id = $3 AND subskill_id = $4";

const INSERT_LEGACY_ATTEMPT: &str = "\
INSERT INTO legacy_attempts (id, student_id, doc) VALUES ($1, $2, $3)";

const UPSERT_LEGACY_COMPETENCY: &str = "\
INSERT INTO legacy_competencies (id, student_id, doc, last_sequence) VALUES ($1, $2, $3, $4)
ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc, last_sequence = EXCLUDED.last_sequence";

const UPSERT_COMPETENCY: &str = "\
INSERT INTO student_competencies (student_id, subject, skill_id, subskill_id, current_score,
                                  credibility, total_attempts, last_updated, last_sequence)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7)
ON CONFLICT (student_id, subject, skill_id, subskill_id) DO UPDATE
   SET current_score = EXCLUDED.current_score, credibility = EXCLUDED.credibility,
       total_attempts = EXCLUDED.total_attempts, last_updated = EXCLUDED.last_updated,
       last_sequence = EXCLUDED.last_sequence
RETURNING student_id, subject, skill_id, subskill_id, current_score, credibility, total_attempts,
          last_updated, last_sequence";

const UPSERT_ANALYTICS: &str = "\
INSERT INTO skill_analytics AS s (subject, skill_id, subskill_id, attempts, students, score_sum,
                                  last_updated)
VALUES ($1, $2, $3, 1, $4, $5::numeric, $6)
ON CONFLICT (subject, skill_id, subskill_id) DO UPDATE
   SET attempts = s.attempts + 1,
       students = s.students + EXCLUDED.students,
       score_sum = s.score_sum + EXCLUDED.score_sum,
       last_updated = EXCLUDED.last_updated";

/// The routes, on a database that gets Cutover's schema (only its read-model tables are used).
///
/// # Errors
/// The schema could not be applied.
pub async fn router(pool: PgPool) -> anyhow::Result<Router> {
    cutover_runtime::database::MIGRATOR
        .run(&pool)
        .await
        .context("applying the read-model schema")?;
    let routes = CommandRoutes {
        create_collection: post(create_collection),
        start_batch: post(start_batch),
        record_completion: post(record_completion),
        record_attempt: post(record_attempt),
    };
    Ok(routes.router().with_state(pool))
}

async fn create_collection(
    State(pool): State<PgPool>,
    Path(project_id): Path<Uuid>,
    Json(body): Json<CollectionBody>,
) -> Answer {
    let name = CollectionName::parse(&body.collection_name)?;
    let description = Description::parse(&body.description)?;
    let collection_id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    let row: LegacyCollection = sqlx::query_as(INSERT_COLLECTION)
        .bind(collection_id)
        .bind(project_id)
        .bind(name.as_str())
        .bind(description.as_str())
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query(INSERT_PROJECT_COLLECTION)
        .bind(project_id)
        .bind(collection_id)
        .bind(description.as_str())
        .bind(&row.collection_name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(json!({ "collection": row }))))
}

async fn start_batch(State(pool): State<PgPool>, Json(body): Json<StartBody>) -> Answer {
    let batch_id = BatchId::parse(&body.batch_id)?;
    ExpectedPlayers::parse(&body.expected_players)?;
    let expected = i32::try_from(body.expected_players.len()).unwrap_or(i32::MAX);
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(INSERT_BATCH_STATE)
        .bind(batch_id.as_str())
        .bind(&body.expected_players)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if inserted == 0 {
        return Err(PeerError::Conflict("the batch has been started".to_owned()));
    }
    let summary: BatchSummary = sqlx::query_as(&format!(
        "INSERT INTO batch_counters (batch_id, expected_count, completed_count, total_predictions,
                                     is_complete, last_updated, last_sequence, expected_players)
         VALUES ($1, $2, 0, 0, false, now(), 1, $3)
         RETURNING {SUMMARY_COLUMNS}"
    ))
    .bind(batch_id.as_str())
    .bind(expected)
    .bind(&body.expected_players)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(json!({ "batch": summary }))))
}

async fn record_completion(
    State(pool): State<PgPool>,
    Path(batch_id): Path<String>,
    Json(body): Json<CompletionBody>,
) -> Answer {
    let batch_id = BatchId::parse(&batch_id)?;
    Completion::parse(&body.player_lookup, body.predictions_count)?;
    let count = i32::try_from(body.predictions_count)
        .map_err(|_| PeerError::Invalid("predictions_count is too large".to_owned()))?;
    let id = batch_id.as_str();
    let player = body.player_lookup.as_str();
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(INSERT_COMPLETION)
        .bind(id)
        .bind(player)
        .bind(count)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if inserted == 0 {
        // Not recorded now: a repeat (200), another count (409), or no such batch or player.
        let recorded: Option<i32> = sqlx::query_scalar(SELECT_COMPLETION)
            .bind(id)
            .bind(player)
            .fetch_optional(&mut *tx)
            .await?;
        let summary: Option<BatchSummary> = sqlx::query_as(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM batch_counters WHERE batch_id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        return match (recorded, summary) {
            (Some(c), Some(summary)) if c == count => {
                Ok((StatusCode::OK, Json(json!({ "batch": summary }))))
            }
            (Some(c), _) => Err(PeerError::Conflict(format!(
                "player {player:?} already completed with {c} predictions"
            ))),
            (None, Some(_)) => Err(PeerError::Invalid(format!(
                "player {player:?} is not expected in this batch"
            ))),
            (None, None) => Err(PeerError::NotFound("no such batch".to_owned())),
        };
    }
    let summary: BatchSummary = sqlx::query_as(&format!(
        "UPDATE batch_counters
            SET completed_count = completed_count + 1,
                total_predictions = total_predictions + $2,
                is_complete = completed_count + 1 >= expected_count,
                last_updated = now(),
                last_sequence = last_sequence + 1
          WHERE batch_id = $1
         RETURNING {SUMMARY_COLUMNS}"
    ))
    .bind(id)
    .bind(count)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(UPDATE_STATE)
        .bind(id)
        .bind(player)
        .bind(count)
        .bind(summary.is_complete)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let completion = json!({ "player_lookup": player, "predictions_count": count });
    Ok((
        StatusCode::CREATED,
        Json(json!({ "batch": summary, "completion": completion })),
    ))
}

async fn record_attempt(
    State(pool): State<PgPool>,
    Path(student_id): Path<i64>,
    Json(body): Json<AttemptBody>,
) -> Answer {
    let key = SubskillKey::parse(student_id, &body.subject, &body.skill_id, &body.subskill_id)?;
    let attempt_id = Uuid::now_v7();
    Attempt::parse(attempt_id, body.score, &body.analysis, &body.feedback)?;
    let mut tx = pool.begin().await?;
    let attempted_at: DateTime<Utc> = sqlx::query_scalar(INSERT_ATTEMPT)
        .bind(attempt_id)
        .bind(key.student_id)
        .bind(&key.subject)
        .bind(&key.skill_id)
        .bind(&key.subskill_id)
        .bind(body.score)
        .bind(&body.analysis)
        .bind(&body.feedback)
        .fetch_one(&mut *tx)
        .await?;
    let (attempts, score_sum): (i64, f64) = sqlx::query_as(COUNT_ATTEMPTS)
        .bind(key.student_id)
        .bind(&key.subject)
        .bind(&key.skill_id)
        .bind(&key.subskill_id)
        .fetch_one(&mut *tx)
        .await?;
    let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
    let competency = Competency::derive(attempts, score_sum);
    let timestamp = attempted_at.to_rfc3339_opts(SecondsFormat::Micros, true);
    let (attempt_doc, competency_doc) = legacy_documents(
        &key,
        (body.score, &body.analysis, &body.feedback),
        &competency,
        &timestamp,
    );
    sqlx::query(INSERT_LEGACY_ATTEMPT)
        .bind(attempt_id.to_string())
        .bind(key.student_id)
        .bind(&attempt_doc)
        .execute(&mut *tx)
        .await?;
    let total = i32::try_from(attempts).unwrap_or(i32::MAX);
    sqlx::query(UPSERT_LEGACY_COMPETENCY)
        .bind(key.legacy_id())
        .bind(key.student_id)
        .bind(&competency_doc)
        .bind(i64::from(total))
        .execute(&mut *tx)
        .await?;
    let row: StudentCompetency = sqlx::query_as(UPSERT_COMPETENCY)
        .bind(key.student_id)
        .bind(&key.subject)
        .bind(&key.skill_id)
        .bind(&key.subskill_id)
        .bind(competency.current_score)
        .bind(competency.credibility)
        .bind(total)
        .bind(attempted_at)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query(UPSERT_ANALYTICS)
        .bind(&key.subject)
        .bind(&key.skill_id)
        .bind(&key.subskill_id)
        .bind(i64::from(attempts == 1))
        .bind(body.score)
        .bind(attempted_at)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "attempt": attempt_doc, "competency": row })),
    ))
}
