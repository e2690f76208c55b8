//! Conditional reads: every JSON answer to a GET carries an `ETag` derived from what it shows,
//! and a GET whose `If-None-Match` names it is answered `304 Not Modified` with no body, so a
//! client that polls its state (the backend-first pattern) downloads it only when it changed.
//!
//! The tag is a digest of the body, so it changes exactly when the answer does: a new version,
//! a row rewritten by a rebuild, or a switch of the read source (the body names the source and
//! holds the other shape's row). An answer about one aggregate keeps its version in front,
//! `"<version>-<digest>"`, which `If-Match` accepts as that version.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use sha2::{Digest as _, Sha256};

use crate::error::ApiError;

/// Tags the JSON answers of GET (and HEAD) requests and answers 304 where `If-None-Match`
/// names the tag.
pub async fn conditional_get(request: Request, next: Next) -> Response {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let if_none_match = request.headers().get(header::IF_NONE_MATCH).cloned();
    let response = next.run(request).await;
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() != StatusCode::OK || !json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return ApiError::Internal(anyhow::anyhow!("reading an answer's body: {e}"))
                .into_response()
        }
    };
    let tag = entity_tag(&parts.headers, &bytes);
    let Ok(value) = HeaderValue::from_str(&tag) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    parts.headers.insert(header::ETAG, value);
    if if_none_match.is_some_and(|wanted| names(&wanted, &tag)) {
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(header::CONTENT_TYPE);
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::empty());
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// `"<version>-<digest>"` when the handler tagged the answer with its version, else
/// `"<digest>"`; the digest is the first 8 bytes of the body's SHA-256, in hex.
fn entity_tag(headers: &HeaderMap, body: &[u8]) -> String {
    let digest: String = Sha256::digest(body)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let version = headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_owned());
    match version {
        Some(version) => format!("\"{version}-{digest}\""),
        None => format!("\"{digest}\""),
    }
}

/// Whether an `If-None-Match` value (`*`, or a list of tags, weak or strong) names `tag`.
fn names(if_none_match: &HeaderValue, tag: &str) -> bool {
    let Ok(text) = if_none_match.to_str() else {
        return false;
    };
    text.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == tag
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_tag_keeps_its_version_in_front_of_the_digest() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, HeaderValue::from_static("\"3\""));

        let tag = entity_tag(&headers, b"{}");

        assert!(
            tag.starts_with("\"3-") && tag.ends_with('"') && tag.len() == 20,
            "{tag}"
        );
        assert_ne!(tag, entity_tag(&headers, b"{ }"));
        assert_eq!(entity_tag(&HeaderMap::new(), b"{}").len(), 18);
    }

    #[test]
    fn if_none_match_names_a_tag_in_a_list_weakly_or_with_a_star() {
        let tag = "\"3-00ff\"";
        for value in ["\"3-00ff\"", "W/\"3-00ff\"", "\"x\", \"3-00ff\"", "*"] {
            assert!(names(&HeaderValue::from_static(value), tag), "{value}");
        }
        assert!(!names(&HeaderValue::from_static("\"3\""), tag));
    }
}
