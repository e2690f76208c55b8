//! The resources of the API; each module exposes `router()` and they are merged in
//! [`crate::app`]. This module holds what their command routes share: running a command with
//! its idempotency key, reading the answer back in the command's transaction, and the shape of
//! that answer.

pub mod admin;
pub mod batches;
pub mod collections;
pub mod competencies;
pub mod events;
pub mod health;
pub mod metrics;
pub mod pages;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use cqrs_es::Aggregate;
use cutover_core::store::{Begun, CommitError, Committed, Idempotency, Request, StoredResponse};
use cutover_engine::read_source::ReadSource;
use sqlx::PgConnection;

use crate::answer::{Answer, Respond};
use crate::error::ApiError;
use crate::state::AppState;

/// The answer of every route that names one aggregate:
/// `{"read_source", "version", "position"?, <key>: <read-model row or null>, ...}`, with the
/// version as `ETag`. `position` (commands only) is the event-log position the command reached,
/// also sent as the `Cutover-Position` header;
/// a row is `null` when the read source does not hold it (any more).
pub fn document(
    read_source: ReadSource,
    version: i64,
    position: Option<i64>,
    rows: &[(&'static str, serde_json::Value)],
) -> StoredResponse {
    let mut body = serde_json::Map::new();
    body.insert("read_source".into(), serde_json::json!(read_source));
    body.insert("version".into(), version.into());
    if let Some(position) = position {
        body.insert("position".into(), position.into());
    }
    for (key, row) in rows {
        body.insert((*key).into(), row.clone());
    }
    let mut headers = vec![(
        header::ETAG.as_str().to_owned(),
        crate::extract::etag(version),
    )];
    if let Some(position) = position {
        headers.push((
            crate::reads::POSITION.as_str().to_owned(),
            position.to_string(),
        ));
    }
    StoredResponse {
        status: StatusCode::OK.as_u16(),
        headers,
        body: serde_json::Value::Object(body),
    }
}

/// The answer of a `/v2` route about one aggregate: its row `key`, read from the new model
/// (`None`: a 404 saying `missing`; a retired new projection: [`from_new_model`]'s 409).
///
/// # Errors
/// The 404, the 409, or the database error.
pub fn from_new_model_one<T: serde::Serialize>(
    read: Result<Option<T>, sqlx::Error>,
    projection: &str,
    key: &'static str,
    missing: &str,
    version: impl Fn(&T) -> i64,
) -> Result<Response, ApiError> {
    let row =
        from_new_model(read, projection)?.ok_or_else(|| ApiError::NotFound(missing.to_owned()))?;
    Ok(Answer(document(
        ReadSource::New,
        version(&row),
        None,
        &[(key, serde_json::json!(row))],
    ))
    .into_response())
}

/// A 200 answer with `body` and no headers of its own (a page).
pub fn page(body: serde_json::Value) -> StoredResponse {
    StoredResponse {
        status: StatusCode::OK.as_u16(),
        headers: Vec::new(),
        body,
    }
}

/// Runs `request` (with its idempotency key, if any); builds the answer with `respond` in the
/// command's transaction, commits both together, and sends it. A repeat of a request already
/// answered under its key gets the stored answer, and nothing runs. A command whose shared
/// transaction was rolled back after its read-back runs again alone, and reads back again.
///
/// # Errors
/// The command's error, the read-back's, or the commit's.
pub async fn run<A>(
    state: &AppState,
    request: Request<'_, A>,
    idempotency: Option<Idempotency>,
    respond: impl for<'c> Fn(&'c mut PgConnection, Committed) -> Respond<'c>,
) -> Result<Response, ApiError>
where
    A: Aggregate + 'static,
    A::Command: Clone,
    A::Error: Into<ApiError> + Send + Sync + 'static,
{
    let mut may_share = true;
    loop {
        let begun = state
            .store
            .begin::<A>(request.clone(), idempotency.as_ref(), may_share)
            .await?;
        let mut pending = match begun {
            Begun::Replayed(stored) => return Ok(Answer(stored).into_response()),
            Begun::Open(pending) => *pending,
        };
        let committed = pending.committed().clone();
        let answer = respond(pending.conn(), committed).await?;
        match pending.commit(Some(&answer)).await {
            Err(CommitError::RunAgain) => may_share = false,
            committed => {
                committed?;
                return Ok(Answer(answer).into_response());
            }
        }
    }
}

/// A read of the new model (the `/v2` routes answer in the new shape, read from the new model
/// whatever the domain's read source; the routes without it answer in the old API's shape): its tables are gone while its projection is retired, which is a 409
/// naming the projection to rebuild.
///
/// # Errors
/// The 409, or the database error.
pub fn from_new_model<T>(read: Result<T, sqlx::Error>, projection: &str) -> Result<T, ApiError> {
    const UNDEFINED_TABLE: &str = "42P01";
    match read {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNDEFINED_TABLE) => {
            Err(ApiError::Conflict(format!(
                "the new shape is read from the projection {projection}, which is retired: \
                 rebuild it to serve it again"
            )))
        }
        read => Ok(read?),
    }
}

/// Sets the answer's status.
pub fn with_status(mut answer: StoredResponse, status: StatusCode) -> StoredResponse {
    answer.status = status.as_u16();
    answer
}

/// Adds a `Location` header to the answer.
pub fn with_location(mut answer: StoredResponse, location: String) -> StoredResponse {
    answer
        .headers
        .push((header::LOCATION.as_str().to_owned(), location));
    answer
}
