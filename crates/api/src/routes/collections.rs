//! Collections: commands append events (both read models update in the same transaction);
//! every answer is read back from the domain's read source in the command's transaction, in the
//! old API's shape whichever model is the source.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use cutover_core::domain::collection::{
    Collection, CollectionCommand, CollectionName, Description, ResearchLinks,
};
use cutover_core::store::{Committed, Idempotency, Request, StoredResponse};
use cutover_engine::read_source::{Domain, ReadSource};
use cutover_projections::collections::{answer, answer_after, answer_page, LegacyCollection};
use cutover_projections::collections::{find, list as list_page};
use cutover_projections::project_collections::{self as new_model, ProjectCollection};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::bounds::{self, bounds, PageSize};
use crate::error::ApiError;
use crate::extract::{IdempotencyKey, IfMatch, Json, Path, Query};
use crate::reads::Reading;
use crate::routes::{
    document, from_new_model, from_new_model_one, page as page_of, run, with_location, with_status,
    Respond,
};
use crate::state::AppState;

/// The page size of `GET /projects/{project_id}/collections`.
const PAGE: PageSize = PageSize {
    default: 50,
    max: 200,
};

bounds! {
    /// The page size of the collections.
    Limit = PAGE.schema();
}

/// The old API's routes of the project's collections and of one collection.
const LIST: &str = "/projects/{project_id}/collections";
const ONE: &str = "/projects/{project_id}/collections/{collection_id}";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(LIST, post(create).get(list))
        .route(ONE, put(update).get(fetch).delete(delete))
        .route(
            "/projects/{project_id}/collections/{collection_id}/links",
            put(set_links),
        )
        .route("/v2/projects/{project_id}/collections", get(list_new))
        .route(
            "/v2/projects/{project_id}/collections/{collection_id}",
            get(fetch_new),
        )
}

/// Body of create and update, in the old collections API's shape.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CollectionBody {
    /// The name. Surrounding white space is trimmed and the length bounds apply to what
    /// remains, which must hold a visible character: white space, control characters and
    /// characters drawn as nothing (zero-width spaces and joiners, direction marks, U+FEFF,
    /// variation selectors, tag characters) do not count. The old API's `name` is accepted in its place, as an
    /// alias: one or the other, not both.
    #[serde(alias = "name")]
    #[schema(value_type = bounds::CollectionName)]
    collection_name: String,
    /// Free text; absent or `null` is an empty description.
    #[serde(default)]
    #[schema(value_type = bounds::CollectionDescription)]
    description: Option<String>,
}

/// Body of `PUT …/links`: the complete new set of research links (an absent list is empty).
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LinksBody {
    /// Tags, each trimmed of surrounding white space (the length bounds apply to what
    /// remains, which must hold a visible character, as in a collection's name); a repeated
    /// tag is kept once.
    #[serde(default)]
    #[schema(value_type = bounds::Tags)]
    tags: Vec<String>,
    /// The project's question ids; a repeated id is kept once.
    #[serde(default)]
    #[schema(value_type = bounds::LinkedIds)]
    question_ids: Vec<Uuid>,
    /// The project's hypothesis ids; a repeated id is kept once.
    #[serde(default)]
    #[schema(value_type = bounds::LinkedIds)]
    hypothesis_ids: Vec<Uuid>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<i64>,
    after: Option<Uuid>,
}

#[derive(Debug, Serialize)]
struct CollectionPage<T> {
    read_source: ReadSource,
    items: Vec<T>,
    /// Pass as `after` for the next page; `null` on the last page.
    next: Option<Uuid>,
}

#[utoipa::path(
    post,
    path = "/projects/{project_id}/collections",
    operation_id = "createCollection",
    summary = "Create a collection",
    tag = "collections",
    description = "Creates a collection; the answer is read back from the read source.",
    params(("project_id" = Uuid, Path, description = "the project"), crate::schemas::CommandHeaders),
    request_body = CollectionBody,
    responses(
        (status = 201, description = "created", body = crate::schemas::CollectionDocument, headers(
            ("ETag" = String, description = "the collection's version, `\"1\"`: send it as If-Match"),
            ("Location" = String, description = "the collection's path")
        )),
        crate::schemas::Errors, crate::schemas::CommandErrors
    )
)]
async fn create(
    State(state): State<AppState>,
    Path(project_id): Path<Uuid>,
    IfMatch(expected): IfMatch,
    key: IdempotencyKey,
    Json(body): Json<CollectionBody>,
) -> Result<Response, ApiError> {
    let command = CollectionCommand::CreateCollection {
        project_id,
        name: CollectionName::parse(&body.collection_name)?,
        description: Description::parse(body.description.as_deref().unwrap_or_default())?,
    };
    let collection_id = Uuid::now_v7();
    let location = format!("/projects/{project_id}/collections/{collection_id}");
    let idempotency = key.for_body(&body);
    execute(
        &state,
        collection_id,
        command,
        expected,
        idempotency,
        move |conn, committed| {
            let location = location.clone();
            Box::pin(async move {
                let answer = respond(conn, project_id, collection_id, &committed).await?;
                Ok(with_location(
                    with_status(answer, StatusCode::CREATED),
                    location,
                ))
            })
        },
    )
    .await
}

