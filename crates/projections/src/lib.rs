//! The projectors: each owns its read-model tables and builds them from stored events, inline
//! in the command's transaction and, with the same code, when a projection is rebuilt.
//!
//! Each module keeps its SQL beside the code that runs it and uses unqualified table names, so
//! the connection's `search_path` decides which schema (live or shadow) receives the rows.

use std::sync::Arc;

use cutover_core::projection::{ProjectionError, Projector};
use cutover_core::store::StoredEvent;

pub mod collections;
pub mod project_collections;

/// Every inline projector, in the order they run inside a command's transaction.
pub fn inline_projectors() -> Vec<Arc<dyn Projector>> {
    vec![
        Arc::new(collections::LegacyCollections),
        Arc::new(project_collections::ProjectCollections),
    ]
}

/// Reads the uuid of a collection event's aggregate.
fn collection_id(
    projector: &'static str,
    event: &StoredEvent,
) -> Result<uuid::Uuid, ProjectionError> {
    event
        .aggregate_id
        .parse()
        .map_err(|_| ProjectionError::BadAggregateId {
            projector,
            position: event.position,
        })
}

/// Decodes a collection event for `projector`.
fn decode<E: serde::de::DeserializeOwned>(
    projector: &'static str,
    event: &StoredEvent,
) -> Result<E, ProjectionError> {
    event.decode().map_err(|source| ProjectionError::Decode {
        projector,
        position: event.position,
        source,
    })
}

/// Wraps a database error of `projector`.
fn db(projector: &'static str) -> impl Fn(sqlx::Error) -> ProjectionError {
    move |source| ProjectionError::Database { projector, source }
}

/// Runs a one-row collection query taking (project_id, collection_id).
async fn find_row<'e, T>(
    executor: impl sqlx::PgExecutor<'e>,
    sql: &'static str,
    project_id: uuid::Uuid,
    collection_id: uuid::Uuid,
) -> Result<Option<T>, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(sql)
        .bind(project_id)
        .bind(collection_id)
        .fetch_optional(executor)
        .await
}

/// Runs a page query of collections taking (project_id, after, limit).
async fn list_rows<'e, T>(
    executor: impl sqlx::PgExecutor<'e>,
    sql: &'static str,
    project_id: uuid::Uuid,
    after: uuid::Uuid,
    limit: i64,
) -> Result<Vec<T>, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(sql)
        .bind(project_id)
        .bind(after)
        .bind(limit)
        .fetch_all(executor)
        .await
}
