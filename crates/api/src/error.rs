//! The one error type of the API. Every failure, including malformed JSON, paths and query
//! strings, is answered as `application/problem+json` (RFC 9457). Internal errors are logged
//! once here and answered without detail.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cutover_core::domain::batch::{BatchError, InvalidBatchInput};
use cutover_core::domain::collection::{CollectionError, InvalidCollectionInput};
use cutover_core::domain::competency::{CompetencyError, InvalidCompetencyInput};
use cutover_core::store::{CommandError, CommitError, GroupFailure};
use cutover_engine::read_source::ReadSourceError;
use cutover_engine::rows::ProjectionError;
use serde::Serialize;

/// Why a request failed, by the status it answers with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request itself is malformed (JSON syntax, a path or query value).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no token, or one that is not configured.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a token whose scope does not allow the route.
    #[error("{0}")]
    Forbidden(String),
    /// 404
    #[error("{0}")]
    NotFound(String),
    /// 405
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 408: the request body did not all arrive within `--body-read-timeout-ms`.
    #[error("{0}")]
    RequestTimeout(BodyTimedOut),
    /// 409
    #[error("{0}")]
    Conflict(String),
    /// 410
    #[error("{0}")]
    Gone(String),
    /// 412: `If-Match` named another version.
    #[error("{0}")]
    PreconditionFailed(String),
    /// 413
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 415: a body whose `content-type` is not `application/json` (see [`crate::extract::Json`]).
    #[error(
        "a request body must have content-type: application/json, optionally with \
         charset=utf-8; no other media type, charset or parameter is accepted"
    )]
    UnsupportedMediaType,
    /// 422: well-formed but breaks a rule; `field` names the offending field when known.
    #[error("{detail}")]
    Unprocessable {
        detail: String,
        field: Option<String>,
    },
    /// 503: the database cannot be reached right now.
    #[error("the database is unavailable; try again shortly")]
    Unavailable,
    /// 500, with the cause logged and never shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// A request body that has not all arrived in time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the request body did not arrive within {} ms of its header", .0.as_millis())]
pub struct BodyTimedOut(pub(crate) std::time::Duration);

/// Largest request body accepted, in bytes.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// An error, as RFC 9457 `application/problem+json`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `/problems/<kind>`: validation, not-found, conflict, gone, …
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    /// The request field a broken rule is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed"),
            Self::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request-timeout"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::Gone(_) => (StatusCode::GONE, "gone"),
            Self::PreconditionFailed(_) => (StatusCode::PRECONDITION_FAILED, "version-mismatch"),
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type")
            }
            Self::Unprocessable { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "validation"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// A 422 about `field`.
    pub fn invalid(field: &str, detail: impl Into<String>) -> Self {
        Self::Unprocessable {
            detail: detail.into(),
            field: Some(field.to_owned()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(cause) = &self {
            tracing::error!(error = ?cause, "request failed");
        }
        let (status, slug) = self.parts();
        let kind = format!("/problems/{slug}");
        let field = match &self {
            Self::Unprocessable { field, .. } => field.as_deref(),
            _ => None,
        };
        let body = Problem {
            kind,
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            field: field.map(str::to_owned),
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Whether `e` is Postgres refusing a value the request carried (class 22, data exception:
/// a NUL character, which neither `text` nor `jsonb` can hold, or a number out of range).
fn refused_value(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|code| code.starts_with("22")))
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if cutover_runtime::database::is_unreachable(&e) {
            tracing::warn!(error = %e, "database unavailable");
            return Self::Unavailable;
        }
        if let Some(refusal) = cutover_core::store::followed_refusal(&e) {
            return Self::Conflict(refusal);
        }
        if refused_value(&e) {
            return Self::Unprocessable {
                detail: "a value in the request cannot be stored (for example a NUL character)"
                    .to_owned(),
                field: None,
            };
        }
        Self::Internal(e.into())
    }
}

impl From<CommitError> for ApiError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Database(db) => db.into(),
            CommitError::SharedTransaction(GroupFailure {
                unreachable: true, ..
            }) => {
                tracing::warn!(error = %e, "database unavailable");
                Self::Unavailable
            }
            CommitError::SharedTransaction(_) | CommitError::RunAgain => Self::Internal(e.into()),
        }
    }
}

