//! Prediction batches: start a batch, record completions one at a time or in bulk (all or
//! nothing), read the batch and its completions from the domain's read source.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use cutover_core::domain::batch::{
    BatchCommand, BatchId, Completion, ExpectedPlayers, InvalidBatchInput, PredictionBatch,
    MAX_PLAYERS,
};
use cutover_core::store::{Committed, Idempotency, Request, StoredResponse};
use cutover_engine::read_source::{Domain, ReadSource};
use cutover_projections::batch_completions as new_model;
use cutover_projections::batch_completions::CompletionRow;
use cutover_projections::batches::{answer, completion_after, completions_answer, completions_of};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;

use crate::bounds::{self, bounds, PageSize};
use crate::error::ApiError;
use crate::extract::{IdempotencyKey, IfMatch, Json, Path, Query};
use crate::reads::Reading;
use crate::routes::{
    document, from_new_model, from_new_model_one, page, run, with_location, with_status, Answer,
    Respond,
};
use crate::state::AppState;

/// The page size of `GET /batches/{batch_id}/completions`.
const PAGE: PageSize = PageSize {
    default: 100,
    max: 1_000,
};

bounds! {
    /// The page size of the completions.
    Limit = PAGE.schema();
    /// A bulk of completions.
    Completions = json!({
        "type": "array", "minItems": 1, "maxItems": MAX_PLAYERS,
        "items": {"$ref": format!(
            "#/components/schemas/{}",
            <CompletionBody as utoipa::ToSchema>::name()
        )},
    });
}

/// The old API's routes of one batch and of its completions.
const ONE: &str = "/batches/{batch_id}";
const COMPLETIONS: &str = "/batches/{batch_id}/completions";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/batches", post(start))
        .route(ONE, get(fetch))
        .route(COMPLETIONS, post(record).get(list_completions))
        .route("/batches/{batch_id}/completions/bulk", post(record_bulk))
        .route("/v2/batches/{batch_id}", get(fetch_new))
        .route(
            "/v2/batches/{batch_id}/completions",
            get(list_completions_new),
        )
}

/// Body of `POST /batches`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct StartBody {
    /// The batch's id: letters, digits, `_`, `.`, `:` and `-`.
    #[schema(value_type = bounds::BatchId)]
    batch_id: String,
    /// The players the batch waits for, each listed once, kept exactly as given.
    #[schema(value_type = bounds::ExpectedPlayers)]
    expected_players: Vec<String>,
}

/// One player's completion.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CompletionBody {
    /// One of the batch's expected players (another is a 422).
    #[schema(value_type = bounds::Player)]
    player_lookup: String,
    /// How many predictions the player completed, written as a JSON integer (`763`, not
    /// `763.0`); a recorded player's count cannot change
    /// (the same count again is a redelivery, another one a 409).
    #[schema(value_type = bounds::PredictionsCount)]
    predictions_count: i64,
}

/// Body of `POST …/completions/bulk`: all recorded, or none.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    #[schema(value_type = Completions)]
    completions: Vec<CompletionBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<i64>,
    after: Option<String>,
}

#[derive(Debug, Serialize)]
struct CompletionPage {
    read_source: ReadSource,
    items: Vec<CompletionRow>,
    /// Pass as `after` for the next page; `null` on the last page.
    next: Option<String>,
}

#[utoipa::path(
    post,
    path = "/batches",
    operation_id = "startBatch",
    summary = "Start a batch",
    tag = "batches",
    description = "Starts a batch for its expected players.",
    params(crate::schemas::CommandHeaders),
    request_body = StartBody,
    responses(
        (status = 201, description = "started", body = crate::schemas::BatchDocument, headers(
            ("ETag" = String, description = "the batch's version, `\"1\"`"),
            ("Location" = String, description = "the batch's path")
        )),
        crate::schemas::Errors, crate::schemas::CommandErrors
    )
)]
async fn start(
    State(state): State<AppState>,
    IfMatch(expected): IfMatch,
    key: IdempotencyKey,
    Json(body): Json<StartBody>,
) -> Result<Response, ApiError> {
    let batch_id = BatchId::parse(&body.batch_id)?;
    let command = BatchCommand::StartBatch {
        expected_players: ExpectedPlayers::parse(&body.expected_players)?,
        updated_at: None,
    };
    let location = format!("/batches/{}", batch_id.as_str());
    let idempotency = key.for_body(&body);
    let id = batch_id.clone();
    execute(
        &state,
        &batch_id,
        command,
        expected,
        idempotency,
        move |conn, committed| {
            let id = id.clone();
            let location = location.clone();
            Box::pin(async move {
                let answer = respond_batch(conn, &id, &committed).await?;
                Ok(with_location(
                    with_status(answer, StatusCode::CREATED),
                    location,
                ))
            })
        },
    )
    .await
}

