//! Cutover's core: the domain (aggregates, commands, events — no IO) and the Postgres event
//! store that appends a command's events and runs the inline projectors in one transaction.
//!
//! Everything that talks HTTP lives in `cutover-api`; the read-model engine (the writer the
//! command path uses, rebuild, verify, repair) in `cutover-engine`, which knows no domain; the
//! projectors in `cutover-projections`. The API and the projectors depend on this crate, never
//! the other way round.

pub mod auth;
pub mod database;
pub mod domain;
pub mod import;
pub mod local_postgres;
pub mod servers;
pub mod signals;
pub mod store;
pub mod telemetry;

/// Every program of the workspace allocates with mimalloc: a rebuild's folds and a command's
/// rows make and drop many small maps and strings, and glibc's allocator spent a quarter of a
/// rebuild's CPU on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