#[utoipa::path(
    put,
    path = "/projects/{project_id}/collections/{collection_id}",
    operation_id = "updateCollection",
    summary = "Rename a collection",
    tag = "collections",
    description = "Renames a collection and sets its description.",
    params(("project_id" = Uuid, Path, description = "the project"), ("collection_id" = Uuid, Path, description = "the collection"), crate::schemas::CommandHeaders),
    request_body = CollectionBody,
    responses(
        (status = 200, description = "updated", body = crate::schemas::CollectionDocument, headers(("ETag" = String, description = "the collection's version, `\"<version>\"`: send it as If-Match"))),
        crate::schemas::Errors, crate::schemas::CommandErrors
    )
)]
async fn update(
    State(state): State<AppState>,
    Path((project_id, collection_id)): Path<(Uuid, Uuid)>,
    IfMatch(expected): IfMatch,
    key: IdempotencyKey,
    Json(body): Json<CollectionBody>,
) -> Result<Response, ApiError> {
    let command = CollectionCommand::UpdateCollection {
        project_id,
        name: CollectionName::parse(&body.collection_name)?,
        description: Some(Description::parse(
            body.description.as_deref().unwrap_or_default(),
        )?),
        updated_at: None,
    };
    let idempotency = key.for_body(&body);
    change(
        &state,
        project_id,
        collection_id,
        command,
        expected,
        idempotency,
    )
    .await
}

#[utoipa::path(
    put,
    path = "/projects/{project_id}/collections/{collection_id}/links",
    operation_id = "setCollectionLinks",
    summary = "Set a collection's research links",
    tag = "collections",
    description = "Replaces the collection's tags, question ids and hypothesis ids.",
    params(("project_id" = Uuid, Path, description = "the project"), ("collection_id" = Uuid, Path, description = "the collection"), crate::schemas::CommandHeaders),
    request_body = LinksBody,
    responses(
        (status = 200, description = "linked", body = crate::schemas::CollectionDocument, headers(("ETag" = String, description = "the collection's version, `\"<version>\"`: send it as If-Match"))),
        crate::schemas::Errors, crate::schemas::CommandErrors
    )
)]
async fn set_links(
    State(state): State<AppState>,
    Path((project_id, collection_id)): Path<(Uuid, Uuid)>,
    IfMatch(expected): IfMatch,
    key: IdempotencyKey,
    Json(body): Json<LinksBody>,
) -> Result<Response, ApiError> {
    let links = ResearchLinks::parse(&body.tags, &body.question_ids, &body.hypothesis_ids)?;
    let command = CollectionCommand::SetResearchLinks { project_id, links };
    let idempotency = key.for_body(&body);
    change(
        &state,
        project_id,
        collection_id,
        command,
        expected,
        idempotency,
    )
    .await
}

#[utoipa::path(
    delete,
    path = "/projects/{project_id}/collections/{collection_id}",
    operation_id = "deleteCollection",
    summary = "Delete a collection",
    tag = "collections",
    description = "Deletes a collection (a soft delete in the legacy shape); reading it afterwards is a 410.",
    params(("project_id" = Uuid, Path, description = "the project"), ("collection_id" = Uuid, Path, description = "the collection"), crate::schemas::CommandHeaders),
    responses(
        (status = 200, description = "deleted", body = crate::schemas::CollectionDocument, headers(("ETag" = String, description = "the collection's version, `\"<version>\"`: send it as If-Match"))),
        crate::schemas::Errors, crate::schemas::CommandErrors
    )
)]
async fn delete(
    State(state): State<AppState>,
    Path((project_id, collection_id)): Path<(Uuid, Uuid)>,
    IfMatch(expected): IfMatch,
    key: IdempotencyKey,
) -> Result<Response, ApiError> {
    let command = CollectionCommand::DeleteCollection {
        project_id,
        updated_at: None,
    };
    let idempotency = key.for_body(&());
    change(
        &state,
        project_id,
        collection_id,
        command,
        expected,
        idempotency,
    )
    .await
}

