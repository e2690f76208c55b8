//! Prediction batches: start a batch, record completions one at a time or in bulk (all or
//! nothing), read the batch and its completions from the domain's read source.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use cutover_core::domain::batch::{
    BatchCommand, BatchId, Completion, ExpectedPlayers, InvalidBatchInput, PredictionBatch,
    MAX_PLAYERS,
};
use cutover_core::read_source::{self, Domain, ReadSource};
use cutover_core::store::Committed;
use cutover_projections::batch_state::BatchState;
use cutover_projections::batches::{
    completion, completions, find, summary, BatchRow, BatchSummary, CompletionRow,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::ApiError;
use crate::extract::{IfMatch, Json, Path, Query};
use crate::routes::document;
use crate::AppState;

/// Default and largest page of `GET /batches/{batch_id}/completions`.
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/batches", post(start))
        .route("/batches/{batch_id}", get(fetch))
        .route(
            "/batches/{batch_id}/completions",
            post(record).get(list_completions),
        )
        .route("/batches/{batch_id}/completions/bulk", post(record_bulk))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    batch_id: String,
    expected_players: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionBody {
    player_lookup: String,
    predictions_count: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    completions: Vec<CompletionBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<i64>,
    after: Option<String>,
}

/// A batch as its read source has it.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum BatchView {
    Legacy(BatchState),
    New(BatchSummary),
}

#[derive(Debug, Serialize)]
struct CompletionPage {
    read_source: ReadSource,
    items: Vec<CompletionRow>,
    /// Pass as `after` for the next page; `null` on the last page.
    next: Option<String>,
}

