//! Competencies: record attempts and reviews of a student's subskill; read competencies from
//! the domain's read source; the skill analytics (new shape only) for dashboards.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use cutover_core::domain::competency::{
    Attempt, CompetencyCommand, FullReview, Review, StudentSubskill, SubskillKey,
};
use cutover_core::store::{Committed, Idempotency, Request, StoredResponse};
use cutover_engine::read_source::{Domain, ReadSource};
use cutover_projections::legacy_competencies::{self as legacy, Collection};
use cutover_projections::student_competencies as typed;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::bounds::{self, bounds, PageSize};
use crate::error::ApiError;
use crate::extract::{IdempotencyKey, IfMatch, Json, Path, Query};
use crate::reads::Reading;
use crate::routes::{
    document, from_new_model, from_new_model_one, page as page_of, run, with_location, with_status,
    Respond,
};
use crate::state::AppState;

/// The page size of the list routes.
const PAGE: PageSize = PageSize {
    default: 100,
    max: 1_000,
};
/// Largest offset of the list routes.
const MAX_OFFSET: i64 = 1_000_000;

bounds! {
    /// The page size of the lists.
    Limit = PAGE.schema();
    /// Rows a list skips.
    Offset = serde_json::json!({
        "type": "integer", "format": "int64", "minimum": 0, "maximum": MAX_OFFSET, "default": 0,
    });
}

/// The old API's routes of a student's competencies and of one competency.
const LIST: &str = "/students/{student_id}/competencies";
const ONE: &str = "/students/{student_id}/competencies/{subject}/{skill_id}/{subskill_id}";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/students/{student_id}/attempts", post(record_attempt))
        .route("/students/{student_id}/reviews", post(record_review))
        .route(LIST, get(list))
        .route(ONE, get(fetch))
        .route("/analytics/skills", get(analytics))
        .route("/v2/students/{student_id}/competencies", get(list_new))
        .route(
            "/v2/students/{student_id}/competencies/{subject}/{skill_id}/{subskill_id}",
            get(fetch_new),
        )
}

/// Body of `POST …/attempts`: one attempt at a subskill.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AttemptBody {
    #[schema(value_type = bounds::KeyPart)]
    subject: String,
    #[schema(value_type = bounds::KeyPart)]
    skill_id: String,
    #[schema(value_type = bounds::KeyPart)]
    subskill_id: String,
    /// A number, decimals allowed.
    #[schema(value_type = bounds::Score)]
    score: f64,
    /// Absent is empty.
    #[serde(default)]
    #[schema(value_type = bounds::Text)]
    analysis: String,
    /// Absent is empty.
    #[serde(default)]
    #[schema(value_type = bounds::Text)]
    feedback: String,
}

/// Body of `POST …/reviews`: a review of one problem (it does not change the competency).
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReviewBody {
    #[schema(value_type = bounds::KeyPart)]
    subject: String,
    #[schema(value_type = bounds::KeyPart)]
    skill_id: String,
    #[schema(value_type = bounds::KeyPart)]
    subskill_id: String,
    #[schema(value_type = bounds::KeyPart)]
    problem_id: String,
    #[schema(value_type = crate::schemas::FullReview)]
    full_review: FullReview,
    /// A number, decimals allowed.
    #[schema(value_type = bounds::Score)]
    score: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<i64>,
    offset: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnalyticsQuery {
    subject: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[derive(Debug, Serialize)]
struct Page<T> {
    #[serde(skip_serializing_if = "Option::is_none")]
    read_source: Option<ReadSource>,
    items: Vec<T>,
}

#[utoipa::path(
    post,
    path = "/students/{student_id}/attempts",
    operation_id = "recordAttempt",
    summary = "Record an attempt",
    tag = "competencies",
    description = "Records an attempt; the answer carries the attempt and the competency it led to.",
    params(("student_id" = inline(bounds::StudentId), Path, description = "the student: a positive integer"), crate::schemas::CommandHeaders),
    request_body = AttemptBody,
    responses(
        (status = 201, description = "recorded", body = crate::schemas::AttemptDocument, headers(
            ("ETag" = String, description = "the subskill's version, `\"<version>\"`"),
            ("Location" = String, description = "the competency's path")
        )),
        crate::schemas::Errors, crate::schemas::CommandErrors
    )
)]
async fn record_attempt(
    State(state): State<AppState>,
    Path(student_id): Path<i64>,
    IfMatch(expected): IfMatch,
    idempotency_key: IdempotencyKey,
    Json(body): Json<AttemptBody>,
) -> Result<Response, ApiError> {
    let key = SubskillKey::parse(student_id, &body.subject, &body.skill_id, &body.subskill_id)?;
    let attempt_id = Uuid::now_v7();
    let attempt = Attempt::parse(attempt_id, body.score, &body.analysis, &body.feedback)?;
    let command = CompetencyCommand::RecordAttempt {
        key: key.clone(),
        attempt,
    };
    let idempotency = idempotency_key.for_body(&body);
    let subskill = key.clone();
    execute(
        &state,
        &key,
        command,
        expected,
        idempotency,
        move |conn, committed| {
            let subskill = subskill.clone();
            Box::pin(async move {
                let source = committed.read_sources.of(Domain::Competencies)?;
                let written = committed.written.as_ref();
                let attempt = legacy::document_answer_after(
                    &mut *conn,
                    source,
                    Collection::Attempts,
                    attempt_id,
                    written,
                )
                .await?;
                let competency =
                    legacy::competency_answer_after(&mut *conn, source, &subskill, written).await?;
                let rows = [
                    ("attempt", json!(attempt)),
                    ("competency", json!(competency)),
                ];
                Ok(created(source, &committed, &rows, &subskill))
            })
        },
    )
    .await
}

