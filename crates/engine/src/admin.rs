//! What every administrative action shares: who asked for it, and how it may fail.

use uuid::Uuid;

/// An admin action could not be done.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no projection named {0:?}")]
    UnknownProjection(String),
    #[error("no domain named {0:?}; the domains are collections, batches and competencies")]
    UnknownDomain(String),
    #[error("{0}")]
    Refused(String),
    /// The request names something that does not exist (an aggregate with no events).
    #[error("{0}")]
    NotFound(String),
    /// The request breaks a rule of the action.
    #[error("{0}")]
    Invalid(String),
    #[error("rebuild job {0} was cancelled")]
    Cancelled(Uuid),
    #[error("rebuild of {projections} failed: {reason}")]
    RebuildFailed { projections: String, reason: String },
    #[error(transparent)]
    Projection(#[from] crate::rows::ProjectionError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A bug, not a fault of the request: a task of the job ended without its result.
    #[error("{0}")]
    Broken(String),
}

/// Who asks for an action, as the activity history records it.
#[derive(Debug, Clone)]
pub struct Actor(pub String);