#[utoipa::path(
    get,
    path = "/projects/{project_id}/collections/{collection_id}",
    operation_id = "getCollection",
    summary = "Get a collection",
    tag = "collections",
    description = "The collection, from the domain's read source.",
    params(("project_id" = Uuid, Path, description = "the project"), ("collection_id" = Uuid, Path, description = "the collection"), crate::schemas::ReadHeaders, crate::schemas::PositionHeaders),
    responses(
        (status = 200, description = "the collection", body = crate::schemas::CollectionDocument, headers(
            ("ETag" = String, description = "`\"<version>-<digest>\"`: If-Match takes it as that version, If-None-Match as this answer")
        )),
        crate::schemas::NotModified,
        crate::schemas::Errors, crate::schemas::UnknownPosition, crate::schemas::Deleted
    )
)]
async fn fetch(
    reading: Reading,
    Path((project_id, collection_id)): Path<(Uuid, Uuid)>,
) -> Result<Response, ApiError> {
    reading
        .answer(Domain::Collections, ONE, move |conn, source| {
            Box::pin(async move {
                let row = answer(conn, source, project_id, collection_id).await?;
                let not_found =
                    || ApiError::NotFound("no such collection in this project".to_owned());
                let row = row.ok_or_else(not_found)?;
                if !row.is_active {
                    return Err(ApiError::Gone("the collection has been deleted".to_owned()));
                }
                Ok(document(
                    source,
                    row.last_sequence,
                    None,
                    &[("collection", json!(row))],
                ))
            })
        })
        .await
}

#[utoipa::path(
    get,
    path = "/projects/{project_id}/collections",
    operation_id = "listCollections",
    summary = "List a project's collections",
    tag = "collections",
    description = "A page of the project's live collections, by id.",
    params(("project_id" = Uuid, Path, description = "the project"), ("limit" = inline(Option<Limit>), Query, nullable = false, description = "the page's size"), ("after" = Option<Uuid>, Query, nullable = false, description = "the page starts after this collection id: a page's `next`"), crate::schemas::ReadHeaders, crate::schemas::PositionHeaders),
    responses(
        (status = 200, description = "a page", body = crate::schemas::CollectionPage),
        crate::schemas::NotModified,
        crate::schemas::Errors, crate::schemas::UnknownPosition
    )
)]
async fn list(
    reading: Reading,
    Path(project_id): Path<Uuid>,
    Query(page): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let (after, limit) = page_bounds(&page)?;
    reading
        .answer(Domain::Collections, LIST, move |conn, source| {
            Box::pin(async move {
                let items: Vec<LegacyCollection> =
                    answer_page(conn, source, project_id, after, limit).await?;
                let next = next_after(&items, limit, |row| row.collection_id);
                Ok(page_of(json!(CollectionPage {
                    read_source: source,
                    items,
                    next,
                })))
            })
        })
        .await
}

#[utoipa::path(
    get,
    path = "/v2/projects/{project_id}/collections/{collection_id}",
    operation_id = "getCollectionNewShape",
    summary = "Get a collection (new shape)",
    tag = "collections",
    description = "The collection in the new shape (its research context and links), from the new \
                   model whatever the read source; a deleted collection is a 404.",
    params(("project_id" = Uuid, Path, description = "the project"), ("collection_id" = Uuid, Path, description = "the collection"), crate::schemas::ReadHeaders, crate::schemas::PositionHeaders),
    responses(
        (status = 200, description = "the collection", body = crate::schemas::CollectionNewDocument, headers(
            ("ETag" = String, description = "`\"<version>-<digest>\"`: If-None-Match takes it as this answer")
        )),
        crate::schemas::NotModified,
        crate::schemas::Errors, crate::schemas::UnknownPosition, crate::schemas::Retired
    )
)]
async fn fetch_new(
    reading: Reading,
    Path((project_id, collection_id)): Path<(Uuid, Uuid)>,
) -> Result<Response, ApiError> {
    let mut snapshot = reading.open(None).await?;
    let read = find::<ProjectCollection>(
        &mut *snapshot,
        &new_model::NEW_SHAPE,
        project_id,
        collection_id,
    );
    from_new_model_one(
        read.await,
        new_model::NAME,
        "collection",
        "no such collection in this project",
        |row| row.last_sequence,
    )
}