#[utoipa::path(
    post,
    path = "/batches/{batch_id}/completions",
    operation_id = "recordCompletion",
    summary = "Record a completion",
    tag = "batches",
    description = "Records one player's completion: 201 when recorded, 200 when it repeats a recorded one.",
    params(("batch_id" = inline(bounds::BatchId), Path, description = "letters, digits, `_`, `.`, `:` and `-`"), crate::schemas::CommandHeaders),
    request_body = CompletionBody,
    responses(
        (status = 201, description = "recorded", body = crate::schemas::CompletionDocument, headers(("ETag" = String, description = "the batch's version, `\"<version>\"`"))),
        (status = 200, description = "already recorded", body = crate::schemas::CompletionDocument, headers(("ETag" = String, description = "the batch's version, `\"<version>\"`"))),
        crate::schemas::Errors, crate::schemas::CommandErrors
    )
)]
async fn record(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
    IfMatch(expected): IfMatch,
    key: IdempotencyKey,
    Json(body): Json<CompletionBody>,
) -> Result<Response, ApiError> {
    let batch_id = path_batch_id(&batch_id)?;
    let completion = Completion::parse(&body.player_lookup, body.predictions_count)?;
    let command = BatchCommand::RecordCompletion(completion);
    let idempotency = key.for_body(&body);
    let id = batch_id.clone();
    execute(
        &state,
        &batch_id,
        command,
        expected,
        idempotency,
        move |conn, committed| {
            let id = id.clone();
            let player = body.player_lookup.clone();
            Box::pin(async move {
                let players = std::slice::from_ref(&player);
                let answer = respond_completions(conn, &id, &committed, players, false).await?;
                Ok(created_or_ok(answer, &committed))
            })
        },
    )
    .await
}

#[utoipa::path(
    post,
    path = "/batches/{batch_id}/completions/bulk",
    operation_id = "recordCompletions",
    summary = "Record many completions",
    tag = "batches",
    description = "Records many completions, all or nothing: each as recordCompletion would, a player at most once with one count.",
    params(("batch_id" = inline(bounds::BatchId), Path, description = "letters, digits, `_`, `.`, `:` and `-`"), crate::schemas::CommandHeaders),
    request_body = BulkBody,
    responses(
        (status = 201, description = "recorded", body = crate::schemas::CompletionsDocument, headers(("ETag" = String, description = "the batch's version, `\"<version>\"`"))),
        (status = 200, description = "all already recorded", body = crate::schemas::CompletionsDocument, headers(("ETag" = String, description = "the batch's version, `\"<version>\"`"))),
        crate::schemas::Errors, crate::schemas::CommandErrors
    )
)]
async fn record_bulk(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
    IfMatch(expected): IfMatch,
    key: IdempotencyKey,
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
    let players: Vec<String> = body
        .completions
        .iter()
        .map(|c| c.player_lookup.clone())
        .collect();
    let command = BatchCommand::RecordCompletions(completions);
    let idempotency = key.for_body(&body);
    let id = batch_id.clone();
    execute(
        &state,
        &batch_id,
        command,
        expected,
        idempotency,
        move |conn, committed| {
            let id = id.clone();
            let players = players.clone();
            Box::pin(async move {
                let answer = respond_completions(conn, &id, &committed, &players, true).await?;
                Ok(created_or_ok(answer, &committed))
            })
        },
    )
    .await
}

