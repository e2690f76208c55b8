//! The stock cqrs-es peer: `postgres_es::postgres_cqrs` for each aggregate of Cutover's domain,
//! with two `GenericQuery` views per aggregate (the legacy shape and the new one, each a JSON
//! document per aggregate in a `PostgresViewRepository` table). This is the framework's
//! default: events commit first, then each view is loaded, updated and saved on its own, so a
//! view can miss events (a failed or racing view update is only reported to an error handler)
//! and a command that loses the race for a sequence number is refused, not retried. Answers
//! are not read back from the views (the framework's demo answers 204): each request does
//! less than Cutover's write-then-read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use cqrs_es::persist::GenericQuery;
use cqrs_es::{Aggregate, AggregateError, EventEnvelope, View};
use cutover_core::domain::batch::{
    BatchCommand, BatchError, BatchEvent, BatchId, Completion, ExpectedPlayers, PredictionBatch,
};
use cutover_core::domain::collection::{
    Collection, CollectionCommand, CollectionError, CollectionEvent, CollectionName, Description,
};
use cutover_core::domain::competency::{
    Attempt, CompetencyCommand, CompetencyError, CompetencyEvent, StudentSubskill, SubskillKey,
};
use postgres_es::{postgres_cqrs, PostgresCqrs, PostgresViewRepository};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use cutover_projections::legacy_competencies::legacy_documents;

use crate::shared::{
    AttemptBody, CollectionBody, CommandRoutes, CompletionBody, PeerError, StartBody,
};

type Answer = Result<(StatusCode, Json<Value>), PeerError>;

/// postgres-es's event table, as its documentation creates it.
const EVENTS_TABLE: &str = "\
CREATE TABLE IF NOT EXISTS events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
)";

/// The view tables, one per `GenericQuery`.
const VIEW_TABLES: [&str; 6] = [
    "collection_legacy_view",
    "collection_new_view",
    "batch_legacy_view",
    "batch_new_view",
    "competency_legacy_view",
    "competency_new_view",
];

#[derive(Clone)]
struct AppState {
    collections: Arc<PostgresCqrs<Collection>>,
    batches: Arc<PostgresCqrs<PredictionBatch>>,
    competencies: Arc<PostgresCqrs<StudentSubskill>>,
    /// View updates that failed after their events had committed.
    view_errors: Arc<AtomicU64>,
}

/// The routes, on a database that gets postgres-es's tables.
///
/// # Errors
/// The tables could not be created.
pub async fn router(pool: PgPool) -> anyhow::Result<Router> {
    sqlx::query(EVENTS_TABLE)
        .execute(&pool)
        .await
        .context("creating the events table")?;
    for table in VIEW_TABLES {
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                 view_id text NOT NULL PRIMARY KEY,
                 version bigint CHECK (version >= 0) NOT NULL,
                 payload json NOT NULL)"
        ))
        .execute(&pool)
        .await
        .with_context(|| format!("creating {table}"))?;
    }
    let view_errors = Arc::new(AtomicU64::new(0));
    let state = AppState {
        collections: Arc::new(stock::<
            Collection,
            LegacyCollectionView,
            ProjectCollectionView,
        >(
            &pool, [VIEW_TABLES[0], VIEW_TABLES[1]], &view_errors
        )),
        batches: Arc::new(
            stock::<PredictionBatch, BatchStateView, BatchCompletionsView>(
                &pool,
                [VIEW_TABLES[2], VIEW_TABLES[3]],
                &view_errors,
            ),
        ),
        competencies: Arc::new(stock::<
            StudentSubskill,
            LegacyCompetencyView,
            StudentCompetencyView,
        >(
            &pool, [VIEW_TABLES[4], VIEW_TABLES[5]], &view_errors
        )),
        view_errors,
    };
    let routes = CommandRoutes {
        create_collection: post(create_collection),
        start_batch: post(start_batch),
        record_completion: post(record_completion),
        record_attempt: post(record_attempt),
    };
    Ok(routes
        .router()
        .route("/stats", get(stats))
        .with_state(state))
}

/// `postgres_cqrs` with a legacy and a new `GenericQuery` whose errors are counted.
fn stock<A, L, N>(pool: &PgPool, tables: [&str; 2], errors: &Arc<AtomicU64>) -> PostgresCqrs<A>
where
    A: Aggregate<Services = ()> + 'static,
    L: View<A> + 'static,
    N: View<A> + 'static,
{
    let mut legacy = GenericQuery::new(Arc::new(PostgresViewRepository::<L, A>::new(
        tables[0],
        pool.clone(),
    )));
    legacy.use_error_handler(count_into(errors));
    let mut new = GenericQuery::new(Arc::new(PostgresViewRepository::<N, A>::new(
        tables[1],
        pool.clone(),
    )));
    new.use_error_handler(count_into(errors));
    postgres_cqrs(pool.clone(), vec![Box::new(legacy), Box::new(new)], ())
}

