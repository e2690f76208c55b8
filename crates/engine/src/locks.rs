//! The locks that order writers of the log and readers of it: the append lock every writer in
//! a transaction holds shared, one lock per aggregate, and `events` itself, which a command
//! alone in one statement locks as it is bound.

use sha2::{Digest as _, Sha256};

/// The append lock's key, in SQL (see [`APPEND_LOCK`]).
macro_rules! append_lock {
    () => {
        "hashtextextended('cutover:appends', 0)"
    };
}

/// Locks `events` against writers of rows until the transaction ends (readers go on): a command
/// alone in one statement holds a row writer's lock on it from the moment it is bound, so this
/// waits for those in flight, and those sent meanwhile wait for it before their snapshot.
macro_rules! lock_events {
    () => {
        "LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE"
    };
}

/// The append lock, in SQL: every writer of the log in a transaction holds it shared; a
/// rebuild's swap (and a retirement) holds it exclusively, so that no append is in flight
/// while tables are swapped and the set of inline projections changes (see [`HOLD_APPENDS`]).
pub const APPEND_LOCK: &str = append_lock!();

/// See [`lock_events`].
pub const LOCK_EVENTS: &str = lock_events!();

/// Holds back every append until the transaction it runs in ends, waiting for those in
/// flight (two statements: run unprepared, as a `&str`): the append lock exclusively (commands in
/// a transaction hold it shared), and `events` against row writers (commands alone in one
/// statement, see [`LOCK_EVENTS`]). In that order, as a command in a transaction takes the
/// append lock before it writes `events`.
pub const HOLD_APPENDS: &str = concat!(
    "SELECT pg_advisory_xact_lock(",
    append_lock!(),
    "); ",
    lock_events!()
);

/// The advisory-lock key of an aggregate: the first 8 bytes of SHA-256 of `type/id`. Every
/// command on the aggregate holds it for its transaction (and so does a repair of it).
pub fn aggregate_lock_key(aggregate_type: &str, aggregate_id: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(aggregate_type.as_bytes())
        .chain_update(b"/")
        .chain_update(aggregate_id.as_bytes())
        .finalize();
    let mut key = [0_u8; 8];
    key.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(key)
}
