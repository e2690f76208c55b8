//! How a command ends when it does not commit, and what it reached when it does.

use std::sync::Arc;

use serde_json::Value;

use cutover_engine::event::StoredEvent;
use cutover_engine::read_source::ReadSources;
use cutover_engine::rows::ProjectionError;

/// How a command ended when it did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate refused the command.
    #[error(transparent)]
    Rejected(E),
    /// The client demanded a version (`If-Match`) that is not the current one.
    #[error("expected version {expected}, but the current version is {actual}")]
    VersionMismatch { expected: i64, actual: i64 },
    /// Other writers kept winning the race for the next sequence number.
    #[error("gave up after {attempts} attempts: other writers kept appending to this aggregate")]
    Conflict { attempts: u32 },
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error(
        "a stored event of {aggregate_type} {aggregate_id} at sequence {sequence} cannot be read"
    )]
    CorruptEvent {
        aggregate_type: String,
        aggregate_id: String,
        sequence: i64,
        #[source]
        source: serde_json::Error,
    },
    /// The idempotency key was used before with another request.
    #[error("this Idempotency-Key was used with a different request")]
    KeyReused,
    /// A bug of the server, not of the request: an event the domain made could not be
    /// serialized.
    #[error("an event could not be serialized")]
    Serialize(#[source] serde_json::Error),
    /// A bug of the server, not of the request: the store met a state its own rules exclude.
    #[error("the event store broke one of its own rules: {0}")]
    Broken(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// A stored event of an older version that no upcaster turns into the current shape.
    #[error(transparent)]
    Upcast(#[from] cutover_engine::upcast::UpcastError),
    /// The projections maintained inline changed (a rebuild swapped, a projection was retired)
    /// after a [`Batch`] began: nothing of it was written, and it is to run again. (A single
    /// command re-runs by itself.)
    #[error("the projections maintained inline changed while the batch ran; nothing was written")]
    InlineChanged,
}

/// A command's transaction did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The transaction this command shared with other commands of its aggregate failed
    /// elsewhere (its commit, or another command's undo); nothing of it was committed.
    #[error(
        "the transaction this command shared with other commands of its aggregate did not \
         commit: {}", .0.why
    )]
    SharedTransaction(GroupFailure),
    /// The transaction this command shared with commands of other aggregates was rolled back
    /// before its commit (another command of it failed): nothing of it was committed, and the
    /// command is to run again alone.
    #[error("the transaction this command shared was rolled back before its commit")]
    RunAgain,
}

/// Why a shared transaction did not commit, as its commands are told.
#[derive(Debug, Clone)]
pub struct GroupFailure {
    pub why: String,
    /// Whether the cause was the database being out of reach (see
    /// [`cutover_runtime::database::is_unreachable`]) rather than a fault of the server.
    pub unreachable: bool,
}

impl GroupFailure {
    pub(super) fn of(e: &sqlx::Error) -> Self {
        Self {
            why: e.to_string(),
            unreachable: cutover_runtime::database::is_unreachable(e),
        }
    }

    pub(super) fn fault(why: &str) -> Self {
        Self {
            why: why.to_owned(),
            unreachable: false,
        }
    }
}

/// What a committed (or accepted no-op) command reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The aggregate's version (the sequence of its last event).
    pub version: i64,
    /// The global position of the aggregate's last event.
    pub position: i64,
    /// The events this command appended; empty when the command changed nothing.
    pub events: Vec<StoredEvent>,
    /// Every domain's read source, as read after the command's locks.
    pub read_sources: ReadSources,
    /// The read-model rows the command's statement wrote, as they are after it: what its
    /// answer is read from. `None` when they are not all known (a projection wrote in more
    /// than one statement, or the command appended nothing): the answer is then read back.
    pub written: Option<Written>,
}

/// Read-model rows a statement wrote (inserted or changed), as they are after it, by table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Written(Arc<[(String, Value)]>);

impl Written {
    /// The rows of `table`, in no order.
    pub fn rows<'a>(&'a self, table: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.0
            .iter()
            .filter(move |(of, _)| of == table)
            .map(|(_, row)| row)
    }

    /// The row of `table` whose columns have the values of `key`, decoded as `T`: `None` when
    /// the statement wrote no such row (or, a bug, one `T` cannot hold: the answer is then read
    /// back, and this logged).
    pub fn find<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        key: &[(&str, Value)],
    ) -> Option<T> {
        let row = self.rows(table).find(|row| {
            key.iter()
                .all(|(column, value)| row.get(column) == Some(value))
        })?;
        T::deserialize(row)
            .map_err(|e| tracing::warn!(%table, error = %e, "a written row does not decode"))
            .ok()
    }

    /// The rows of a statement's `written` column: `[[table, row], …]`.
    pub(super) fn from_json(written: Value) -> Option<Self> {
        let Value::Array(pairs) = written else {
            return None;
        };
        pairs
            .into_iter()
            .map(|pair| match pair {
                Value::Array(mut pair) if pair.len() == 2 => {
                    let row = pair.pop()?;
                    match pair.pop()? {
                        Value::String(table) => Some((table, row)),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(|rows| Self(rows.into()))
    }
}

/// The SQLSTATE of an append refused because its events' domain is followed from the old
/// system (`cutover follow`): its writer is the old application. The append statement checks,
/// so nothing of the command is written.
pub const FOLLOWED_SQLSTATE: &str = "CF409";

/// The database's words when `e` refused a command because its domain is followed.
pub fn followed_refusal(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some(FOLLOWED_SQLSTATE) => {
            Some(db.message().to_owned())
        }
        _ => None,
    }
}