#[utoipa::path(
    get,
    path = "/v2/projects/{project_id}/collections",
    operation_id = "listCollectionsNewShape",
    summary = "List a project's collections (new shape)",
    tag = "collections",
    description = "A page of the project's live collections in the new shape, by id, from the new \
                   model whatever the read source.",
    params(("project_id" = Uuid, Path, description = "the project"), ("limit" = inline(Option<Limit>), Query, nullable = false, description = "the page's size"), ("after" = Option<Uuid>, Query, nullable = false, description = "the page starts after this collection id: a page's `next`"), crate::schemas::ReadHeaders, crate::schemas::PositionHeaders),
    responses(
        (status = 200, description = "a page", body = crate::schemas::CollectionNewPage),
        crate::schemas::NotModified,
        crate::schemas::Errors, crate::schemas::UnknownPosition, crate::schemas::Retired
    )
)]
async fn list_new(
    reading: Reading,
    Path(project_id): Path<Uuid>,
    Query(page): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let (after, limit) = page_bounds(&page)?;
    let mut snapshot = reading.open(None).await?;
    let read = list_page::<ProjectCollection>(
        &mut *snapshot,
        &new_model::NEW_SHAPE,
        project_id,
        after,
        limit,
    );
    let items = from_new_model(read.await, new_model::NAME)?;
    let next = next_after(&items, limit, |row| row.collection_id);
    Ok(IntoResponse::into_response(axum::Json(CollectionPage {
        read_source: ReadSource::New,
        items,
        next,
    })))
}

/// A page's `after` and `limit`, checked.
fn page_bounds(page: &PageQuery) -> Result<(Uuid, i64), ApiError> {
    let limit = PAGE.of(page.limit)?;
    Ok((page.after.unwrap_or(Uuid::nil()), limit))
}

/// The `next` of a page of `limit` rows: the last one's id when the page is full.
fn next_after<T>(items: &[T], limit: i64, id: impl Fn(&T) -> Uuid) -> Option<Uuid> {
    let full = i64::try_from(items.len()).unwrap_or(i64::MAX) == limit;
    items.last().filter(|_| full).map(id)
}

/// Runs a command on an existing collection and answers with it as read back.
async fn change(
    state: &AppState,
    project_id: Uuid,
    collection_id: Uuid,
    command: CollectionCommand,
    expected_version: Option<i64>,
    idempotency: Option<Idempotency>,
) -> Result<Response, ApiError> {
    execute(
        state,
        collection_id,
        command,
        expected_version,
        idempotency,
        move |conn, committed| {
            Box::pin(async move { respond(conn, project_id, collection_id, &committed).await })
        },
    )
    .await
}

/// Runs a collection command; `respond` reads its answer back before the commit.
async fn execute(
    state: &AppState,
    collection_id: Uuid,
    command: CollectionCommand,
    expected_version: Option<i64>,
    idempotency: Option<Idempotency>,
    respond: impl for<'c> Fn(&'c mut PgConnection, Committed) -> Respond<'c>,
) -> Result<Response, ApiError> {
    let metadata = json!({ "command": command.name() });
    let aggregate_id = collection_id.to_string();
    // A created collection's id was just made for it.
    let new_aggregate = matches!(command, CollectionCommand::CreateCollection { .. });
    let request = Request::<Collection> {
        aggregate_id: &aggregate_id,
        command,
        services: &(),
        expected_version,
        metadata: &metadata,
        new_aggregate,
        // Its answer is its collection's row, which every command that appends writes.
        answered_from_rows: true,
    };
    run(state, request, idempotency, respond).await
}

/// Write-then-read: the command's answer, read back from the read source in its transaction.
async fn respond(
    conn: &mut PgConnection,
    project_id: Uuid,
    collection_id: Uuid,
    committed: &Committed,
) -> Result<StoredResponse, ApiError> {
    let source = committed.read_sources.of(Domain::Collections)?;
    let row = answer_after(
        conn,
        source,
        project_id,
        collection_id,
        committed.written.as_ref(),
    )
    .await?;
    Ok(document(
        source,
        committed.version,
        Some(committed.position),
        &[("collection", json!(row))],
    ))
}
