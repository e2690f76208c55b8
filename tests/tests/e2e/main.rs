//! End-to-end tests: real Postgres, the real router over real HTTP.

// A failed step in a test (and in its helpers) should panic with the error it met.
#![allow(clippy::unwrap_used)]

mod access;
mod answers;
mod batches;
mod cli_output;
mod collections;
mod competencies;
mod declarations;
mod event_log;
mod event_versions;
mod failover;
mod faults;
mod feed;
mod follow;
mod guarantees;
mod health;
mod idempotency;
mod input;
mod legacy_contracts;
mod migration;
mod observability;
mod openapi;
mod repair;
mod replay;
mod replicas;
mod resume;
mod slow_clients;
mod switch_gate;
