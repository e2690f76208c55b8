//! The projector seam: a unit that owns some read-model tables and applies stored events to
//! them inside a transaction it is given. The command path calls it inline, in the transaction
//! that appends the events; a rebuild calls the same code over the whole log.

use async_trait::async_trait;
use sqlx::PgConnection;

use crate::store::StoredEvent;

/// A projector failed; the transaction it ran in must not commit.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("projector {projector} could not write its read model")]
    Database {
        projector: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The legacy shape's document id of a subskill is already another subskill's (the old
    /// store's id format maps both to it); `detail` names both.
    #[error("projector {projector} refused to merge two subskills: {detail}")]
    LegacyIdTaken {
        projector: &'static str,
        detail: String,
    },
    #[error("projector {projector}: event at position {position} has a malformed aggregate id")]
    BadAggregateId {
        projector: &'static str,
        position: i64,
    },
    #[error("projector {projector} could not read event at position {position}")]
    Decode {
        projector: &'static str,
        position: i64,
        #[source]
        source: serde_json::Error,
    },
}

/// Builds read-model rows from events.
///
/// Implementations use unqualified table names (the connection's `search_path` decides the
/// schema, so a rebuild can write into shadow tables), make no external calls, and write rows
/// keyed so that the same events always give the same rows.
#[async_trait]
pub trait Projector: Send + Sync + 'static {
    /// The projection's stable name, as the registry and the CLI know it.
    fn name(&self) -> &'static str;

    /// The tables it owns (unqualified names).
    fn tables(&self) -> &'static [&'static str];

    /// The aggregate types whose events this projector reads; others are never passed to it.
    fn aggregate_types(&self) -> &'static [&'static str];

    /// Applies `events` (all of this projector's aggregate types, in log order).
    ///
    /// # Errors
    /// A database error or an event that cannot be decoded; the caller rolls back.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&StoredEvent],
    ) -> Result<(), ProjectionError>;
}

/// Applies each projector to the events of its aggregate types, in the given order.
///
/// # Errors
/// The first projector error; nothing after it runs.
pub async fn project_all(
    projectors: &[std::sync::Arc<dyn Projector>],
    conn: &mut PgConnection,
    events: &[StoredEvent],
) -> Result<(), ProjectionError> {
    for projector in projectors {
        let wanted = projector.aggregate_types();
        let relevant: Vec<&StoredEvent> = events
            .iter()
            .filter(|e| wanted.contains(&e.aggregate_type.as_str()))
            .collect();
        if !relevant.is_empty() {
            projector.apply(conn, &relevant).await?;
        }
    }
    Ok(())
}