#[utoipa::path(
    get,
    path = "/batches/{batch_id}",
    operation_id = "getBatch",
    summary = "Get a batch",
    tag = "batches",
    description = "The batch, from the domain's read source.",
    params(("batch_id" = inline(bounds::BatchId), Path, description = "letters, digits, `_`, `.`, `:` and `-`"), crate::schemas::ReadHeaders, crate::schemas::PositionHeaders),
    responses(
        (status = 200, description = "the batch", body = crate::schemas::BatchDocument, headers(
            ("ETag" = String, description = "`\"<version>-<digest>\"`: If-None-Match takes it as this answer")
        )),
        crate::schemas::NotModified,
        crate::schemas::Errors, crate::schemas::UnknownPosition
    )
)]
async fn fetch(reading: Reading, Path(batch_id): Path<String>) -> Result<Response, ApiError> {
    let batch_id = path_batch_id(&batch_id)?;
    reading
        .answer(Domain::Batches, ONE, move |conn, source| {
            let id = batch_id.clone();
            Box::pin(async move {
                let batch = answer(conn, source, id.as_str()).await?;
                let batch = batch.ok_or_else(|| ApiError::NotFound("no such batch".to_owned()))?;
                Ok(document(
                    source,
                    batch.last_sequence,
                    None,
                    &[("batch", json!(batch))],
                ))
            })
        })
        .await
}

#[utoipa::path(
    get,
    path = "/batches/{batch_id}/completions",
    operation_id = "listCompletions",
    summary = "List a batch's completions",
    tag = "batches",
    description = "A page of the batch's completions, by player lookup.",
    params(("batch_id" = inline(bounds::BatchId), Path, description = "letters, digits, `_`, `.`, `:` and `-`"), ("limit" = inline(Option<Limit>), Query, nullable = false, description = "the page's size"), ("after" = inline(Option<bounds::NoNul>), Query, nullable = false, description = "the page starts after this player lookup: a page's `next`"), crate::schemas::ReadHeaders, crate::schemas::PositionHeaders),
    responses(
        (status = 200, description = "a page", body = crate::schemas::CompletionPage),
        crate::schemas::NotModified,
        crate::schemas::Errors, crate::schemas::UnknownPosition
    )
)]
async fn list_completions(
    reading: Reading,
    Path(batch_id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let batch_id = path_batch_id(&batch_id)?;
    let (after, limit) = page_bounds(page)?;
    reading
        .answer(Domain::Batches, COMPLETIONS, move |conn, source| {
            let (id, after) = (batch_id.clone(), after.clone());
            Box::pin(async move {
                if answer(&mut *conn, source, id.as_str()).await?.is_none() {
                    return Err(ApiError::NotFound("no such batch".to_owned()));
                }
                let items = completions_answer(conn, source, id.as_str(), &after, limit).await?;
                Ok(completion_page(source, items, limit))
            })
        })
        .await
}

#[utoipa::path(
    get,
    path = "/v2/batches/{batch_id}",
    operation_id = "getBatchNewShape",
    summary = "Get a batch (new shape)",
    tag = "batches",
    description = "The batch in the new shape (its counters), from the new model whatever the read \
                   source.",
    params(("batch_id" = inline(bounds::BatchId), Path, description = "letters, digits, `_`, `.`, `:` and `-`"), crate::schemas::ReadHeaders, crate::schemas::PositionHeaders),
    responses(
        (status = 200, description = "the batch", body = crate::schemas::BatchNewDocument, headers(
            ("ETag" = String, description = "`\"<version>-<digest>\"`: If-None-Match takes it as this answer")
        )),
        crate::schemas::NotModified,
        crate::schemas::Errors, crate::schemas::UnknownPosition, crate::schemas::Retired
    )
)]
async fn fetch_new(reading: Reading, Path(batch_id): Path<String>) -> Result<Response, ApiError> {
    let batch_id = path_batch_id(&batch_id)?;
    let mut snapshot = reading.open(None).await?;
    let read = new_model::summary(&mut snapshot, batch_id.as_str()).await;
    from_new_model_one(read, new_model::NAME, "batch", "no such batch", |batch| {
        batch.last_sequence
    })
}