fn count_into(errors: &Arc<AtomicU64>) -> Box<cqrs_es::persist::QueryErrorHandler> {
    let errors = Arc::clone(errors);
    Box::new(move |e| {
        errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error = %e, "view update failed");
    })
}

/// Runs a command: its events commit, then the views update. In a task of its own, as Cutover
/// runs its transactions: a request its client drops (wrk closing its connections at the end
/// of a run) must not cancel postgres-es half-way through a transaction, which left pooled
/// connections inside transactions and hung the peer.
async fn execute<A>(
    cqrs: &Arc<PostgresCqrs<A>>,
    aggregate_id: &str,
    command: A::Command,
) -> Result<(), PeerError>
where
    A: Aggregate + 'static,
    A::Command: Send + 'static,
    A::Error: Refusal + Send,
{
    let (cqrs, id) = (Arc::clone(cqrs), aggregate_id.to_owned());
    tokio::spawn(async move { cqrs.execute(&id, command).await })
        .await
        .map_err(|e| PeerError::Internal(format!("the command's task ended: {e}")))?
        .map_err(|e| match e {
            AggregateError::UserError(refused) => refused.peer_error(),
            AggregateError::AggregateConflict => {
                PeerError::Conflict("another command appended to this aggregate".to_owned())
            }
            other => PeerError::Internal(other.to_string()),
        })
}

/// How a domain refusal is answered.
trait Refusal {
    fn peer_error(self) -> PeerError;
}

impl Refusal for CollectionError {
    fn peer_error(self) -> PeerError {
        match self {
            Self::NotFound => PeerError::NotFound(self.to_string()),
            Self::AlreadyExists | Self::Deleted => PeerError::Conflict(self.to_string()),
        }
    }
}

impl Refusal for BatchError {
    fn peer_error(self) -> PeerError {
        match self {
            Self::NotFound => PeerError::NotFound(self.to_string()),
            Self::UnknownPlayer(_) => PeerError::Invalid(self.to_string()),
            Self::AlreadyStarted | Self::ConflictingPredictionCount { .. } => {
                PeerError::Conflict(self.to_string())
            }
        }
    }
}

impl Refusal for CompetencyError {
    fn peer_error(self) -> PeerError {
        PeerError::Conflict(self.to_string())
    }
}

async fn create_collection(
    State(state): State<AppState>,
    Path(project_id): Path<Uuid>,
    Json(body): Json<CollectionBody>,
) -> Answer {
    let command = CollectionCommand::CreateCollection {
        project_id,
        name: CollectionName::parse(&body.collection_name)?,
        description: Description::parse(&body.description)?,
    };
    let id = Uuid::now_v7();
    execute(&state.collections, &id.to_string(), command).await?;
    Ok((StatusCode::CREATED, Json(json!({ "collection_id": id }))))
}

async fn start_batch(State(state): State<AppState>, Json(body): Json<StartBody>) -> Answer {
    let batch_id = BatchId::parse(&body.batch_id)?;
    let command = BatchCommand::StartBatch {
        expected_players: ExpectedPlayers::parse(&body.expected_players)?,
        updated_at: None,
    };
    execute(&state.batches, batch_id.as_str(), command).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "batch_id": batch_id.as_str() })),
    ))
}

async fn record_completion(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
    Json(body): Json<CompletionBody>,
) -> Answer {
    let batch_id = BatchId::parse(&batch_id)?;
    let command = BatchCommand::RecordCompletion(Completion::parse(
        &body.player_lookup,
        body.predictions_count,
    )?);
    execute(&state.batches, batch_id.as_str(), command).await?;
    Ok((
        StatusCode::OK,
        Json(json!({ "batch_id": batch_id.as_str() })),
    ))
}

async fn record_attempt(
    State(state): State<AppState>,
    Path(student_id): Path<i64>,
    Json(body): Json<AttemptBody>,
) -> Answer {
    let key = SubskillKey::parse(student_id, &body.subject, &body.skill_id, &body.subskill_id)?;
    let attempt = Attempt::parse(Uuid::now_v7(), body.score, &body.analysis, &body.feedback)?;
    let id = key.aggregate_id();
    let command = CompetencyCommand::RecordAttempt { key, attempt };
    execute(&state.competencies, &id, command).await?;
    Ok((StatusCode::CREATED, Json(json!({ "competency_id": id }))))
}

