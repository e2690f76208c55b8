//! The projectors' common form: a pure fold over one aggregate type's events ([`Fold`]), run
//! as an engine [`Projector`] by [`Folded`], and the helpers their declarations share.

use std::sync::Arc;

use cqrs_es::Aggregate;
use cutover_engine::compare::Comparison;
use cutover_engine::event::StoredEvent;
use cutover_engine::projection::Projector;
use cutover_engine::read_source::{Domain, ReadSource};
use cutover_engine::rows::{Change, ProjectionError, Table};

/// A projector as a pure fold over the events of one aggregate type: its tables, and what each
/// event (already decoded) does to their rows.
pub(crate) trait Fold: Send + Sync + 'static {
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
pub(crate) struct Folded<F>(pub(crate) F);

/// `fold` as the projector the command path and the engine run.
pub(crate) fn inline<F: Fold>(fold: F) -> Arc<dyn Projector> {
    Arc::new(Folded(fold))
}

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
pub(crate) fn collection_id(
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
