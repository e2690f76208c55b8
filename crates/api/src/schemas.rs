//! The OpenAPI declarations that routes share: the answers' schemas, the errors every route
//! (or every command) may answer, and the headers of reads and commands. The description that
//! gathers every route is `crate::openapi`.

use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, IntoResponses, ToSchema};
use uuid::Uuid;

use cutover_projections::batch_completions::{BatchSummary, CompletionRow};
use cutover_projections::batch_state::BatchState;
use cutover_projections::collections::LegacyCollection;
use cutover_projections::legacy_competencies::{AttemptDoc, CompetencyDoc, ReviewDoc};
use cutover_projections::project_collections::ProjectCollection;
use cutover_projections::student_competencies::{SkillAnalytics, StudentCompetency};

use crate::error::Problem;

/// The read model that answered, as its schema describes it.
#[derive(Serialize)]
pub struct ReadSourceName(String);

impl utoipa::PartialSchema for ReadSourceName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::bounds::component(serde_json::json!({
            "type": "string",
            "enum": crate::bounds::read_sources(),
            "description": "The read model that answered: `legacy` or `new`. The route \
                            decides the shape of the rows,\nnever the read source: the \
                            routes without `/v2` answer in the old API's shape from \
                            either\nmodel, the `/v2` routes in the new shape from the new \
                            model.",
        }))
    }
}

impl ToSchema for ReadSourceName {}

/// Declares the answer about one aggregate, one per route family:
/// `{read_source, version, position?, <rows>}`. `version` is also sent as the `ETag`;
/// `position` is the event-log position a command reached (commands only).
macro_rules! documents {
    ($($(#[$meta:meta])* $name:ident { $($(#[$row_meta:meta])* $row:ident: $ty:ty),+ $(,)? })+) => {$(
        $(#[$meta])*
        #[derive(Serialize, ToSchema)]
        pub struct $name {
            read_source: ReadSourceName,
            /// The aggregate's version, also sent as the `ETag`.
            version: i64,
            /// The event-log position the command reached (commands only).
            #[serde(skip_serializing_if = "Option::is_none")]
            #[schema(nullable = false)]
            position: Option<i64>,
            $($(#[$row_meta])* #[schema(required = true)] $row: $ty,)+
        }
    )+};
}

documents! {
    /// A collection in the old API's shape (`null` when the read source no longer holds it).
    CollectionDocument { collection: Option<LegacyCollection> }
    /// A collection in the new shape.
    CollectionNewDocument { collection: ProjectCollection }
    /// A batch in the old API's shape: its expected and completed players, predictions by
    /// player.
    BatchDocument { batch: Option<BatchState> }
    /// A batch in the new shape: its counters.
    BatchNewDocument { batch: BatchSummary }
    /// The player's completion as `GET …/completions` lists it.
    CompletionDocument { completion: Option<CompletionRow> }
    /// The completions recorded, as `GET …/completions` lists them, by player lookup.
    CompletionsDocument { completions: Vec<CompletionRow> }
    /// The attempt just recorded and the subskill's competency, as the old store's documents.
    AttemptDocument { attempt: Option<LegacyAttempt>, competency: Option<LegacyCompetency> }
    /// The review just recorded, as the old store's document.
    ReviewDocument { review: Option<LegacyReview> }
    /// The subskill's competency, as the old store's document.
    CompetencyDocument { competency: LegacyCompetency }
    /// The subskill's competency in the new shape.
    CompetencyNewDocument { competency: StudentCompetency }
}

/// Declares the old store's documents of one kind: `{id, student_id, doc}`, as the old clients
/// read them (the legacy tables' rows, or the same built from the new model's).
macro_rules! legacy_documents {
    ($($(#[$meta:meta])* $name:ident($doc:ty))+) => {$(
        $(#[$meta])*
        #[derive(Serialize, ToSchema)]
        pub struct $name {
            /// The old store's id of the document.
            id: String,
            /// The student: the old store's partition key.
            student_id: i64,
            doc: $doc,
        }
    )+};
}

legacy_documents! {
    /// An attempt, as the old store kept it.
    LegacyAttempt(AttemptDoc)
    /// A subskill's competency, as the old store kept it (its id is
    /// `<student>_<subject>_<skill>_<subskill>`).
    LegacyCompetency(CompetencyDoc)
    /// A review, as the old store kept it.
    LegacyReview(ReviewDoc)
}

/// Declares a page of rows: `{read_source, items, next}`.
macro_rules! pages {
    ($($(#[$meta:meta])* $name:ident { items: $item:ty, next: $next:ty $(, $(#[$source_meta:meta])* read_source: $source:ty)? })+) => {$(
        $(#[$meta])*
        #[derive(Serialize, ToSchema)]
        pub struct $name {
            $($(#[$source_meta])* read_source: $source,)?
            items: Vec<$item>,
            /// Pass as `after` for the next page; `null` on the last page.
            #[schema(required = true)]
            next: $next,
        }
    )+};
}

pages! {
    /// A page of collections in the old API's shape.
    CollectionPage { items: LegacyCollection, next: Option<Uuid>, read_source: ReadSourceName }
    /// A page of collections in the new shape.
    CollectionNewPage { items: ProjectCollection, next: Option<Uuid>, read_source: ReadSourceName }
    /// A page of completions (the `/v2` routes add when each was recorded).
    CompletionPage { items: CompletionRow, next: Option<String>, read_source: ReadSourceName }
}

/// A page of competencies in the old API's shape, by offset.
#[derive(Serialize, ToSchema)]
pub struct CompetencyPage {
    read_source: ReadSourceName,
    items: Vec<LegacyCompetency>,
}

/// A page of competencies in the new shape, by offset.
#[derive(Serialize, ToSchema)]
pub struct CompetencyNewPage {
    read_source: ReadSourceName,
    items: Vec<StudentCompetency>,
}

/// A page of skill analytics, by offset.
#[derive(Serialize, ToSchema)]
pub struct AnalyticsPage {
    items: Vec<SkillAnalytics>,
}

/// One Server-Sent Event of `GET /events/stream`.
#[derive(ToSchema)]
pub struct StreamEvent {
    /// The event's position, which a reconnecting browser sends back as `Last-Event-ID`.
    pub id: String,
    /// The event as `GET /events` lists it (a `FeedEvent`), as JSON.
    pub data: String,
}

/// A reviewer's full review: four JSON objects, of which `evaluation` holds the review's
/// `score`. No string inside may hold a NUL character (U+0000), which the database cannot
/// store (422).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FullReview {
    #[schema(value_type = crate::bounds::FreeForm)]
    observation: Map<String, Value>,
    #[schema(value_type = crate::bounds::FreeForm)]
    analysis: Map<String, Value>,
    evaluation: Evaluation,
    #[schema(value_type = crate::bounds::FreeForm)]
    feedback: Map<String, Value>,
}

/// The reviewer's evaluation: its `score` and anything else the reviewer wrote.
#[derive(Serialize)]
pub struct Evaluation;

impl utoipa::PartialSchema for Evaluation {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let mut score = crate::bounds::score();
        score["description"] = "A number, decimals allowed.".into();
        crate::bounds::component(serde_json::json!({
            "type": "object",
            "description": "The reviewer's evaluation: its `score` and anything else the \
                            reviewer wrote.",
            "properties": {"score": score},
            "required": ["score"],
            "propertyNames": {"pattern": crate::bounds::no_nul()},
            "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
        }))
    }
}

impl ToSchema for Evaluation {}

/// The errors every route may answer, as `application/problem+json`.
#[derive(IntoResponses)]
pub enum Errors {
    #[response(
        status = 400,
        description = "malformed request: a path, query or header value, or the JSON body",
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
        status = 422,
        description = "a value the database cannot store (a NUL character); for a command also a \
                       broken rule (`field` names it) or an Idempotency-Key reused with another \
                       request",
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

/// The errors only a command (a request with a body or an If-Match) may answer, as
/// `application/problem+json`.
#[derive(IntoResponses)]
pub enum CommandErrors {
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
        description = "a body whose content-type is not application/json (optionally with \
                       charset=utf-8)",
        content_type = "application/problem+json"
    )]
    UnsupportedMediaType(Problem),
}

/// The answer of a read whose Cutover-Min-Position names a position no event has.
#[derive(IntoResponses)]
#[response(
    status = 412,
    description = "Cutover-Min-Position names a position no event has",
    content_type = "application/problem+json"
)]
pub struct UnknownPosition(pub Problem);

/// The answer of a GET of a deleted resource.
#[derive(IntoResponses)]
#[response(
    status = 410,
    description = "deleted",
    content_type = "application/problem+json"
)]
pub struct Deleted(pub Problem);

/// The answer of a GET of the new shape while its projection is retired.
#[derive(IntoResponses)]
#[response(
    status = 409,
    description = "the projection that keeps the new shape is retired: rebuild it to serve it again",
    content_type = "application/problem+json"
)]
pub struct Retired(pub Problem);

/// The answer to a conditional GET whose `If-None-Match` names the current tag.
#[derive(IntoResponses)]
#[response(
    status = 304,
    description = "not modified: If-None-Match names the answer's current ETag (no body)"
)]
pub struct NotModified;

