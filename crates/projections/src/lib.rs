//! The projectors: each owns its read-model tables and builds them from stored events, inline
//! in the command's transaction and, with the same code, when a projection is rebuilt.
//!
//! Each module declares its tables once (`cutover_engine::rows::Table`) and maps events to row
//! changes, with no IO; the one writer in `cutover_engine::rows` turns them into SQL with
//! unqualified table names, so the connection's `search_path` decides which schema (live or
//! shadow) receives the rows. The queries that read the rows live beside the declarations.

use std::sync::Arc;

use cqrs_es::Aggregate;
use cutover_engine::compare::Comparison;
use cutover_engine::event::StoredEvent;
use cutover_engine::projection::Projector;
use cutover_engine::read_source::{Domain, ReadSource};
use cutover_engine::rows::ProjectionError;
use cutover_engine::rows::{Change, Table};

pub mod batch_completions;
pub mod batch_state;
pub mod batches;
pub mod collections;
pub mod follow;
pub mod legacy_competencies;
pub mod project_collections;
pub mod student_competencies;

/// Every inline projector, in the order they run inside a command's transaction.
pub fn inline_projectors() -> Vec<Arc<dyn Projector>> {
    vec![
        Arc::new(Folded(collections::LegacyCollections)),
        Arc::new(Folded(project_collections::ProjectCollections)),
        Arc::new(Folded(batch_state::LegacyBatchState)),
        Arc::new(Folded(batch_completions::BatchCompletions)),
        Arc::new(Folded(legacy_competencies::LegacyCompetencies)),
        Arc::new(Folded(student_competencies::StudentCompetencies)),
    ]
}

/// A projector as a pure fold over the events of one aggregate type: its tables, and what each
/// event (already decoded) does to their rows.
trait Fold: Send + Sync + 'static {
    /// The projection's name.
    const NAME: &'static str;
    /// The domain whose read model it is, and the shape of its tables.
    const DOMAIN: Domain;
    const SHAPE: ReadSource;
    /// The aggregate whose events it reads.
    type Aggregate: Aggregate;

    /// The tables it owns.
    fn tables() -> &'static [&'static Table];

    /// The row changes of `event`.
    ///
    /// # Errors
    /// The event does not fit the projection (a malformed aggregate id).
    fn project(
        event: &StoredEvent,
        decoded: <Self::Aggregate as Aggregate>::Event,
    ) -> Result<Vec<Change>, ProjectionError>;

    /// See [`Projector::settle`].
    fn settle() -> &'static [&'static str] {
        &[]
    }

    /// See [`Projector::compared`].
    fn compared() -> &'static [Comparison] {
        &[]
    }
}

/// Runs a [`Fold`] as a [`Projector`].
struct Folded<F>(F);

impl<F: Fold> Projector for Folded<F> {
    fn name(&self) -> &'static str {
        F::NAME
    }

    fn tables(&self) -> &'static [&'static Table] {
        F::tables()
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[<F::Aggregate as Aggregate>::TYPE]
    }

    fn domain(&self) -> Domain {
        F::DOMAIN
    }

    fn shape(&self) -> ReadSource {
        F::SHAPE
    }

    fn project(&self, event: &StoredEvent) -> Result<Vec<Change>, ProjectionError> {
        F::project(event, cutover_core::domain::decode(F::NAME, event)?)
    }

    fn settle(&self) -> &'static [&'static str] {
        F::settle()
    }

    fn compared(&self) -> &'static [Comparison] {
        F::compared()
    }
}

/// A column of a table declaration: name, type (as `format_type` spells it), merge.
macro_rules! column {
    ($name:literal, $type:literal, $merge:ident) => {
        cutover_engine::rows::Column {
            name: $name,
            sql_type: $type,
            merge: cutover_engine::rows::Merge::$merge,
        }
    };
}
pub(crate) use column;

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

/// The two queries that read rows of one collection table: one collection, by `$1` project id
/// and `$2` collection id; and a page of up to `$3` listed collections of project `$1` with ids
/// after `$2`, by id.
pub struct CollectionQueries {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repair_clears_or_settles_each_table_of_every_inline_projector() {
        for projector in inline_projectors() {
            for table in projector.tables() {
                let settled = projector
                    .settle()
                    .iter()
                    .any(|s| s.contains(&format!("INSERT INTO {} ", table.name)));
                assert!(
                    table.aggregate.is_some() || settled,
                    "{}: {} is not repaired",
                    projector.name(),
                    table.name
                );
            }
        }
    }
}
