//! The OpenAPI 3.1 description of every route, generated from the handlers' annotations and
//! their request types, served at `/openapi.json`.

use axum::routing::get;
use axum::Router;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToSchema};

use crate::error::Problem;
use crate::routes::{admin, batches, collections, competencies, events, health};
use crate::AppState;

/// The answer about one aggregate: where it was read from, its version, the event-log
/// position a command reached, and the read-model rows (`collection`, `batch`, `completion`,
/// `attempt`, `competency` or `review`, as the route says) in the read source's shape.
#[derive(Serialize, ToSchema)]
pub struct Document {
    /// `legacy` or `new`.
    read_source: String,
    version: i64,
    /// Commands only.
    position: Option<i64>,
    /// The row of the route's resource, `null` when the read source does not hold it.
    #[schema(value_type = Option<Object>)]
    collection: Option<Value>,
}

/// A page of rows.
#[derive(Serialize, ToSchema)]
pub struct Page {
    /// `legacy` or `new`, where two shapes exist.
    read_source: Option<String>,
    #[schema(value_type = Vec<Object>)]
    items: Vec<Value>,
    /// Where the next page starts (a cursor, or `null` on the last page).
    #[schema(value_type = Option<String>)]
    next: Option<Value>,
}

/// A JSON object (a registry row, a job, a report, an event page).
#[derive(Serialize, ToSchema)]
#[schema(value_type = Object)]
pub struct AnyObject(Value);

/// The errors a route may answer, as `application/problem+json` (a route gives those its
/// rules allow: a GET never 412s).
#[derive(IntoResponses)]
pub enum Errors {
    #[response(
        status = 400,
        description = "malformed request: JSON, a path or query value, If-Match or Idempotency-Key",
        content_type = "application/problem+json"
    )]
    BadRequest(Problem),
    #[response(
        status = 401,
        description = "no token, or an unknown one",
        content_type = "application/problem+json"
    )]
    Unauthorized(Problem),
    #[response(
        status = 403,
        description = "the token's scope does not allow the route",
        content_type = "application/problem+json"
    )]
    Forbidden(Problem),
    #[response(
        status = 404,
        description = "no such resource",
        content_type = "application/problem+json"
    )]
    NotFound(Problem),
    #[response(
        status = 409,
        description = "the state does not allow it, or the append race was lost too often",
        content_type = "application/problem+json"
    )]
    Conflict(Problem),
    #[response(
        status = 410,
        description = "deleted",
        content_type = "application/problem+json"
    )]
    Gone(Problem),
    #[response(
        status = 412,
        description = "If-Match names another version",
        content_type = "application/problem+json"
    )]
    PreconditionFailed(Problem),
    #[response(
        status = 413,
        description = "a body over 1 MiB",
        content_type = "application/problem+json"
    )]
    PayloadTooLarge(Problem),
    #[response(
        status = 415,
        description = "a body that is not JSON",
        content_type = "application/problem+json"
    )]
    UnsupportedMediaType(Problem),
    #[response(
        status = 422,
        description = "a broken rule, or an Idempotency-Key reused with another request",
        content_type = "application/problem+json"
    )]
    Unprocessable(Problem),
    #[response(
        status = 503,
        description = "the database cannot be reached; Retry-After says when to try again",
        content_type = "application/problem+json"
    )]
    Unavailable(Problem),
}

/// The headers every command route reads.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct CommandHeaders {
    /// Run only if the aggregate is at this version, e.g. `"3"` (412 otherwise).
    #[param(
        rename = "If-Match",
        nullable = false,
        pattern = r#"^(\*|(W/)?"?[0-9]+"?)$"#
    )]
    pub if_match: Option<String>,
    /// 1–255 visible ASCII characters: a repeat of the same request gets the first answer.
    #[param(
        rename = "Idempotency-Key",
        nullable = false,
        pattern = "^[!-~]{1,255}$"
    )]
    pub idempotency_key: Option<String>,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "A token with scope read (GET routes, watching /admin), write \
                             (commands) or admin (/admin actions and verification). Needed \
                             only when the server has tokens configured.",
                        ))
                        .build(),
                ),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cutover",
        description = "Ledger-first data-model migrations: commands append events and update the legacy and the new read model in one transaction."
    ),
    paths(
        health::health,
        collections::create, collections::fetch, collections::update, collections::set_links,
        collections::delete, collections::list,
        batches::start, batches::fetch, batches::record, batches::record_bulk,
        batches::list_completions,
        competencies::record_attempt, competencies::record_review, competencies::list,
        competencies::fetch, competencies::analytics,
        events::page, events::live,
        admin::list, admin::status, admin::start_rebuild, admin::retire, admin::job,
        admin::read_sources, admin::set_read_source, admin::consistency,
        admin::latest_consistency, crate::metrics::activity, crate::metrics::scrape
    ),
    components(schemas(Problem, Document, Page, AnyObject)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/openapi.json",
        get(|| async { axum::Json(ApiDoc::openapi()) }),
    )
}