/// The header every JSON GET route reads.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct ReadHeaders {
    /// `*` or a list of tags (weak or strong) from earlier answers' `ETag`: when one names the
    /// current answer, it is a 304 with no body.
    #[param(rename = "If-None-Match", nullable = false)]
    pub if_none_match: Option<String>,
}

/// The header of the reads of the read models and of the feed.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct PositionHeaders {
    /// A log position a command answered (its `position`, or its `Cutover-Position` header),
    /// in digits (at most 18):
    /// the read is answered only by a server that shows that event, a replica once it has
    /// replayed it (within `--replica-wait-ms`), else the primary. A position no event has is
    /// a 412. Every read answers with `Cutover-Position`: the highest position its server
    /// showed.
    #[param(
        rename = "Cutover-Min-Position",
        nullable = false,
        value_type = Option<crate::reads::MinPositionHeader>,
        inline
    )]
    pub cutover_min_position: Option<String>,
}

/// The headers every command route reads.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct CommandHeaders {
    /// Run only if the aggregate is at this version (412 otherwise): `"3"`, `3` or `W/"3"`,
    /// or a GET's tag of that version, `"3-<digest>"`; `*` demands nothing. A create demands
    /// version `"0"` (none yet) if any.
    #[param(rename = "If-Match", nullable = false, value_type = Option<crate::extract::IfMatchHeader>, inline)]
    pub if_match: Option<String>,
    /// Visible ASCII characters. A repeat of the same request (method, path and body) with
    /// the same key gets the first answer and runs nothing; the key names that one request,
    /// and reusing it with another is a 422. Remembered for a day by default.
    #[param(
        rename = "Idempotency-Key",
        nullable = false,
        value_type = Option<crate::extract::IdempotencyKeyHeader>,
        inline
    )]
    pub idempotency_key: Option<String>,
}
