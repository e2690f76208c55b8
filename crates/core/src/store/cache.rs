//! What the process remembers between commands: aggregates as of their last commit, and the
//! projections the registry maintains inline.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use cqrs_es::Aggregate;
use sqlx::PgConnection;

/// Aggregates as of their last committed command in this process, so that a command on a long
/// stream (a batch with thousands of completions) reads only the events it has not seen.
///
/// An entry is taken out while a command runs (under the aggregate's advisory lock, so no
/// other command of this aggregate runs anywhere) and put back only after a commit; the
/// events appended meanwhile by anyone else are read from the log on top of it. An entry is
/// therefore always the exact state of some prefix of the stream.
#[derive(Default)]
pub(super) struct AggregateCache {
    pub(super) entries: Mutex<HashMap<(&'static str, String), CachedAggregate>>,
}

pub(super) struct CachedAggregate {
    pub(super) version: i64,
    pub(super) position: i64,
    pub(super) state: Box<dyn Any + Send>,
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
        let names: Vec<String> = sqlx::query_scalar(INLINE).fetch_one(conn).await?;
        let names: Arc<[String]> = names.into();
        *self.names.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&names));
        Ok(names)
    }

    pub(super) fn forget(&self) {
        *self.names.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// Most aggregates kept in the cache; past that an arbitrary one is dropped.
pub(super) const CACHE_CAPACITY: usize = 1_000;

impl AggregateCache {
    pub(super) fn take<A: Aggregate + 'static>(&self, aggregate_id: &str) -> Option<(A, i64, i64)> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.remove(&(A::TYPE, aggregate_id.to_owned()))?;
        let state = entry.state.downcast::<A>().ok()?;
        Some((*state, entry.version, entry.position))
    }

    pub(super) fn put_any(
        &self,
        key: &(&'static str, String),
        state: Box<dyn Any + Send>,
        version: i64,
        position: i64,
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CACHE_CAPACITY {
            if let Some(victim) = entries.keys().next().cloned() {
                entries.remove(&victim);
            }
        }
        entries.insert(
            key.clone(),
            CachedAggregate {
                version,
                position,
                state,
            },
        );
    }
}

/// The names of the projections maintained inline, in name order.
pub(super) const INLINE: &str =
    "SELECT coalesce(array_agg(name ORDER BY name), '{}') FROM projections WHERE inline_active";
