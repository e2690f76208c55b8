//! The projectors: each owns its read-model tables and builds them from stored events, inline
//! in the command's transaction and, with the same code, when a projection is rebuilt.
//!
//! Each module keeps its SQL beside the code that runs it and uses unqualified table names, so
//! the connection's `search_path` decides which schema (live or shadow) receives the rows.

use std::sync::Arc;

use async_trait::async_trait;
use cqrs_es::Aggregate;
use cutover_core::projection::{ProjectionError, Projector};
use cutover_core::store::StoredEvent;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres};

pub mod batch_completions;
pub mod batch_state;
pub mod batches;
pub mod collections;
pub mod legacy_competencies;
pub mod project_collections;
pub mod rebuild;
pub mod registry;
pub mod repair;
pub mod student_competencies;
pub mod verify;

/// Every inline projector, in the order they run inside a command's transaction.
pub fn inline_projectors() -> Vec<Arc<dyn Projector>> {
    vec![
        Arc::new(PerEvent(collections::LegacyCollections)),
        Arc::new(PerEvent(project_collections::ProjectCollections)),
        Arc::new(batch_state::LegacyBatchState),
        Arc::new(batch_completions::BatchCompletions),
        Arc::new(PerEvent(legacy_competencies::LegacyCompetencies)),
        Arc::new(PerEvent(student_competencies::StudentCompetencies)),
    ]
}

/// One SQL statement with its parameters bound.
type Statement = Query<'static, Postgres, PgArguments>;

/// A projector that writes each event with one statement.
trait EventProjector: Send + Sync + 'static {
    /// The projection's name.
    const NAME: &'static str;
    /// The tables it owns.
    const TABLES: &'static [&'static str];
    /// The aggregate whose events it reads.
    type Aggregate: Aggregate;

    /// The statement that applies `event`, already decoded.
    ///
    /// # Errors
    /// The event does not fit the projection (a malformed aggregate id).
    fn statement(
        event: &StoredEvent,
        decoded: <Self::Aggregate as Aggregate>::Event,
    ) -> Result<Statement, ProjectionError>;
}

/// Runs an [`EventProjector`] as a [`Projector`].
struct PerEvent<P>(P);

#[async_trait]
impl<P: EventProjector> Projector for PerEvent<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn tables(&self) -> &'static [&'static str] {
        P::TABLES
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[<P::Aggregate as Aggregate>::TYPE]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&StoredEvent],
    ) -> Result<(), ProjectionError> {
        for event in events {
            let decoded = decode(P::NAME, event)?;
            P::statement(event, decoded)?
                .execute(&mut *conn)
                .await
                .map_err(db(P::NAME))?;
        }
        Ok(())
    }
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

/// SQLSTATE of `cutover_legacy_id_taken`: a legacy document id already belongs to another
/// subskill.
const LEGACY_ID_TAKEN: &str = "CUT01";

/// Wraps a database error of `projector`.
fn db(projector: &'static str) -> impl Fn(sqlx::Error) -> ProjectionError {
    move |source| match &source {
        sqlx::Error::Database(e) if e.code().as_deref() == Some(LEGACY_ID_TAKEN) => {
            ProjectionError::LegacyIdTaken {
                projector,
                detail: e.message().to_owned(),
            }
        }
        _ => ProjectionError::Database { projector, source },
    }
}

/// A read-model row of one collection, with the queries that read it.
pub trait CollectionRow: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin {
    /// One collection, by `$1` project id and `$2` collection id.
    const SELECT_ONE: &'static str;
    /// Up to `$3` collections of project `$1` with ids after `$2`, by id.
    const SELECT_PAGE: &'static str;
}

/// The row of collection `collection_id` in project `project_id`, if the table has one.
///
/// # Errors
/// A database error.
pub async fn find<'e, T: CollectionRow>(
    executor: impl sqlx::PgExecutor<'e>,
    project_id: uuid::Uuid,
    collection_id: uuid::Uuid,
) -> Result<Option<T>, sqlx::Error> {
    sqlx::query_as(T::SELECT_ONE)
        .bind(project_id)
        .bind(collection_id)
        .fetch_optional(executor)
        .await
}

/// Up to `limit` listed collections of `project_id` with ids after `after`, by id (the legacy
/// table lists only active ones).
///
/// # Errors
/// A database error.
pub async fn list<'e, T: CollectionRow>(
    executor: impl sqlx::PgExecutor<'e>,
    project_id: uuid::Uuid,
    after: uuid::Uuid,
    limit: i64,
) -> Result<Vec<T>, sqlx::Error> {
    sqlx::query_as(T::SELECT_PAGE)
        .bind(project_id)
        .bind(after)
        .bind(limit)
        .fetch_all(executor)
        .await
}
