//! The advisory locks that order writers of the log and readers of it: the append lock every
//! writer holds shared, and one lock per aggregate.

use sha2::{Digest as _, Sha256};

/// The append lock, in SQL: every writer of the log holds it shared for its transaction; a
/// rebuild's swap (and a retirement) holds it exclusively, so that no append is in flight
/// while tables are swapped and the set of inline projections changes.
pub const APPEND_LOCK: &str = "hashtextextended('cutover:appends', 0)";

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
