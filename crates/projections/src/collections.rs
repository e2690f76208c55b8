//! Legacy read model of collections: table `collections`, one row per collection, soft delete
//! (`is_active = false`). The shape the old system had, and the shape the old clients' routes
//! answer whichever model serves them: the new `project_collections` holds the same columns.

use chrono::{DateTime, Utc};
use cutover_core::domain::collection::{Collection, CollectionEvent};
use cutover_core::store::Written;
use cutover_engine::event::StoredEvent;
use cutover_engine::read_source::{Domain, ReadSource};
use cutover_engine::rows::ProjectionError;
use cutover_engine::rows::{timestamp, Change, Returned, Table};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use std::sync::Arc;

use cutover_engine::projection::Projector;

use crate::fold::{collection_id, column, Fold};

/// The projection's name.
pub const NAME: &str = "collections";

/// The legacy `collections` table.
pub static TABLE: Table = Table {
    name: "collections",
    aggregate: Some("collection_id::text"),
    returned: Returned::Rows,
    columns: &[
        column!("collection_id", "uuid", Keep),
        column!("project_id", "uuid", Keep),
        column!("collection_name", "text", Set),
        column!("description", "text", Set),
        column!("is_active", "boolean", Set),
        column!("created_at", "timestamp with time zone", Keep),
        column!("updated_at", "timestamp with time zone", Set),
        column!("last_sequence", "bigint", Set),
    ],
    key: &["collection_id"],
    address: &["collection_id"],
    indexes: &["collections_by_project"],
};

static TABLES: [&Table; 1] = [&TABLE];

/// The old answer's columns of a collection row, as a query's start (the table follows).
macro_rules! old_answer_select {
    () => {
        "SELECT collection_id, project_id, collection_name, description, is_active, \
                created_at, updated_at, last_sequence FROM "
    };
}

/// The queries of the old answer's collection rows in `$table`: the legacy table, or the new
/// one, which holds the same columns.
macro_rules! old_answer_queries {
    ($table:literal) => {
        CollectionQueries {
            table: $table,
            one: concat!(
                old_answer_select!(),
                $table,
                " WHERE project_id = $1 AND collection_id = $2"
            ),
            page: concat!(
                old_answer_select!(),
                $table,
                " WHERE project_id = $1 AND is_active AND collection_id > $2 \
                  ORDER BY collection_id LIMIT $3"
            ),
        }
    };
}

/// The old answer's collection rows, by read source.
fn queries(source: ReadSource) -> &'static CollectionQueries {
    static LEGACY: CollectionQueries = old_answer_queries!("collections");
    static NEW: CollectionQueries = old_answer_queries!("project_collections");
    match source {
        ReadSource::Legacy => &LEGACY,
        ReadSource::New => &NEW,
    }
}

/// The collections of `ids` (of any project, deleted ones included) as the old clients read
/// them, from `source`; those it does not hold are left out.
///
/// # Errors
/// A database error.
pub async fn answers_by_id(
    conn: &mut PgConnection,
    source: ReadSource,
    ids: &[Uuid],
) -> Result<Vec<LegacyCollection>, sqlx::Error> {
    let sql = match source {
        ReadSource::Legacy => concat!(
            old_answer_select!(),
            "collections WHERE collection_id = ANY($1)"
        ),
        ReadSource::New => concat!(
            old_answer_select!(),
            "project_collections WHERE collection_id = ANY($1)"
        ),
    };
    sqlx::query_as(sql).bind(ids).fetch_all(conn).await
}

/// Collection `collection_id` of project `project_id` as the old clients read it (deleted
/// ones included), from `source`.
///
/// # Errors
/// A database error.
pub async fn answer(
    conn: &mut PgConnection,
    source: ReadSource,
    project_id: Uuid,
    collection_id: Uuid,
) -> Result<Option<LegacyCollection>, sqlx::Error> {
    find(conn, queries(source), project_id, collection_id).await
}

/// The same after a command: its row as the command's statement wrote it to `source`'s table
/// (`written`), or, when it wrote none there, read in the command's transaction.
///
/// # Errors
/// A database error.
pub async fn answer_after(
    conn: &mut PgConnection,
    source: ReadSource,
    project_id: Uuid,
    collection_id: Uuid,
    written: Option<&Written>,
) -> Result<Option<LegacyCollection>, sqlx::Error> {
    let table = queries(source).table;
    let key = [
        ("collection_id", json!(collection_id)),
        ("project_id", json!(project_id)),
    ];
    match written.and_then(|w| w.find(table, &key)) {
        Some(row) => Ok(Some(row)),
        None => answer(conn, source, project_id, collection_id).await,
    }
}