/// `{"view_errors": n}`: view updates lost after their events committed.
async fn stats(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "view_errors": state.view_errors.load(Ordering::Relaxed) }))
}

/// The legacy `collections` row, as one document per collection.
#[derive(Debug, Default, Serialize, Deserialize)]
struct LegacyCollectionView {
    collection_id: String,
    project_id: Option<Uuid>,
    collection_name: String,
    description: String,
    is_active: bool,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
}

impl View<Collection> for LegacyCollectionView {
    fn update(&mut self, event: &EventEnvelope<Collection>) {
        let now = Some(Utc::now());
        match &event.payload {
            CollectionEvent::CollectionCreated {
                project_id,
                collection_name,
                description,
            } => {
                self.collection_id.clone_from(&event.aggregate_id);
                self.project_id = Some(*project_id);
                self.collection_name.clone_from(collection_name);
                self.description.clone_from(description);
                self.is_active = true;
                self.created_at = now;
            }
            CollectionEvent::CollectionUpdated {
                collection_name,
                description,
                ..
            } => {
                self.collection_name.clone_from(collection_name);
                self.description = description.clone().unwrap_or_default();
            }
            CollectionEvent::CollectionResearchLinksSet { .. } => {}
            CollectionEvent::CollectionDeleted { .. } => self.is_active = false,
            CollectionEvent::CollectionImported {
                project_id,
                name,
                description,
                is_active,
                created_at,
                ..
            } => {
                self.collection_id.clone_from(&event.aggregate_id);
                self.project_id = Some(*project_id);
                self.collection_name.clone_from(name);
                self.description = description.clone().unwrap_or_default();
                self.is_active = *is_active;
                self.created_at = Some(*created_at);
            }
        }
        self.updated_at = now;
    }
}

/// The new `project_collections` row, as one document per collection.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ProjectCollectionView {
    project_id: Option<Uuid>,
    collection_id: String,
    research_context: String,
    tags: Vec<String>,
    linked_project_question_ids: Vec<Uuid>,
    linked_project_hypothesis_ids: Vec<Uuid>,
    /// A view document cannot be deleted by a `GenericQuery`: a deleted collection is marked.
    deleted: bool,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
}

impl View<Collection> for ProjectCollectionView {
    fn update(&mut self, event: &EventEnvelope<Collection>) {
        let now = Some(Utc::now());
        match &event.payload {
            CollectionEvent::CollectionCreated {
                project_id,
                description,
                ..
            } => {
                self.project_id = Some(*project_id);
                self.collection_id.clone_from(&event.aggregate_id);
                self.research_context.clone_from(description);
                self.created_at = now;
            }
            CollectionEvent::CollectionUpdated { description, .. } => {
                self.research_context = description.clone().unwrap_or_default();
            }
            CollectionEvent::CollectionResearchLinksSet {
                tags,
                question_ids,
                hypothesis_ids,
            } => {
                self.tags.clone_from(tags);
                self.linked_project_question_ids.clone_from(question_ids);
                self.linked_project_hypothesis_ids
                    .clone_from(hypothesis_ids);
            }
            CollectionEvent::CollectionDeleted { .. } => self.deleted = true,
            CollectionEvent::CollectionImported {
                project_id,
                description,
                is_active,
                created_at,
                ..
            } => {
                self.project_id = Some(*project_id);
                self.collection_id.clone_from(&event.aggregate_id);
                self.research_context = description.clone().unwrap_or_default();
                self.deleted = !*is_active;
                self.created_at = Some(*created_at);
            }
        }
        self.updated_at = now;
    }
}

/// The legacy `batch_state` row: players as an array, their counts as a map.
#[derive(Debug, Default, Serialize, Deserialize)]
struct BatchStateView {
    batch_id: String,
    expected_players: Vec<String>,
    completed_players: Vec<String>,
    predictions_by_player: BTreeMap<String, u32>,
    total_predictions: u64,
    is_complete: bool,
    updated_at: Option<DateTime<Utc>>,
}

