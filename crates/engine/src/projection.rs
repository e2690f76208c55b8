//! The projector seam: a unit that owns some read-model tables and says what stored events do
//! to their rows. The command path writes those changes inline, in the statement that appends
//! the events; a rebuild writes the same changes over the whole log.

use crate::compare::Comparison;
use crate::event::StoredEvent;
use crate::rows::{Change, Changes, ProjectionError, Table};

/// Builds read-model rows from events: a pure fold, with no IO.
///
/// A projector declares its tables ([`Table`]) and says, for each event, what it does to their
/// rows ([`Change`]); the writer ([`Changes`]) folds the changes per row and writes them. The
/// same events always give the same changes, so the command path (inline, in the transaction
/// that appends the events) and a rebuild (over the whole log) build the same rows.
pub trait Projector: Send + Sync + 'static {
    /// The projection's stable name, as the registry and the CLI know it.
    fn name(&self) -> &'static str;

    /// The tables it owns, declared once.
    fn tables(&self) -> &'static [&'static Table];

    /// The aggregate types whose events this projector reads; others are never passed to it.
    fn aggregate_types(&self) -> &'static [&'static str];

    /// The domain whose read model it is, and the shape of its tables.
    fn domain(&self) -> crate::read_source::Domain;
    fn shape(&self) -> crate::read_source::ReadSource;

    /// What `event` (one of this projector's aggregate types) does to the rows.
    ///
    /// # Errors
    /// The event cannot be decoded, or does not fit the projection.
    fn project(&self, event: &StoredEvent) -> Result<Vec<Change>, ProjectionError>;

    /// What a repair runs after replaying some aggregates' events, with `$1` their ids
    /// (`text[]`): statements that recompute the rows of its tables that sum over many
    /// aggregates (those whose [`Table::aggregate`] is `None`).
    fn settle(&self) -> &'static [&'static str] {
        &[]
    }

    /// What its tables share with its domain's other shape: verification compares each (see
    /// [`crate::compare`]). One projector of a domain declares each comparison.
    fn compared(&self) -> &'static [Comparison] {
        &[]
    }
}

/// The names of `projector`'s tables.
pub fn table_names(projector: &dyn Projector) -> impl Iterator<Item = &'static str> {
    projector.tables().iter().map(|t| t.name)
}

/// Every projector's changes for `events` (in log order), each projector reading only the
/// events of its aggregate types.
///
/// # Errors
/// The first projector error.
pub fn project_all(
    projectors: &[std::sync::Arc<dyn Projector>],
    events: &[StoredEvent],
) -> Result<Changes, ProjectionError> {
    let mut changes = Changes::default();
    project_into(projectors, events, &mut changes)?;
    Ok(changes)
}

/// [`project_all`] into changes gathered so far.
///
/// # Errors
/// The first projector error.
pub fn project_into(
    projectors: &[std::sync::Arc<dyn Projector>],
    events: &[StoredEvent],
    changes: &mut Changes,
) -> Result<(), ProjectionError> {
    for event in events {
        for projector in projectors {
            if projector
                .aggregate_types()
                .contains(&event.aggregate_type.as_str())
            {
                for change in projector.project(event)? {
                    change.check().map_err(|detail| ProjectionError::Shape {
                        projector: projector.name(),
                        detail,
                    })?;
                    changes.push(projector.name(), change);
                }
            }
        }
    }
    Ok(())
}