#[utoipa::path(
    post,
    path = "/students/{student_id}/reviews",
    operation_id = "recordReview",
    summary = "Record a review",
    tag = "competencies",
    description = "Records a problem review.",
    params(("student_id" = inline(bounds::StudentId), Path, description = "the student: a positive integer"), crate::schemas::CommandHeaders),
    request_body = ReviewBody,
    responses(
        (status = 201, description = "recorded", body = crate::schemas::ReviewDocument, headers(
            ("ETag" = String, description = "the subskill's version, `\"<version>\"`"),
            ("Location" = String, description = "the competency's path")
        )),
        crate::schemas::Errors, crate::schemas::CommandErrors
    )
)]
async fn record_review(
    State(state): State<AppState>,
    Path(student_id): Path<i64>,
    IfMatch(expected): IfMatch,
    idempotency_key: IdempotencyKey,
    Json(body): Json<ReviewBody>,
) -> Result<Response, ApiError> {
    let idempotency = idempotency_key.for_body(&body);
    let key = SubskillKey::parse(student_id, &body.subject, &body.skill_id, &body.subskill_id)?;
    let review_id = Uuid::now_v7();
    let review = Review::parse(review_id, &body.problem_id, body.full_review, body.score)?;
    let command = CompetencyCommand::RecordReview {
        key: key.clone(),
        review,
    };
    let subskill = key.clone();
    execute(
        &state,
        &key,
        command,
        expected,
        idempotency,
        move |conn, committed| {
            let subskill = subskill.clone();
            Box::pin(async move {
                let source = committed.read_sources.of(Domain::Competencies)?;
                let review = legacy::document_answer_after(
                    &mut *conn,
                    source,
                    Collection::Reviews,
                    review_id,
                    committed.written.as_ref(),
                )
                .await?;
                let review = json!(review);
                Ok(created(
                    source,
                    &committed,
                    &[("review", review)],
                    &subskill,
                ))
            })
        },
    )
    .await
}

#[utoipa::path(
    get,
    path = "/students/{student_id}/competencies/{subject}/{skill_id}/{subskill_id}",
    operation_id = "getCompetency",
    summary = "Get a competency",
    tag = "competencies",
    description = "One competency: 404 until the subskill has an attempt.",
    params(("student_id" = inline(bounds::StudentId), Path, description = "the student: a positive integer"), ("subject" = inline(bounds::KeyPart), Path), ("skill_id" = inline(bounds::KeyPart), Path), ("subskill_id" = inline(bounds::KeyPart), Path), crate::schemas::ReadHeaders, crate::schemas::PositionHeaders),
    responses(
        (status = 200, description = "the competency", body = crate::schemas::CompetencyDocument, headers(
            ("ETag" = String, description = "`\"<version>-<digest>\"`: If-None-Match takes it as this answer")
        )),
        crate::schemas::NotModified,
        crate::schemas::Errors, crate::schemas::UnknownPosition
    )
)]
async fn fetch(
    reading: Reading,
    Path((student_id, subject, skill_id, subskill_id)): Path<(i64, String, String, String)>,
) -> Result<Response, ApiError> {
    let key = path_key(student_id, &subject, &skill_id, &subskill_id)?;
    reading
        .answer(Domain::Competencies, ONE, move |conn, source| {
            let key = key.clone();
            Box::pin(async move {
                let doc = legacy::competency_answer(conn, source, &key)
                    .await?
                    .ok_or_else(|| ApiError::NotFound(NO_ATTEMPTS.to_owned()))?;
                Ok(document(
                    source,
                    doc.last_sequence,
                    None,
                    &[("competency", json!(doc))],
                ))
            })
        })
        .await
}