impl From<ReadSourceError> for ApiError {
    fn from(e: ReadSourceError) -> Self {
        match e {
            ReadSourceError::Database(db) => db.into(),
            other => Self::Internal(other.into()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => Self::Unprocessable {
                detail: e.body_text(),
                field: None,
            },
            JsonRejection::JsonSyntaxError(e) => Self::BadRequest(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => Self::UnsupportedMediaType,
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::PayloadTooLarge { limit: BODY_LIMIT }
            }
            JsonRejection::BytesRejection(e) => match timed_out(&e) {
                Some(timed_out) => Self::RequestTimeout(timed_out),
                None => Self::BadRequest(e.body_text()),
            },
            other => Self::BadRequest(other.body_text()),
        }
    }
}

/// The body deadline that `rejection` (a body that could not be read) met, if that was why.
fn timed_out(rejection: &(dyn std::error::Error + 'static)) -> Option<BodyTimedOut> {
    std::iter::successors(Some(rejection), |e| e.source())
        .find_map(|e| e.downcast_ref::<BodyTimedOut>())
        .cloned()
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}

impl From<InvalidCollectionInput> for ApiError {
    fn from(e: InvalidCollectionInput) -> Self {
        Self::invalid(e.field(), e.to_string())
    }
}

impl From<CollectionError> for ApiError {
    fn from(e: CollectionError) -> Self {
        let detail = e.to_string();
        match e {
            CollectionError::AlreadyExists => Self::Conflict(detail),
            CollectionError::NotFound => Self::NotFound(detail),
            CollectionError::Deleted => Self::Gone(detail),
        }
    }
}

impl From<InvalidBatchInput> for ApiError {
    fn from(e: InvalidBatchInput) -> Self {
        Self::invalid(e.field(), e.to_string())
    }
}

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> Self {
        let detail = e.to_string();
        match e {
            BatchError::AlreadyStarted | BatchError::ConflictingPredictionCount { .. } => {
                Self::Conflict(detail)
            }
            BatchError::NotFound => Self::NotFound(detail),
            BatchError::UnknownPlayer(_) => Self::invalid("player_lookup", detail),
        }
    }
}

impl From<InvalidCompetencyInput> for ApiError {
    fn from(e: InvalidCompetencyInput) -> Self {
        Self::invalid(e.field(), e.to_string())
    }
}

impl From<CompetencyError> for ApiError {
    fn from(e: CompetencyError) -> Self {
        Self::Conflict(e.to_string())
    }
}

impl<E> From<CommandError<E>> for ApiError
where
    E: std::error::Error + Into<ApiError> + Send + Sync + 'static,
{
    fn from(e: CommandError<E>) -> Self {
        match e {
            CommandError::Rejected(domain) => domain.into(),
            CommandError::VersionMismatch { .. } => Self::PreconditionFailed(e.to_string()),
            CommandError::Conflict { .. } => Self::Conflict(e.to_string()),
            CommandError::KeyReused => Self::invalid("Idempotency-Key", e.to_string()),
            CommandError::Database(db) => db.into(),
            CommandError::Commit(commit) => commit.into(),
            CommandError::Projection(ProjectionError::Database { source, .. }) => source.into(),
            CommandError::Projection(ProjectionError::LegacyIdTaken { detail, .. }) => {
                Self::Conflict(format!(
                    "{detail}; the legacy shape cannot hold both while it is live (retire it to \
                     lift this limit: the new shape keys on all four parts)"
                ))
            }
            other => Self::Internal(other.into()),
        }
    }
}
