//! Collections: commands append events (both read models update in the same transaction);
//! every answer is read back from the domain's read source after the commit.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{post, put};
use axum::Router;
use cutover_core::domain::collection::{
    Collection, CollectionCommand, CollectionName, Description, ResearchLinks,
};
use cutover_core::read_source::{self, Domain, ReadSource};
use cutover_core::store::Committed;
use cutover_projections::collections::LegacyCollection;
use cutover_projections::project_collections::ProjectCollection;
use cutover_projections::{find, list as list_page};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::{IfMatch, Json, Path, Query};
use crate::routes::document;
use crate::AppState;

/// Default and largest page of `GET /projects/{project_id}/collections`.
const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/projects/{project_id}/collections", post(create).get(list))
        .route(
            "/projects/{project_id}/collections/{collection_id}",
            put(update).get(fetch).delete(delete),
        )
        .route(
            "/projects/{project_id}/collections/{collection_id}/links",
            put(set_links),
        )
}

/// Body of create and update.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CollectionBody {
    name: String,
    #[serde(default)]
    description: String,
}

/// Body of `PUT …/links`: the complete new set of research links.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinksBody {
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    question_ids: Vec<Uuid>,
    #[serde(default)]
    hypothesis_ids: Vec<Uuid>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<i64>,
    after: Option<Uuid>,
}

/// A collection as its read source has it: the legacy row or the new row.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum CollectionView {
    Legacy(LegacyCollection),
    New(ProjectCollection),
}

#[derive(Debug, Serialize)]
struct CollectionPage {
    read_source: ReadSource,
    items: Vec<CollectionView>,
    /// Pass as `after` for the next page; `null` on the last page.
    next: Option<Uuid>,
}

async fn create(
    State(state): State<AppState>,
    Path(project_id): Path<Uuid>,
    IfMatch(expected): IfMatch,
    Json(body): Json<CollectionBody>,
) -> Result<Response, ApiError> {
    let command = CollectionCommand::CreateCollection {
        project_id,
        name: CollectionName::parse(&body.name)?,
        description: Description::parse(&body.description)?,
    };
    let collection_id = Uuid::now_v7();
    let committed = execute(&state, collection_id, command, expected).await?;
    let mut response = respond(&state, project_id, collection_id, &committed).await?;
    *response.status_mut() = StatusCode::CREATED;
    if let Ok(location) = HeaderValue::from_str(&format!(
        "/projects/{project_id}/collections/{collection_id}"
    )) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn update(
    State(state): State<AppState>,
    Path((project_id, collection_id)): Path<(Uuid, Uuid)>,
    IfMatch(expected): IfMatch,
    Json(body): Json<CollectionBody>,
) -> Result<Response, ApiError> {
    let command = CollectionCommand::UpdateCollection {
        project_id,
        name: CollectionName::parse(&body.name)?,
        description: Description::parse(&body.description)?,
    };
    let committed = execute(&state, collection_id, command, expected).await?;
    respond(&state, project_id, collection_id, &committed).await
}

async fn set_links(
    State(state): State<AppState>,
    Path((project_id, collection_id)): Path<(Uuid, Uuid)>,
    IfMatch(expected): IfMatch,
    Json(body): Json<LinksBody>,
) -> Result<Response, ApiError> {
    let links = ResearchLinks::parse(&body.tags, &body.question_ids, &body.hypothesis_ids)?;
    let command = CollectionCommand::SetResearchLinks { project_id, links };
    let committed = execute(&state, collection_id, command, expected).await?;
    respond(&state, project_id, collection_id, &committed).await
}

async fn delete(
    State(state): State<AppState>,
    Path((project_id, collection_id)): Path<(Uuid, Uuid)>,
    IfMatch(expected): IfMatch,
) -> Result<Response, ApiError> {
    let command = CollectionCommand::DeleteCollection { project_id };
    let committed = execute(&state, collection_id, command, expected).await?;
    respond(&state, project_id, collection_id, &committed).await
}

async fn fetch(
    State(state): State<AppState>,
    Path((project_id, collection_id)): Path<(Uuid, Uuid)>,
) -> Result<Response, ApiError> {
    let (source, view) = read(&state, project_id, collection_id).await?;
    let not_found = || ApiError::NotFound("no such collection in this project".to_owned());
    let view = view.ok_or_else(not_found)?;
    let version = match &view {
        CollectionView::Legacy(row) if !row.is_active => {
            return Err(ApiError::Gone("the collection has been deleted".to_owned()))
        }
        CollectionView::Legacy(row) => row.last_sequence,
        CollectionView::New(row) => row.last_sequence,
    };
    Ok(document(
        source,
        version,
        None,
        &[("collection", json!(view))],
    ))
}

async fn list(
    State(state): State<AppState>,
    Path(project_id): Path<Uuid>,
    Query(page): Query<PageQuery>,
) -> Result<axum::Json<CollectionPage>, ApiError> {
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let after = page.after.unwrap_or(Uuid::nil());
    let pool = state.store.pool();
    let source = read_source::current(pool, Domain::Collections).await?;
    let items: Vec<CollectionView> = match source {
        ReadSource::Legacy => list_page::<LegacyCollection>(pool, project_id, after, limit)
            .await?
            .into_iter()
            .map(CollectionView::Legacy)
            .collect(),
        ReadSource::New => list_page::<ProjectCollection>(pool, project_id, after, limit)
            .await?
            .into_iter()
            .map(CollectionView::New)
            .collect(),
    };
    let full = i64::try_from(items.len()).unwrap_or(i64::MAX) == limit;
    let next = items.last().filter(|_| full).map(|item| match item {
        CollectionView::Legacy(row) => row.collection_id,
        CollectionView::New(row) => row.collection_id,
    });
    Ok(axum::Json(CollectionPage {
        read_source: source,
        items,
        next,
    }))
}

async fn execute(
    state: &AppState,
    collection_id: Uuid,
    command: CollectionCommand,
    expected_version: Option<i64>,
) -> Result<Committed, ApiError> {
    let metadata = json!({ "command": command.name() });
    Ok(state
        .store
        .execute::<Collection>(
            &collection_id.to_string(),
            command,
            &(),
            expected_version,
            &metadata,
        )
        .await?)
}

/// Write-then-read: the committed command's answer, read back from the read source.
async fn respond(
    state: &AppState,
    project_id: Uuid,
    collection_id: Uuid,
    committed: &Committed,
) -> Result<Response, ApiError> {
    let (source, view) = read(state, project_id, collection_id).await?;
    Ok(document(
        source,
        committed.version,
        Some(committed.position),
        &[("collection", json!(view))],
    ))
}

async fn read(
    state: &AppState,
    project_id: Uuid,
    collection_id: Uuid,
) -> Result<(ReadSource, Option<CollectionView>), ApiError> {
    let pool = state.store.pool();
    let source = read_source::current(pool, Domain::Collections).await?;
    let view = match source {
        ReadSource::Legacy => find::<LegacyCollection>(pool, project_id, collection_id)
            .await?
            .map(CollectionView::Legacy),
        ReadSource::New => find::<ProjectCollection>(pool, project_id, collection_id)
            .await?
            .map(CollectionView::New),
    };
    Ok((source, view))
}