#[utoipa::path(
    get,
    path = "/students/{student_id}/competencies",
    operation_id = "listCompetencies",
    summary = "List a student's competencies",
    tag = "competencies",
    description = "A page of the student's competencies.",
    params(("student_id" = inline(bounds::StudentId), Path, description = "the student: a positive integer"), ("limit" = inline(Option<Limit>), Query, nullable = false, description = "the page's size"), ("offset" = inline(Option<Offset>), Query, nullable = false, description = "competencies to skip"), crate::schemas::ReadHeaders, crate::schemas::PositionHeaders),
    responses(
        (status = 200, description = "a page", body = crate::schemas::CompetencyPage),
        crate::schemas::NotModified,
        crate::schemas::Errors, crate::schemas::UnknownPosition
    )
)]
async fn list(
    reading: Reading,
    Path(student_id): Path<i64>,
    Query(page): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let (limit, offset) = student_page(student_id, &page)?;
    reading
        .answer(Domain::Competencies, LIST, move |conn, source| {
            Box::pin(async move {
                let items =
                    legacy::student_competencies_answer(conn, source, student_id, limit, offset)
                        .await?;
                Ok(page_of(json!(Page {
                    read_source: Some(source),
                    items,
                })))
            })
        })
        .await
}

#[utoipa::path(
    get,
    path = "/v2/students/{student_id}/competencies/{subject}/{skill_id}/{subskill_id}",
    operation_id = "getCompetencyNewShape",
    summary = "Get a competency (new shape)",
    tag = "competencies",
    description = "One competency in the new shape (typed, flat), from the new model whatever the \
                   read source: 404 until the subskill has an attempt.",
    params(("student_id" = inline(bounds::StudentId), Path, description = "the student: a positive integer"), ("subject" = inline(bounds::KeyPart), Path), ("skill_id" = inline(bounds::KeyPart), Path), ("subskill_id" = inline(bounds::KeyPart), Path), crate::schemas::ReadHeaders, crate::schemas::PositionHeaders),
    responses(
        (status = 200, description = "the competency", body = crate::schemas::CompetencyNewDocument, headers(
            ("ETag" = String, description = "`\"<version>-<digest>\"`: If-None-Match takes it as this answer")
        )),
        crate::schemas::NotModified,
        crate::schemas::Errors, crate::schemas::UnknownPosition, crate::schemas::Retired
    )
)]
async fn fetch_new(
    reading: Reading,
    Path((student_id, subject, skill_id, subskill_id)): Path<(i64, String, String, String)>,
) -> Result<Response, ApiError> {
    let key = path_key(student_id, &subject, &skill_id, &subskill_id)?;
    let mut snapshot = reading.open(None).await?;
    from_new_model_one(
        typed::competency(&mut *snapshot, &key).await,
        typed::NAME,
        "competency",
        NO_ATTEMPTS,
        |row| row.last_sequence,
    )
}

#[utoipa::path(
    get,
    path = "/v2/students/{student_id}/competencies",
    operation_id = "listCompetenciesNewShape",
    summary = "List a student's competencies (new shape)",
    tag = "competencies",
    description = "A page of the student's competencies in the new shape, by subject, skill and \
                   subskill, from the new model whatever the read source.",
    params(("student_id" = inline(bounds::StudentId), Path, description = "the student: a positive integer"), ("limit" = inline(Option<Limit>), Query, nullable = false, description = "the page's size"), ("offset" = inline(Option<Offset>), Query, nullable = false, description = "competencies to skip"), crate::schemas::ReadHeaders, crate::schemas::PositionHeaders),
    responses(
        (status = 200, description = "a page", body = crate::schemas::CompetencyNewPage),
        crate::schemas::NotModified,
        crate::schemas::Errors, crate::schemas::UnknownPosition, crate::schemas::Retired
    )
)]
async fn list_new(
    reading: Reading,
    Path(student_id): Path<i64>,
    Query(page): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let (limit, offset) = student_page(student_id, &page)?;
    let mut snapshot = reading.open(None).await?;
    let read = typed::student_competencies(
        &mut *snapshot,
        student_id,
        typed::Order::Subskill,
        limit,
        offset,
    )
    .await;
    let items = from_new_model(read, typed::NAME)?;
    Ok(IntoResponse::into_response(axum::Json(Page {
        read_source: Some(ReadSource::New),
        items,
    })))
}

