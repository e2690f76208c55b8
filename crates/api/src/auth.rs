//! Access control: each route needs a scope (`/health`, `/openapi.json`, `/console`, `/docs`
//! none, other GET routes `read` (the admin ones too, but for running a verification), commands
//! `write`, admin actions `admin`), proven by `Authorization: Bearer <token>`. With no
//! tokens configured every request is accepted; the server then only listens on loopback.

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::Response;
use cutover_engine::admin::Actor;
use cutover_runtime::auth::Scope;
use sha2::{Digest as _, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// The scope a request needs; `None` for the public routes (health, the API description, the
/// console and docs pages, which hold no data: they fetch it with the token typed into them).
fn required(method: &Method, path: &str) -> Option<Scope> {
    let reading = method == Method::GET || method == Method::HEAD;
    if path == "/health"
        || path == "/openapi.json"
        || path == "/console"
        || path.starts_with("/console/")
        || path == "/docs"
        || path.starts_with("/docs/")
    {
        None
    } else if path == "/admin" || path.starts_with("/admin/") {
        // Watching a migration needs `read`; acting on it (and running a verification)
        // needs `admin`.
        if reading && path != "/admin/consistency" {
            Some(Scope::Read)
        } else {
            Some(Scope::Admin)
        }
    } else if reading {
        Some(Scope::Read)
    } else {
        Some(Scope::Write)
    }
}

/// Refuses a request whose token is missing (401), unknown (401) or of too small a scope (403).
pub async fn authorize(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (Some(tokens), Some(needed)) = (
        state.tokens.as_deref(),
        required(request.method(), request.uri().path()),
    ) else {
        request
            .extensions_mut()
            .insert(Actor("api (no tokens configured)".to_owned()));
        return Ok(next.run(request).await);
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::Unauthorized("send Authorization: Bearer <token>".to_owned()))?;
    let scope = tokens
        .scope_of(presented)
        .ok_or_else(|| ApiError::Unauthorized("the token is not valid".to_owned()))?;
    if scope < needed {
        return Err(ApiError::Forbidden(format!(
            "this route needs a token with scope {}; this one has {}",
            needed.as_str(),
            scope.as_str()
        )));
    }
    let actor = Actor(format!(
        "api:{} token {}",
        scope.as_str(),
        fingerprint(presented)
    ));
    request.extensions_mut().insert(actor);
    Ok(next.run(request).await)
}

/// Who a token is, as the activity history records it: the first 8 bytes of its SHA-256 in hex
/// (the start of its line in a tokens file), never the token.
fn fingerprint(token: &str) -> String {
    Sha256::digest(token.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
