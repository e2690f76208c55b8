//! What both peers share: Cutover's command routes and request bodies (the same fields, the
//! same validation by the domain's `parse` functions), the legacy documents of an attempt, and
//! one error type that answers with a status and a JSON body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Router;
use cutover_core::domain::batch::InvalidBatchInput;
use cutover_core::domain::collection::InvalidCollectionInput;
use cutover_core::domain::competency::InvalidCompetencyInput;
use serde::Deserialize;
use serde_json::json;

/// The four command routes the benchmark drives, on Cutover's paths.
pub struct CommandRoutes<S> {
    pub create_collection: MethodRouter<S>,
    pub start_batch: MethodRouter<S>,
    pub record_completion: MethodRouter<S>,
    pub record_attempt: MethodRouter<S>,
}

impl<S: Clone + Send + Sync + 'static> CommandRoutes<S> {
    pub fn router(self) -> Router<S> {
        Router::new()
            .route("/projects/{project_id}/collections", self.create_collection)
            .route("/batches", self.start_batch)
            .route("/batches/{batch_id}/completions", self.record_completion)
            .route("/students/{student_id}/attempts", self.record_attempt)
    }
}

/// `POST /projects/{project_id}/collections`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionBody {
    pub collection_name: String,
    #[serde(default)]
    pub description: String,
}

/// `POST /batches`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    pub batch_id: String,
    pub expected_players: Vec<String>,
}

/// `POST /batches/{batch_id}/completions`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionBody {
    pub player_lookup: String,
    pub predictions_count: i64,
}

/// `POST /students/{student_id}/attempts`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptBody {
    pub subject: String,
    pub skill_id: String,
    pub subskill_id: String,
    pub score: f64,
    #[serde(default)]
    pub analysis: String,
    #[serde(default)]
    pub feedback: String,
}

/// Why a peer refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// 422: the input breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 409: a conflicting state, or a lost race.
    #[error("{0}")]
    Conflict(String),
    /// 500
    #[error("{0}")]
    Internal(String),
}

impl From<sqlx::Error> for PeerError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<InvalidCollectionInput> for PeerError {
    fn from(e: InvalidCollectionInput) -> Self {
        Self::Invalid(e.to_string())
    }
}

impl From<InvalidBatchInput> for PeerError {
    fn from(e: InvalidBatchInput) -> Self {
        Self::Invalid(e.to_string())
    }
}

impl From<InvalidCompetencyInput> for PeerError {
    fn from(e: InvalidCompetencyInput) -> Self {
        Self::Invalid(e.to_string())
    }
}

impl IntoResponse for PeerError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Internal(detail) => {
                tracing::warn!(%detail, "internal error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, axum::Json(json!({ "error": self.to_string() }))).into_response()
    }
}
