//! An answer as the routes build it ([`StoredResponse`]: what an idempotency key keeps too) and
//! as it is sent.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cutover_core::store::StoredResponse;
use futures_util::future::BoxFuture;

use crate::error::ApiError;

/// A stored (or fresh) answer as an HTTP response.
pub struct Answer(pub StoredResponse);

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::OK);
        let mut response = (status, axum::Json(self.0.body)).into_response();
        for (name, value) in self.0.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

/// An answer being read: a command's, back inside its transaction before the commit, or a GET's
/// from one read source (see [`crate::reads::Reading::answer`]).
pub type Respond<'c> = BoxFuture<'c, Result<StoredResponse, ApiError>>;