#[utoipa::path(
    get,
    path = "/v2/batches/{batch_id}/completions",
    operation_id = "listCompletionsNewShape",
    summary = "List a batch's completions (new shape)",
    tag = "batches",
    description = "A page of the batch's completions in the new shape (with when each was \
                   recorded), by player lookup, from the new model whatever the read source.",
    params(("batch_id" = inline(bounds::BatchId), Path, description = "letters, digits, `_`, `.`, `:` and `-`"), ("limit" = inline(Option<Limit>), Query, nullable = false, description = "the page's size"), ("after" = inline(Option<bounds::NoNul>), Query, nullable = false, description = "the page starts after this player lookup: a page's `next`"), crate::schemas::ReadHeaders, crate::schemas::PositionHeaders),
    responses(
        (status = 200, description = "a page", body = crate::schemas::CompletionPage),
        crate::schemas::NotModified,
        crate::schemas::Errors, crate::schemas::UnknownPosition, crate::schemas::Retired
    )
)]
async fn list_completions_new(
    reading: Reading,
    Path(batch_id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let batch_id = path_batch_id(&batch_id)?;
    let (after, limit) = page_bounds(page)?;
    let mut snapshot = reading.open(None).await?;
    let read = new_model::summary(&mut snapshot, batch_id.as_str()).await;
    if from_new_model(read, new_model::NAME)?.is_none() {
        return Err(ApiError::NotFound("no such batch".to_owned()));
    }
    let items = new_model::completions(&mut snapshot, batch_id.as_str(), &after, limit).await?;
    Ok(Answer(completion_page(ReadSource::New, items, limit)).into_response())
}

/// A page's `after` and `limit`, checked.
fn page_bounds(page: PageQuery) -> Result<(String, i64), ApiError> {
    let limit = PAGE.of(page.limit)?;
    Ok((page.after.unwrap_or_default(), limit))
}

/// A page of `limit` completions: its `next` is the last player when the page is full.
fn completion_page(source: ReadSource, items: Vec<CompletionRow>, limit: i64) -> StoredResponse {
    let full = i64::try_from(items.len()).unwrap_or(i64::MAX) == limit;
    let next = items
        .last()
        .filter(|_| full)
        .map(|row| row.player_lookup.clone());
    page(json!(CompletionPage {
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
fn created_or_ok(answer: StoredResponse, committed: &Committed) -> StoredResponse {
    if committed.events.is_empty() {
        answer
    } else {
        with_status(answer, StatusCode::CREATED)
    }
}

/// Runs a batch command; `respond` reads its answer back before the commit.
async fn execute(
    state: &AppState,
    batch_id: &BatchId,
    command: BatchCommand,
    expected_version: Option<i64>,
    idempotency: Option<Idempotency>,
    respond: impl for<'c> Fn(&'c mut PgConnection, Committed) -> Respond<'c>,
) -> Result<Response, ApiError> {
    let metadata = json!({ "command": command.name() });
    // A completion's answer is its player's completion, which the command writes; a bulk's
    // players are ordered as Postgres orders them, and a start's answer is the whole batch.
    let answered_from_rows = matches!(command, BatchCommand::RecordCompletion(_));
    let request = Request::<PredictionBatch> {
        aggregate_id: batch_id.as_str(),
        command,
        services: &(),
        expected_version,
        metadata: &metadata,
        new_aggregate: false,
        answered_from_rows,
    };
    run(state, request, idempotency, respond).await
}

/// Write-then-read: the batch started, as its GET shows it, read back from the read source in
/// the command's transaction.
async fn respond_batch(
    conn: &mut PgConnection,
    batch_id: &BatchId,
    committed: &Committed,
) -> Result<StoredResponse, ApiError> {
    let source = committed.read_sources.of(Domain::Batches)?;
    let batch = answer(conn, source, batch_id.as_str()).await?;
    Ok(document(
        source,
        committed.version,
        Some(committed.position),
        &[("batch", json!(batch))],
    ))
}

/// Write-then-read: what a completion command wrote, the completions of `players` as
/// `GET …/completions` lists them (`completion` for one, made from the rows the command wrote
/// when it wrote them; `completions` for a bulk), read back from the read source in the
/// command's transaction. The batch's whole document is its GET's:
/// a batch of 10,000 players would send it with every completion.
async fn respond_completions(
    conn: &mut PgConnection,
    batch_id: &BatchId,
    committed: &Committed,
    players: &[String],
    bulk: bool,
) -> Result<StoredResponse, ApiError> {
    let source = committed.read_sources.of(Domain::Batches)?;
    let written = committed.written.as_ref();
    let rows = match players {
        [player] if !bulk => {
            completion_after(conn, source, batch_id.as_str(), player, written).await?
        }
        _ => completions_of(conn, source, batch_id.as_str(), players).await?,
    };
    let row = match bulk {
        false => ("completion", json!(rows.first())),
        true => ("completions", json!(rows)),
    };
    Ok(document(
        source,
        committed.version,
        Some(committed.position),
        &[row],
    ))
}
