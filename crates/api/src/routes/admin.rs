//! The admin API: the projection registry, rebuilds (run in the background, progress in the
//! database so every instance reports it), retirement, read sources, and verification.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use cutover_core::read_source::ReadSource;
use cutover_projections::rebuild::{self, Purpose};
use cutover_projections::registry::{self, AdminError, Job, Status};
use cutover_projections::verify::{self, Report};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/projections", get(list))
        .route("/admin/projections/{name}", get(status))
        .route("/admin/projections/{name}/rebuild", post(start_rebuild))
        .route("/admin/projections/{name}/retire", post(retire))
        .route("/admin/jobs/{id}", get(job))
        .route("/admin/read-sources", get(read_sources))
        .route("/admin/read-sources/{domain}", put(set_read_source))
        .route("/admin/consistency", get(consistency))
        .route("/admin/consistency/latest", get(latest_consistency))
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::UnknownProjection(_) | AdminError::UnknownDomain(_) => {
                Self::NotFound(e.to_string())
            }
            AdminError::Refused(reason) => Self::Conflict(reason),
            AdminError::Database(db) => db.into(),
            other => Self::Internal(other.into()),
        }
    }
}

#[utoipa::path(
    get,
    path = "/admin/projections",
    operation_id = "listProjections",
    tag = "admin",
    description = "Every projection with its status.",
    params(crate::openapi::ReadHeaders),
    responses(
        (status = 200, description = "the projections", body = Vec<crate::openapi::AnyObject>),
        crate::openapi::NotModified,
        crate::openapi::Errors
    )
)]
async fn list(State(state): State<AppState>) -> Result<axum::Json<Vec<Status>>, ApiError> {
    let pool = state.store.pool();
    let mut all = Vec::new();
    for projection in registry::projections(pool).await? {
        all.push(registry::status(pool, state.store.projectors(), &projection.name).await?);
    }
    Ok(axum::Json(all))
}

#[utoipa::path(
    get,
    path = "/admin/projections/{name}",
    operation_id = "getProjection",
    tag = "admin",
    description = "One projection with its status and latest job.",
    params(("name" = String, Path, description = "the projection"), crate::openapi::ReadHeaders),
    responses(
        (status = 200, description = "the projection", body = crate::openapi::AnyObject),
        crate::openapi::NotModified,
        crate::openapi::Errors
    )
)]
async fn status(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<Status>, ApiError> {
    Ok(axum::Json(
        registry::status(state.store.pool(), state.store.projectors(), &name).await?,
    ))
}

#[derive(Debug, Serialize)]
struct Started {
    job_id: Uuid,
    projections: Vec<String>,
    /// Where the job's progress is.
    job: String,
}

/// 202: the rebuild runs in the background on this instance; its progress is in
/// `GET /admin/projections/{name}` and `GET /admin/jobs/{id}` on every instance.
#[utoipa::path(
    post,
    path = "/admin/projections/{name}/rebuild",
    operation_id = "startRebuild",
    tag = "admin",
    description = "Starts a rebuild of a projection, or of every one (`all`); 409 while one of them is being rebuilt.",
    params(("name" = String, Path, description = "the projection, or `all`")),
    responses(
        (status = 202, description = "started: `job_id`, `projections` and `job`, the job's path", body = crate::openapi::AnyObject, headers(
            ("Location" = String, description = "the projection's path")
        )),
        crate::openapi::Errors
    )
)]
async fn start_rebuild(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let selected = rebuild::select(state.store.projectors(), std::slice::from_ref(&name))?;
    let job = rebuild::Job::start(state.store.pool(), selected, Purpose::Rebuild).await?;
    let started = Started {
        job_id: job.id(),
        projections: job
            .projectors()
            .iter()
            .map(|p| p.name().to_owned())
            .collect(),
        job: format!("/admin/jobs/{}", job.id()),
    };
    tokio::spawn(async move {
        match job.run(|_| {}).await {
            Ok(outcome) => tracing::info!(
                job = %outcome.job_id,
                events = outcome.events,
                swap_hold_ms = outcome.swap_hold.as_secs_f64() * 1000.0,
                "rebuild finished"
            ),
            Err(e) => tracing::error!(error = %e, "rebuild failed"),
        }
    });
    let mut response = (StatusCode::ACCEPTED, axum::Json(started)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/admin/projections/{name}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

#[utoipa::path(
    post,
    path = "/admin/projections/{name}/retire",
    operation_id = "retireProjection",
    tag = "admin",
    description = "Retires a projection: commands stop updating it and its tables are dropped; 409 while it is its domain's read source or being rebuilt.",
    params(("name" = String, Path, description = "the projection")),
    responses(
        (status = 200, description = "retired", body = crate::openapi::AnyObject),
        crate::openapi::Errors
    )
)]
async fn retire(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<registry::Projection>, ApiError> {
    Ok(axum::Json(
        registry::retire(state.store.pool(), &name).await?,
    ))
}

#[utoipa::path(
    get,
    path = "/admin/jobs/{id}",
    operation_id = "getJob",
    tag = "admin",
    description = "A rebuild job and its progress.",
    params(("id" = Uuid, Path, description = "the job: a rebuild's `job_id`"), crate::openapi::ReadHeaders),
    responses(
        (status = 200, description = "the job", body = crate::openapi::AnyObject),
        crate::openapi::NotModified,
        crate::openapi::Errors
    )
)]
async fn job(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Job>, ApiError> {
    found(registry::job(state.store.pool(), id).await?, "no such job")
}

#[utoipa::path(
    get,
    path = "/admin/read-sources",
    operation_id = "listReadSources",
    tag = "admin",
    description = "Each domain's read source.",
    params(crate::openapi::ReadHeaders),
    responses(
        (status = 200, description = "the read sources", body = crate::openapi::AnyObject),
        crate::openapi::NotModified,
        crate::openapi::Errors
    )
)]
async fn read_sources(
    State(state): State<AppState>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let sources = registry::read_sources(state.store.pool()).await?;
    let body: serde_json::Map<String, serde_json::Value> = sources
        .into_iter()
        .map(|(domain, source)| (domain, json!(source)))
        .collect();
    Ok(axum::Json(serde_json::Value::Object(body)))
}

