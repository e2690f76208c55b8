//! The domains. Each module holds an aggregate, its commands, its events and its rules; none of
//! them does IO, so replaying a stream is deterministic and tests need no database.

pub mod batch;
pub mod collection;
pub mod competency;
