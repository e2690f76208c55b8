//! What the process remembers between commands: aggregates as of their last commit, and the
//! projections the registry maintains inline.

use std::any::Any;
use std::sync::{Arc, Mutex, PoisonError};

use cqrs_es::Aggregate;
use hashlink::LinkedHashMap;
use sqlx::PgConnection;

/// Aggregates as of their last committed command in this process, so that a command on a long
/// stream (a batch with thousands of completions) reads only the events it has not seen.
///
/// An entry is taken out while a command runs (under the aggregate's advisory lock, so no
/// other command of this aggregate runs anywhere) and put back only after a commit; the
/// events appended meanwhile by anyone else are read from the log on top of it. An entry is
/// therefore always the exact state of some prefix of the stream.
///
/// The cache holds at most [`CACHE_BYTES`] of aggregates, weighed by the length of their JSON.
#[derive(Default)]
pub(super) struct AggregateCache {
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    /// In the order they were put: the first is the one used least recently.
    kept: LinkedHashMap<(&'static str, String), CachedAggregate>,
    /// The weights of `kept`, summed.
    weight: usize,
}

struct CachedAggregate {
    version: i64,
    position: i64,
    state: Box<dyn Kept>,
    weight: usize,
}

/// An aggregate kept between commands, whatever its type.
pub(super) trait Kept: Any + Send {
    /// About how much memory it holds: the length of its JSON.
    fn weight(&self) -> usize;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<A: Aggregate + 'static> Kept for A {
    fn weight(&self) -> usize {
        let mut counted = Counted(0);
        // Counting cannot fail; an aggregate that does not serialize weighs what it wrote.
        let _ = serde_json::to_writer(&mut counted, self);
        counted.0
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// A writer that only counts bytes.
struct Counted(usize);

impl std::io::Write for Counted {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The projections maintained inline, as this process last read them from the registry. The
/// append statement checks them (under the append lock, which a swap or a retirement holds
/// exclusively), so a stale set fails the statement instead of writing too few read models.
#[derive(Default)]
pub(super) struct InlineProjections {
    pub(super) names: Mutex<Option<Arc<[String]>>>,
}

impl InlineProjections {
    /// The names, read in `conn`'s transaction when not known.
    pub(super) async fn current(
        &self,
        conn: &mut PgConnection,
    ) -> Result<Arc<[String]>, sqlx::Error> {
        if let Some(names) = self
            .names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Ok(names);
        }
        let names: Vec<String> = sqlx::query_scalar!(
            r#"SELECT coalesce(array_agg(name ORDER BY name), '{}') AS "names!"
                 FROM projections WHERE inline_active"#
        )
        .fetch_one(conn)
        .await?;
        let names: Arc<[String]> = names.into();
        *self.names.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&names));
        Ok(names)
    }

    pub(super) fn forget(&self) {
        *self.names.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Most bytes of aggregates (as JSON) kept in the cache; past that the ones used least recently
/// are dropped, and an aggregate heavier than an eighth of it is not kept.
pub(super) const CACHE_BYTES: usize = 16 << 20;

impl AggregateCache {
    pub(super) fn take<A: Aggregate + 'static>(&self, aggregate_id: &str) -> Option<(A, i64, i64)> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.kept.remove(&(A::TYPE, aggregate_id.to_owned()))?;
        entries.weight -= entry.weight;
        let state = entry.state.into_any().downcast::<A>().ok()?;
        Some((*state, entry.version, entry.position))
    }

    pub(super) fn put(
        &self,
        key: &(&'static str, String),
        state: Box<dyn Kept>,
        version: i64,
        position: i64,
    ) {
        // Weighed outside the lock.
        let weight = state.weight();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(replaced) = entries.kept.remove(key) {
            entries.weight -= replaced.weight;
        }
        if weight > CACHE_BYTES / 8 {
            return;
        }
        while entries.weight + weight > CACHE_BYTES {
            let Some((_, dropped)) = entries.kept.pop_front() else {
                break;
            };
            entries.weight -= dropped.weight;
        }
        entries.weight += weight;
        entries.kept.insert(
            key.clone(),
            CachedAggregate {
                version,
                position,
                state,
                weight,
            },
        );
    }
}
