//! Cutover's core: the domain (aggregates, commands, events — no IO) and the Postgres event
//! store that appends a command's events and runs the inline projectors in one transaction.
//!
//! Everything that talks HTTP lives in `cutover-api`; the read-model engine (the writer the
//! command path uses, rebuild, verify, repair) in `cutover-engine`, which knows no domain; the
//! projectors in `cutover-projections`; reaching Postgres, tokens, signals and logs in
//! `cutover-runtime`. The API and the projectors depend on this crate, never
//! the other way round.

pub mod domain;
pub mod import;
pub mod store;
