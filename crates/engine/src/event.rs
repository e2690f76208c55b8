//! An event as the log holds it: what the command path appends, and what projectors, rebuilds
//! and readers of the log read.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// One event as the log holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Global position: unique, handed out at insert time (not commit time).
    pub position: i64,
    /// Id of the transaction that appended the event (`xid8`, as a number).
    pub transaction_id: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The aggregate's version after this event; starts at 1.
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}
