//! The resources of the API; each module exposes `router()` and they are merged in
//! [`crate::app`].

pub mod admin;
pub mod batches;
pub mod collections;
pub mod competencies;
pub mod events;
pub mod health;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use cutover_core::read_source::ReadSource;

/// The answer of every route that names one aggregate:
/// `{"read_source", "version", "position"?, <key>: <read-model row or null>, ...}`, with the
/// version as `ETag`. `position` (commands only) is the event-log position the command reached;
/// a row is `null` when the read source does not hold it (any more).
pub fn document(
    read_source: ReadSource,
    version: i64,
    position: Option<i64>,
    rows: &[(&'static str, serde_json::Value)],
) -> Response {
    let mut body = serde_json::Map::new();
    body.insert("read_source".into(), serde_json::json!(read_source));
    body.insert("version".into(), version.into());
    if let Some(position) = position {
        body.insert("position".into(), position.into());
    }
    for (key, row) in rows {
        body.insert((*key).into(), row.clone());
    }
    let mut response = axum::Json(body).into_response();
    if let Ok(tag) = HeaderValue::from_str(&crate::extract::etag(version)) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    response
}
