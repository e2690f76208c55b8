//! Axum's extractors, with their rejections turned into [`ApiError`] so that malformed input is
//! answered as problem+json like every other error.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

use std::time::Duration;

use cutover_core::store::Idempotency;
use sha2::{Digest as _, Sha256};

use crate::bounds::bounds;
use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body, sent as `content-type: application/json`, optionally with `charset=utf-8`
/// (names and values in any case); any other media type or parameter is refused with 415.
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let axum::Json(value) = axum::Json::<T>::from_request(request, state).await?;
        Ok(Self(value))
    }
}

/// Whether the request has exactly one `content-type`, `application/json` with no parameter
/// but `charset=utf-8` (quoted or not).
fn is_json(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        && parts.map(str::trim).all(|parameter| {
            // `application/json;` has an empty parameter list, which RFC 9110 allows.
            parameter.is_empty()
                || parameter.split_once('=').is_some_and(|(name, value)| {
                    let value = value
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(value);
                    name.eq_ignore_ascii_case("charset") && value.eq_ignore_ascii_case("utf-8")
                })
        })
}

/// Path parameters.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Query-string parameters.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// The version an `If-Match` header demands: `"3"`, `3` or `W/"3"`, or a GET's tag of that
/// version, `"3-<digest>"` (see [`crate::conditional`]); `*` or no header demand none.
pub struct IfMatch(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse_if_match(&parts.headers).map(IfMatch)
    }
}

fn parse_if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || ApiError::BadRequest("If-Match must be a version such as \"3\" or *".to_owned());
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text == "*" {
        return Ok(None);
    }
    let text = text.strip_prefix("W/").unwrap_or(text);
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    let version = text
        .split_once('-')
        .map_or(text, |(version, _digest)| version);
    version
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .map(Some)
        .ok_or_else(bad)
}

/// Longest `Idempotency-Key`, in characters.
pub const MAX_KEY_CHARS: usize = 255;

bounds! {
    /// An `If-Match` header: a version (at most 18 digits, as a bigint), or a GET's tag.
    pub IfMatchHeader = serde_json::json!({
        "type": "string",
        "pattern": r#"^(\*|(W/)?("[0-9]{1,18}(-.*)?"|[0-9]{1,18}(-.*)?))$"#,
    });
    /// An `Idempotency-Key` header.
    pub IdempotencyKeyHeader = serde_json::json!({
        "type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS, "pattern": "^[!-~]+$",
    });
}

/// The `Idempotency-Key` header (1–255 visible ASCII characters), with what identifies the
/// request it came with.
pub struct IdempotencyKey {
    key: Option<String>,
    method: String,
    path: String,
    ttl: Duration,
}

impl FromRequestParts<AppState> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let key = match parts.headers.get("idempotency-key") {
            None => None,
            Some(value) => {
                let bytes = value.as_bytes();
                let visible = bytes.iter().all(|b| (0x21..=0x7e).contains(b));
                if bytes.is_empty() || bytes.len() > MAX_KEY_CHARS || !visible {
                    return Err(ApiError::BadRequest(format!(
                        "Idempotency-Key must be 1-{MAX_KEY_CHARS} visible ASCII characters"
                    )));
                }
                Some(String::from_utf8_lossy(bytes).into_owned())
            }
        };
        Ok(Self {
            key,
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            ttl: state.idempotency_ttl,
        })
    }
}

impl IdempotencyKey {
    /// The key with the fingerprint of this request (method, path and `body` as parsed), or
    /// `None` when the request came without a key.
    pub fn for_body(&self, body: &impl serde::Serialize) -> Option<Idempotency> {
        let key = self.key.clone()?;
        let mut digest = Sha256::new();
        digest.update(self.method.as_bytes());
        digest.update(b" ");
        digest.update(self.path.as_bytes());
        digest.update(b"\n");
        // Serializing a parsed body cannot fail; an empty body stands in if it somehow did.
        digest.update(serde_json::to_vec(body).unwrap_or_default());
        let fingerprint = digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Some(Idempotency {
            key,
            fingerprint,
            ttl: self.ttl,
        })
    }
}

/// The `ETag` of an aggregate version.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::CONTENT_TYPE, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn json_bodies_are_application_json_with_at_most_charset_utf_8_in_any_case() {
        for accepted in [
            "application/json",
            "APPLICATION/JSON",
            "Application/JSON; Charset=UTF-8",
            "application/json;charset=utf-8",
            "application/json; charset=\"utf-8\"",
            "application/json;",
        ] {
            assert!(is_json(&headers(&[accepted])), "{accepted}");
        }
        for refused in [
            "application/problem+json",
            "application/json-patch+json",
            "text/json",
            "text/plain",
            "application/json; charset=latin1",
            "application/json; charset=utf-16",
            "application/json; charset=utf-8; boundary=x",
            "application/json; q=1",
            "application/json; charset",
            "application / json",
            "",
        ] {
            assert!(!is_json(&headers(&[refused])), "{refused}");
        }
        assert!(!is_json(&headers(&[])), "no content-type");
        assert!(
            !is_json(&headers(&["application/json", "text/plain"])),
            "two content-types"
        );
    }
}