impl View<PredictionBatch> for BatchStateView {
    fn update(&mut self, event: &EventEnvelope<PredictionBatch>) {
        match &event.payload {
            BatchEvent::BatchStarted {
                expected_player_lookups,
                ..
            } => {
                self.batch_id.clone_from(&event.aggregate_id);
                self.expected_players.clone_from(expected_player_lookups);
            }
            BatchEvent::PlayerCompleted {
                player_lookup,
                predictions_count,
                ..
            } => {
                self.completed_players.push(player_lookup.clone());
                self.predictions_by_player
                    .insert(player_lookup.clone(), *predictions_count);
                self.total_predictions += u64::from(*predictions_count);
            }
            BatchEvent::BatchCompleted { .. } => self.is_complete = true,
        }
        self.updated_at = Some(Utc::now());
    }
}

/// The new shape: the counters, with the completions in the same document (a `GenericQuery`
/// keeps one document per aggregate).
#[derive(Debug, Default, Serialize, Deserialize)]
struct BatchCompletionsView {
    batch_id: String,
    expected_count: usize,
    completed_count: usize,
    total_predictions: u64,
    is_complete: bool,
    completions: BTreeMap<String, CompletionView>,
    last_updated: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CompletionView {
    predictions_count: u32,
    completed_at: DateTime<Utc>,
}

impl View<PredictionBatch> for BatchCompletionsView {
    fn update(&mut self, event: &EventEnvelope<PredictionBatch>) {
        let now = Utc::now();
        match &event.payload {
            BatchEvent::BatchStarted {
                expected_player_lookups,
                ..
            } => {
                self.batch_id.clone_from(&event.aggregate_id);
                self.expected_count = expected_player_lookups.len();
            }
            BatchEvent::PlayerCompleted {
                player_lookup,
                predictions_count,
                ..
            } => {
                let completion = CompletionView {
                    predictions_count: *predictions_count,
                    completed_at: now,
                };
                if self
                    .completions
                    .insert(player_lookup.clone(), completion)
                    .is_none()
                {
                    self.completed_count += 1;
                    self.total_predictions += u64::from(*predictions_count);
                }
            }
            BatchEvent::BatchCompleted { .. } => self.is_complete = true,
        }
        self.last_updated = Some(now);
    }
}

/// The legacy competency document, with its attempt and review documents.
#[derive(Debug, Default, Serialize, Deserialize)]
struct LegacyCompetencyView {
    id: String,
    competency: Value,
    attempts: Vec<Value>,
    reviews: Vec<Value>,
}

impl View<StudentSubskill> for LegacyCompetencyView {
    fn update(&mut self, event: &EventEnvelope<StudentSubskill>) {
        let timestamp = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        self.id.clone_from(&event.aggregate_id);
        match &event.payload {
            CompetencyEvent::AttemptRecorded {
                key,
                score,
                analysis,
                feedback,
                competency,
                ..
            } => {
                let (attempt, competency) =
                    legacy_documents(key, (*score, analysis, feedback), competency, &timestamp);
                self.attempts.push(attempt);
                self.competency = competency;
            }
            CompetencyEvent::ReviewRecorded {
                key,
                problem_id,
                full_review,
                score,
                ..
            } => self.reviews.push(json!({
                "student_id": key.student_id, "subject": key.subject,
                "skill_id": key.skill_id, "subskill_id": key.subskill_id,
                "problem_id": problem_id, "full_review": full_review, "score": score,
                "timestamp": timestamp,
            })),
        }
    }
}

/// The new typed shape: the competency with its attempts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StudentCompetencyView {
    key: Option<SubskillKey>,
    current_score: f64,
    credibility: f64,
    total_attempts: u32,
    attempts: Vec<AttemptView>,
    reviews: usize,
    last_updated: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct AttemptView {
    attempt_id: Uuid,
    score: f64,
    analysis: String,
    feedback: String,
    attempted_at: DateTime<Utc>,
}

impl View<StudentSubskill> for StudentCompetencyView {
    fn update(&mut self, event: &EventEnvelope<StudentSubskill>) {
        let now = Utc::now();
        match &event.payload {
            CompetencyEvent::AttemptRecorded {
                key,
                attempt_id,
                score,
                analysis,
                feedback,
                competency,
                ..
            } => {
                self.key = Some(key.clone());
                self.current_score = competency.current_score;
                self.credibility = competency.credibility;
                self.total_attempts = competency.total_attempts;
                self.attempts.push(AttemptView {
                    attempt_id: *attempt_id,
                    score: *score,
                    analysis: analysis.clone(),
                    feedback: feedback.clone(),
                    attempted_at: now,
                });
            }
            CompetencyEvent::ReviewRecorded { key, .. } => {
                self.key = Some(key.clone());
                self.reviews += 1;
            }
        }
        self.last_updated = Some(now);
    }
}