/// Body of `PUT /admin/read-sources/{domain}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReadSourceBody {
    /// The shape the domain's GET routes read from now on (409 if its projection is retired).
    #[schema(value_type = String)]
    source: ReadSource,
}

#[utoipa::path(
    put,
    path = "/admin/read-sources/{domain}",
    operation_id = "setReadSource",
    tag = "admin",
    description = "Switches a domain's read source.",
    params(("domain" = String, Path, description = "the domain")),
    request_body = ReadSourceBody,
    responses(
        (status = 200, description = "switched", body = crate::openapi::AnyObject),
        crate::openapi::Errors
    )
)]
async fn set_read_source(
    State(state): State<AppState>,
    Path(domain): Path<String>,
    Json(body): Json<ReadSourceBody>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    registry::set_read_source(state.store.pool(), &domain, body.source).await?;
    Ok(axum::Json(
        json!({ "domain": domain, "source": body.source }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyQuery {
    domain: Option<String>,
}

#[derive(Debug, Serialize)]
struct Consistency {
    consistent: bool,
    #[serde(flatten)]
    report: Report,
}

#[utoipa::path(
    get,
    path = "/admin/consistency",
    operation_id = "verifyConsistency",
    tag = "admin",
    description = "Verifies legacy against new and live against a fresh rebuild (an admin token).",
    params(("domain" = Option<String>, Query, nullable = false, description = "only this domain (all of them by default)"), crate::openapi::ReadHeaders),
    responses(
        (status = 200, description = "the report", body = crate::openapi::AnyObject),
        crate::openapi::NotModified,
        crate::openapi::Errors
    )
)]
async fn consistency(
    State(state): State<AppState>,
    Query(query): Query<ConsistencyQuery>,
) -> Result<axum::Json<Consistency>, ApiError> {
    let report = verify::verify(
        state.store.pool(),
        state.store.projectors(),
        query.domain.as_deref(),
    )
    .await?;
    Ok(axum::Json(Consistency {
        consistent: report.consistent(),
        report,
    }))
}

#[utoipa::path(
    get,
    path = "/admin/consistency/latest",
    operation_id = "getLatestConsistency",
    tag = "admin",
    description = "The newest consistency report (from the CLI or the API), without running one; 404 before the first.",
    params(crate::openapi::ReadHeaders),
    responses(
        (status = 200, description = "the report and when it was made", body = crate::openapi::AnyObject),
        crate::openapi::NotModified,
        crate::openapi::Errors
    )
)]
async fn latest_consistency(
    State(state): State<AppState>,
) -> Result<axum::Json<verify::Recorded>, ApiError> {
    found(
        verify::latest(state.store.pool()).await?,
        "no verification has run yet",
    )
}

/// The thing, or a 404 that says what is missing.
fn found<T>(thing: Option<T>, missing: &str) -> Result<axum::Json<T>, ApiError> {
    thing
        .map(axum::Json)
        .ok_or_else(|| ApiError::NotFound(missing.to_owned()))
}