#[utoipa::path(
    get,
    path = "/analytics/skills",
    operation_id = "getSkillAnalytics",
    summary = "Get skill analytics",
    tag = "competencies",
    description = "Attempts, students and mean score per subskill (kept by the new shape's projection: a 409 while it is retired).",
    params(("subject" = inline(Option<bounds::NoNul>), Query, nullable = false, description = "only this subject"), ("limit" = inline(Option<Limit>), Query, nullable = false, description = "the page's size"), ("offset" = inline(Option<Offset>), Query, nullable = false, description = "rows to skip"), crate::schemas::ReadHeaders, crate::schemas::PositionHeaders),
    responses(
        (status = 200, description = "a page", body = crate::schemas::AnalyticsPage),
        crate::schemas::NotModified,
        crate::schemas::Errors, crate::schemas::UnknownPosition, crate::schemas::Retired
    )
)]
async fn analytics(
    reading: Reading,
    Query(query): Query<AnalyticsQuery>,
) -> Result<Response, ApiError> {
    let (limit, offset) = bounds(query.limit, query.offset)?;
    let mut snapshot = reading.open(None).await?;
    let read = typed::skill_analytics(&mut *snapshot, query.subject.as_deref(), limit, offset);
    let items = from_new_model(read.await, typed::NAME)?;
    Ok(IntoResponse::into_response(axum::Json(Page {
        read_source: None,
        items,
    })))
}

/// What a competency's GET says before its first attempt.
const NO_ATTEMPTS: &str = "no attempts recorded for this subskill";

/// A subskill named in a path: malformed is a 400.
fn path_key(
    student_id: i64,
    subject: &str,
    skill_id: &str,
    subskill_id: &str,
) -> Result<SubskillKey, ApiError> {
    SubskillKey::parse(student_id, subject, skill_id, subskill_id)
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// A page of a student's competencies: the student and the bounds, checked.
fn student_page(student_id: i64, page: &PageQuery) -> Result<(i64, i64), ApiError> {
    if student_id < 1 {
        return Err(ApiError::BadRequest(
            "student_id must be a positive integer".to_owned(),
        ));
    }
    bounds(page.limit, page.offset)
}

fn bounds(limit: Option<i64>, offset: Option<i64>) -> Result<(i64, i64), ApiError> {
    let limit = PAGE.of(limit)?;
    let offset = offset.unwrap_or(0);
    if !(0..=MAX_OFFSET).contains(&offset) {
        return Err(ApiError::BadRequest(format!(
            "offset must be between 0 and {MAX_OFFSET}"
        )));
    }
    Ok((limit, offset))
}

/// Runs a competency command; `respond` makes its answer from the rows it wrote (or reads it
/// back before the commit).
async fn execute(
    state: &AppState,
    key: &SubskillKey,
    command: CompetencyCommand,
    expected_version: Option<i64>,
    idempotency: Option<Idempotency>,
    respond: impl for<'c> Fn(&'c mut PgConnection, Committed) -> Respond<'c>,
) -> Result<Response, ApiError> {
    let metadata = json!({ "command": command.name() });
    let aggregate_id = key.aggregate_id();
    let request = Request::<StudentSubskill> {
        aggregate_id: &aggregate_id,
        command,
        services: &(),
        expected_version,
        metadata: &metadata,
        new_aggregate: false,
        // Its answer is the attempt's or review's row, and the competency's, which the command
        // writes.
        answered_from_rows: true,
    };
    run(state, request, idempotency, respond).await
}

/// A 201 with the rows read back and the competency's address.
fn created(
    source: ReadSource,
    committed: &Committed,
    rows: &[(&'static str, Value)],
    key: &SubskillKey,
) -> StoredResponse {
    let answer = document(source, committed.version, Some(committed.position), rows);
    let location = format!(
        "/students/{}/competencies/{}/{}/{}",
        key.student_id,
        encode(&key.subject),
        encode(&key.skill_id),
        encode(&key.subskill_id)
    );
    with_location(with_status(answer, StatusCode::CREATED), location)
}

/// Percent-encodes a path segment (everything but unreserved characters).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
