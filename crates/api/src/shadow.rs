//! Shadow reads of the old API's GET routes. Such a route computes its answer from the domain's
//! read source; while the domain is in shadow, a share of those GETs (the domain's fraction,
//! taken evenly, every n-th) computes it a second time from the other model, in the same
//! snapshot, after the client's answer is ready, and compares the two as the client would see
//! them: status and body, but for `read_source`. The client's answer is never changed, and a
//! failure of the second read is only counted.
//!
//! Counts go to `/metrics` at once; they and the mismatches (with both answers) are added to
//! the database's shared counts every [`FLUSH_EVERY`] by a task of their own, on the session
//! connection, so a GET never waits for a write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cutover_core::store::StoredResponse;
use cutover_engine::read_source::{Domain, ReadSource};
use cutover_engine::shadow::{self, Counted, Seen};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::error::ApiError;

/// How often an instance adds its counts to the database's.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Most mismatches an instance holds between two flushes (more are counted, not kept).
const HELD_MISMATCHES: usize = 32;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    domain: &'static str,
    route: &'static str,
}

/// What shadow reads count, for `/metrics`; clones share the counts.
#[derive(Clone, Default)]
pub struct ShadowMetrics {
    /// GETs answered and also computed from the other model, by domain and route.
    pub reads: Family<ShadowLabels, Counter>,
    /// Those whose two answers differed.
    pub mismatches: Family<ShadowLabels, Counter>,
    /// Those whose second read failed (not compared).
    pub errors: Family<ShadowLabels, Counter>,
}

/// A domain's shadow, as a read's snapshot found it: the share of reads to compare, and the
/// window they count in (the last rebuild, repair or retirement of the domain's projections).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub fraction: f64,
    pub since: DateTime<Utc>,
}

/// One instance's shadow reads; cheap to clone.
#[derive(Clone, Default)]
pub struct Shadow {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// GETs seen while a domain was in shadow, for taking every n-th.
    seen: AtomicU64,
    pending: Mutex<Pending>,
    metrics: ShadowMetrics,
}

#[derive(Default)]
struct Pending {
    counted: HashMap<(&'static str, DateTime<Utc>, &'static str), (i64, i64)>,
    seen: Vec<Seen>,
}

/// An answer as a client compares it: its status and body, without `read_source`.
fn as_seen(answer: &Result<StoredResponse, ApiError>) -> Value {
    match answer {
        Ok(stored) => {
            let mut body = stored.body.clone();
            if let Some(fields) = body.as_object_mut() {
                fields.remove("read_source");
            }
            json!({ "status": stored.status, "body": body })
        }
        Err(e) => json!({ "status": e.status().as_u16(), "detail": e.to_string() }),
    }
}

/// A failure that says nothing of the answer (the database, not the model).
fn is_fault(answer: &Result<StoredResponse, ApiError>) -> bool {
    matches!(answer, Err(ApiError::Internal(_) | ApiError::Unavailable))
}

impl Shadow {
    pub fn metrics(&self) -> &ShadowMetrics {
        &self.inner.metrics
    }

    /// Whether this read is one of the `fraction` compared: every n-th, evenly.
    pub fn sample(&self, fraction: f64) -> bool {
        let n = self.inner.seen.fetch_add(1, Ordering::Relaxed) as f64;
        (n * fraction).floor() != ((n + 1.0) * fraction).floor()
    }

    /// Compares the answer `served` from `source` with `other`, from the other model, and counts
    /// the outcome; a mismatch is kept with both answers.
    #[allow(clippy::too_many_arguments)]
    pub fn compare(
        &self,
        domain: Domain,
        sampling: Sampling,
        route: &'static str,
        path: &str,
        source: ReadSource,
        served: &Result<StoredResponse, ApiError>,
        other: &Result<StoredResponse, ApiError>,
    ) {
        let labels = ShadowLabels {
            domain: domain.as_str(),
            route,
        };
        let metrics = &self.inner.metrics;
        if is_fault(served) || is_fault(other) {
            metrics.errors.get_or_create(&labels).inc();
            if let Err(e) = other {
                tracing::debug!(domain = domain.as_str(), route, error = %e, "shadow read failed");
            }
            return;
        }
        let (served, other) = (as_seen(served), as_seen(other));
        let mismatch = served != other;
        metrics.reads.get_or_create(&labels).inc();
        if mismatch {
            metrics.mismatches.get_or_create(&labels).inc();
            tracing::warn!(
                domain = domain.as_str(),
                route,
                path,
                "shadow read: the models answer differently"
            );
        }
        let mut pending = self
            .inner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let counts = pending
            .counted
            .entry((domain.as_str(), sampling.since, route))
            .or_default();
        counts.0 += 1;
        counts.1 += i64::from(mismatch);
        if mismatch && pending.seen.len() < HELD_MISMATCHES {
            pending.seen.push(Seen {
                domain: domain.as_str(),
                since: sampling.since,
                route,
                path: path.to_owned(),
                seen_at: Utc::now(),
                served_source: source.as_str(),
                served,
                other,
            });
        }
    }

    /// Adds what was counted since the last flush to the database's counts; on failure keeps
    /// it for the next.
    async fn flush(&self, session: &PgPool) {
        let taken = std::mem::take(
            &mut *self
                .inner
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if taken.counted.is_empty() {
            return;
        }
        let counted: Vec<Counted> = taken
            .counted
            .iter()
            .map(|(&(domain, since, route), &(reads, mismatches))| Counted {
                domain,
                since,
                route,
                reads,
                mismatches,
            })
            .collect();
        if let Err(e) = shadow::add(session, &counted, &taken.seen).await {
            tracing::warn!(error = %e, "shadow reads: keeping the counts for the next flush");
            let mut pending = self
                .inner
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (key, (reads, mismatches)) in taken.counted {
                let counts = pending.counted.entry(key).or_default();
                counts.0 += reads;
                counts.1 += mismatches;
            }
            let room = HELD_MISMATCHES.saturating_sub(pending.seen.len());
            pending.seen.extend(taken.seen.into_iter().take(room));
        }
    }

    /// Flushes every [`FLUSH_EVERY`] until `shutdown` turns true, then once more.
    pub async fn run(self, session: PgPool, mut shutdown: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(FLUSH_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => self.flush(&session).await,
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
        }
        self.flush(&session).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fraction_takes_that_share_of_reads_evenly() {
        let shadow = Shadow::default();
        let taken = (0..1_000).filter(|_| shadow.sample(0.25)).count();
        assert_eq!(taken, 250);
        let all = Shadow::default();
        assert!((0..10).all(|_| all.sample(1.0)));
    }
}
