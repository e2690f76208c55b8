//! What every Cutover program needs to run, whatever it does: reaching Postgres (the server of
//! `DATABASE_URL`, the primary among several servers, or a private cluster started from the
//! machine's Postgres binaries when no URL is given), the schema's migrations, the bearer tokens
//! and their scopes, the signals that stop a program, its logs and its allocator.
//!
//! The domain and the event store (`cutover-core`), the read-model engine (`cutover-engine`)
//! and the programs build on it; it knows none of them.

pub mod auth;
pub mod database;
pub mod local_postgres;
pub mod servers;
pub mod signals;
pub mod telemetry;

/// Every program of the workspace allocates with mimalloc: a rebuild's folds and a command's
/// rows make and drop many small maps and strings, and glibc's allocator spent a quarter of a
/// rebuild's CPU on them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