async fn start(
    State(state): State<AppState>,
    IfMatch(expected): IfMatch,
    Json(body): Json<StartBody>,
) -> Result<Response, ApiError> {
    let batch_id = BatchId::parse(&body.batch_id)?;
    let command = BatchCommand::StartBatch {
        expected_players: ExpectedPlayers::parse(&body.expected_players)?,
    };
    let committed = execute(&state, &batch_id, command, expected).await?;
    let mut response = respond(&state, &batch_id, &committed, None).await?;
    *response.status_mut() = StatusCode::CREATED;
    if let Ok(location) = HeaderValue::from_str(&format!("/batches/{}", batch_id.as_str())) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn record(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
    IfMatch(expected): IfMatch,
    Json(body): Json<CompletionBody>,
) -> Result<Response, ApiError> {
    let batch_id = path_batch_id(&batch_id)?;
    let completion = Completion::parse(&body.player_lookup, body.predictions_count)?;
    let command = BatchCommand::RecordCompletion(completion);
    let committed = execute(&state, &batch_id, command, expected).await?;
    let player = Some(body.player_lookup.as_str());
    created_or_ok(
        respond(&state, &batch_id, &committed, player).await?,
        &committed,
    )
}

async fn record_bulk(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
    IfMatch(expected): IfMatch,
    Json(body): Json<BulkBody>,
) -> Result<Response, ApiError> {
    let batch_id = path_batch_id(&batch_id)?;
    let count = body.completions.len();
    if count == 0 || count > MAX_PLAYERS {
        return Err(InvalidBatchInput::CompletionCount(count).into());
    }
    let completions = body
        .completions
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Completion::parse(&c.player_lookup, c.predictions_count).map_err(|e| {
                ApiError::invalid(&format!("completions[{i}].{}", e.field()), e.to_string())
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let command = BatchCommand::RecordCompletions(completions);
    let committed = execute(&state, &batch_id, command, expected).await?;
    created_or_ok(
        respond(&state, &batch_id, &committed, None).await?,
        &committed,
    )
}

async fn fetch(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
) -> Result<Response, ApiError> {
    let batch_id = path_batch_id(&batch_id)?;
    let (source, view) = read(&state, &batch_id).await?;
    let view = view.ok_or_else(|| ApiError::NotFound("no such batch".to_owned()))?;
    let version = match &view {
        BatchView::Legacy(row) => row.last_sequence,
        BatchView::New(row) => row.last_sequence,
    };
    Ok(document(source, version, None, &[("batch", json!(view))]))
}

async fn list_completions(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<axum::Json<CompletionPage>, ApiError> {
    let batch_id = path_batch_id(&batch_id)?;
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let after = page.after.unwrap_or_default();
    let (source, view) = read(&state, &batch_id).await?;
    if view.is_none() {
        return Err(ApiError::NotFound("no such batch".to_owned()));
    }
    let pool = state.store.pool();
    let id = batch_id.as_str();
    let items = match source {
        ReadSource::Legacy => completions::<BatchState>(pool, id, &after, limit).await?,
        ReadSource::New => completions::<BatchSummary>(pool, id, &after, limit).await?,
    };
    let full = i64::try_from(items.len()).unwrap_or(i64::MAX) == limit;
    let next = items
        .last()
        .filter(|_| full)
        .map(|row| row.player_lookup.clone());
    Ok(axum::Json(CompletionPage {
        read_source: source,
        items,
        next,
    }))
}

/// A batch id in the path: malformed is a 400 (as a malformed uuid is elsewhere).
fn path_batch_id(raw: &str) -> Result<BatchId, ApiError> {
    BatchId::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// 201 when the command appended events, 200 when it was an idempotent repeat.
fn created_or_ok(mut response: Response, committed: &Committed) -> Result<Response, ApiError> {
    if !committed.events.is_empty() {
        *response.status_mut() = StatusCode::CREATED;
    }
    Ok(response)
}

async fn execute(
    state: &AppState,
    batch_id: &BatchId,
    command: BatchCommand,
    expected_version: Option<i64>,
) -> Result<Committed, ApiError> {
    let name = match &command {
        BatchCommand::StartBatch { .. } => "StartBatch",
        BatchCommand::RecordCompletion(_) => "RecordCompletion",
        BatchCommand::RecordCompletions(_) => "RecordCompletions",
    };
    Ok(state
        .store
        .execute::<PredictionBatch>(
            batch_id.as_str(),
            command,
            &(),
            expected_version,
            &json!({ "command": name }),
        )
        .await?)
}

/// Write-then-read: the batch's summary (and the player's completion, for a single one) read
/// back from the read source after the commit.
async fn respond(
    state: &AppState,
    batch_id: &BatchId,
    committed: &Committed,
    player: Option<&str>,
) -> Result<Response, ApiError> {
    let pool = state.store.pool();
    let source = read_source::current(pool, Domain::Batches).await?;
    let mut rows = match source {
        ReadSource::Legacy => read_back::<BatchState>(state, batch_id, player).await?,
        ReadSource::New => read_back::<BatchSummary>(state, batch_id, player).await?,
    };
    if player.is_none() {
        rows.truncate(1);
    }
    Ok(document(
        source,
        committed.version,
        Some(committed.position),
        &rows,
    ))
}

async fn read_back<T: BatchRow>(
    state: &AppState,
    batch_id: &BatchId,
    player: Option<&str>,
) -> Result<Vec<(&'static str, serde_json::Value)>, ApiError> {
    let pool = state.store.pool();
    let batch = summary::<T>(pool, batch_id.as_str()).await?;
    let completion = match player {
        Some(player) => completion::<T>(pool, batch_id.as_str(), player).await?,
        None => None,
    };
    Ok(vec![
        ("batch", json!(batch)),
        ("completion", json!(completion)),
    ])
}

async fn read(
    state: &AppState,
    batch_id: &BatchId,
) -> Result<(ReadSource, Option<BatchView>), ApiError> {
    let pool = state.store.pool();
    let source = read_source::current(pool, Domain::Batches).await?;
    let view = match source {
        ReadSource::Legacy => find::<BatchState>(pool, batch_id.as_str())
            .await?
            .map(BatchView::Legacy),
        ReadSource::New => find::<BatchSummary>(pool, batch_id.as_str())
            .await?
            .map(BatchView::New),
    };
    Ok((source, view))
}