/// A page of the project's active collections as the old clients read it, from `source`.
///
/// # Errors
/// A database error.
pub async fn answer_page(
    conn: &mut PgConnection,
    source: ReadSource,
    project_id: Uuid,
    after: Uuid,
    limit: i64,
) -> Result<Vec<LegacyCollection>, sqlx::Error> {
    list(conn, queries(source), project_id, after, limit).await
}

/// Projector of the legacy `collections` table.
pub struct LegacyCollections;

/// This read model's projector, maintained inline: the crate's build script finds it by this
/// function and lists it in [`crate::inline_projectors`].
pub fn projector() -> Arc<dyn Projector> {
    crate::fold::inline(LegacyCollections)
}

impl Fold for LegacyCollections {
    const NAME: &'static str = NAME;
    const DOMAIN: Domain = Domain::Collections;
    const SHAPE: ReadSource = ReadSource::Legacy;
    type Aggregate = Collection;

    fn tables() -> &'static [&'static Table] {
        &TABLES
    }

    fn project(
        event: &StoredEvent,
        decoded: CollectionEvent,
    ) -> Result<Vec<Change>, ProjectionError> {
        let id = collection_id(NAME, event)?;
        let at = timestamp(event.recorded_at);
        let sequence = event.sequence;
        Ok(vec![match decoded {
            CollectionEvent::CollectionCreated {
                project_id,
                collection_name,
                description,
            } => Change::insert(
                &TABLE,
                json!({
                    "collection_id": id, "project_id": project_id,
                    "collection_name": collection_name, "description": description,
                    "is_active": true, "created_at": at, "updated_at": at,
                    "last_sequence": sequence,
                }),
            ),
            CollectionEvent::CollectionImported {
                project_id,
                name,
                description,
                is_active,
                created_at,
                updated_at,
            } => Change::insert(
                &TABLE,
                json!({
                    "collection_id": id, "project_id": project_id, "collection_name": name,
                    "description": description, "is_active": is_active,
                    "created_at": timestamp(created_at), "updated_at": timestamp(updated_at),
                    "last_sequence": sequence,
                }),
            ),
            CollectionEvent::CollectionUpdated {
                collection_name,
                description,
                updated_at,
            } => Change::update(
                &TABLE,
                json!({
                    "collection_id": id, "collection_name": collection_name,
                    "description": description, "updated_at": updated_at.map_or(at, timestamp),
                    "last_sequence": sequence,
                }),
            ),
            CollectionEvent::CollectionResearchLinksSet { .. } => Change::update(
                &TABLE,
                json!({"collection_id": id, "updated_at": at, "last_sequence": sequence}),
            ),
            CollectionEvent::CollectionDeleted { updated_at } => Change::update(
                &TABLE,
                json!({
                    "collection_id": id, "is_active": false,
                    "updated_at": updated_at.map_or(at, timestamp), "last_sequence": sequence,
                }),
            ),
        }])
    }
}

/// A row of the legacy `collections` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LegacyCollection {
    pub collection_id: Uuid,
    pub project_id: Uuid,
    pub collection_name: String,
    /// NULL only for a collection imported from an old row whose description was NULL.
    #[schema(required = true)]
    pub description: Option<String>,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing)]
    pub last_sequence: i64,
}

/// The two queries that read rows of one collection table: one collection, by `$1` project id
/// and `$2` collection id; and a page of up to `$3` listed collections of project `$1` with ids
/// after `$2`, by id.
pub struct CollectionQueries {
    /// The table they read.
    pub table: &'static str,
    pub one: &'static str,
    pub page: &'static str,
}

/// The row of collection `collection_id` in project `project_id` that `queries` read, if any.
///
/// # Errors
/// A database error.
pub async fn find<'e, T>(
    executor: impl sqlx::PgExecutor<'e>,
    queries: &CollectionQueries,
    project_id: uuid::Uuid,
    collection_id: uuid::Uuid,
) -> Result<Option<T>, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(queries.one)
        .bind(project_id)
        .bind(collection_id)
        .fetch_optional(executor)
        .await
}

/// Up to `limit` listed collections of `project_id` with ids after `after` that `queries` read,
/// by id.
///
/// # Errors
/// A database error.
pub async fn list<'e, T>(
    executor: impl sqlx::PgExecutor<'e>,
    queries: &CollectionQueries,
    project_id: uuid::Uuid,
    after: uuid::Uuid,
    limit: i64,
) -> Result<Vec<T>, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(queries.page)
        .bind(project_id)
        .bind(after)
        .bind(limit)
        .fetch_all(executor)
        .await
}
