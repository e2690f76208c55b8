//! Why following could not start or go on.

use cutover_core::store::CommandError;

use super::pgoutput;

/// Following could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// Something the operator must do first, said with how.
    #[error("{0}")]
    Setup(String),
    #[error("the old database: {0}")]
    Legacy(#[source] sqlx::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Decode(#[from] pgoutput::DecodeError),
    #[error("{what}")]
    Command {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The projections maintained inline changed while a batch ran (a rebuild swapped, a
    /// projection was retired): nothing of it was written, and it runs again.
    #[error("the projections maintained inline changed while a batch of changes ran")]
    InlineChanged,
    /// The domain's following ended while this follower waited (handed over, or dropped).
    #[error("{0} is not followed any more: it was handed over, or its following was dropped")]
    NotFollowed(String),
}

/// A batch that failed at `what`.
pub(super) fn failed<E>(what: &'static str) -> impl FnOnce(CommandError<E>) -> FollowError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |source| match source {
        CommandError::InlineChanged => FollowError::InlineChanged,
        CommandError::Database(e) => FollowError::Database(e),
        source => FollowError::Command {
            what: what.into(),
            source: Box::new(source),
        },
    }
}

impl FollowError {
    /// Whether waiting may mend it: either database out of reach, shutting down or starting
    /// up. Nothing of a batch that failed so was committed, and following resumes where it
    /// stood.
    pub fn is_transient(&self) -> bool {
        match self {
            // The old database refusing a write is no outage to wait out.
            Self::Legacy(e) => {
                cutover_runtime::database::is_unreachable(e)
                    && !cutover_runtime::database::is_read_only(e)
            }
            Self::Database(e) => cutover_runtime::database::is_unreachable(e),
            _ => false,
        }
    }
}

pub(super) fn legacy(e: sqlx::Error) -> FollowError {
    FollowError::Legacy(e)
}
