//! `/metrics` in the Prometheus (OpenMetrics) text format: requests by route and status, their
//! latency, the command path's retries, conflicts, replays and appended events, and, read from
//! the database at each scrape, projection lag, rebuild progress, the feed's held-back events
//! and the pool's use. Also the short history of command and rebuild rates the console draws.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::http::Method;
use chrono::{DateTime, Utc};
use cutover_core::store::EventStore;
use cutover_engine::log;
use cutover_engine::registry::{self, JobState};
use cutover_projections::follow;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::reads::Reads;
use sqlx::PgPool;

/// Label values come from closed sets, so no client can add series: the method is one the
/// router knows or `other`, the route is a matched route template or `unmatched`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

/// The method label: the methods the routes answer, or `other`.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
    KNOWN
        .into_iter()
        .find(|known| *known == method.as_str())
        .unwrap_or("other")
}

/// The route label of a request that matched no route (whatever its path).
const UNMATCHED: &str = "unmatched";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainLabels {
    domain: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LagLabels {
    domain: String,
    /// A bucket's upper bound, in seconds (`+Inf`: every change).
    le: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectionLabels {
    projection: String,
}

/// One series at most: the current blocker, cleared at every scrape.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BlockerLabels {
    pid: i32,
    application: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

type Rate = Gauge<f64, AtomicU64>;

/// Every metric of one server; clones share them (one `Arc`: handlers clone it per request).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram>,
    refused: Family<RefusalLabels, Counter>,
    /// Commands answered (any status), for the console's rate chart.
    commands: Counter,
    lag: Family<ProjectionLabels, Gauge>,
    rebuild_done: Family<ProjectionLabels, Gauge>,
    rebuild_total: Family<ProjectionLabels, Gauge>,
    rebuild_rate: Family<ProjectionLabels, Rate>,
    rebuild_interrupted: Family<ProjectionLabels, Gauge>,
    follow_applied: Family<DomainLabels, Gauge>,
    follow_refused: Family<DomainLabels, Gauge>,
    follow_lag_bytes: Family<DomainLabels, Gauge>,
    follow_stopped: Family<DomainLabels, Gauge>,
    follow_lag: Family<LagLabels, Gauge>,
    held_back: Gauge,
    blocker: Family<BlockerLabels, Rate>,
    pool: Family<PoolLabels, Gauge>,
    pool_max: Gauge,
    history: Mutex<VecDeque<Sample>>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s.
    Histogram::new(exponential_buckets(0.000_5, 2.0, 16))
}

impl Metrics {
    /// The metrics of a server on `store` reading through `reads`, whose counters they
    /// include.
    pub fn new(store: &EventStore, reads: &Reads) -> Self {
        let mut registry = Registry::with_prefix("cutover");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            requests.clone(),
        );
        let durations =
            Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "http_request_duration_seconds",
            "Time to answer a request (to its response head), by method and route",
            durations.clone(),
        );
        let refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "http_refused_before_routing",
            "Connections the HTTP layer ended before a request reached a route, by reason: \
             malformed (answered 400), head_too_large (414 or 431), header_timeout (no \
             complete request header in time, idle kept-alive connections included)",
            refused.clone(),
        );
        let counts = store.metrics();
        for (name, help, counter) in [
            (
                "command_retries",
                "Commands re-run after losing an append race",
                &counts.retries,
            ),
            (
                "command_conflicts",
                "Commands that lost every append attempt and were answered 409",
                &counts.conflicts,
            ),
            (
                "idempotent_replays",
                "Commands answered from a stored Idempotency-Key response without running",
                &counts.replays,
            ),
            (
                "events_appended",
                "Events committed to the log by this server",
                &counts.events_appended,
            ),
            (
                "shared_transactions",
                "Transactions shared by commands on different aggregates that committed",
                &counts.shared_transactions,
            ),
            (
                "shared_commands",
                "Commands committed in transactions shared with commands on other aggregates",
                &counts.shared_commands,
            ),
            (
                "shared_rollbacks",
                "Shared transactions rolled back before their commit; their commands ran again alone",
                &counts.shared_rollbacks,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        let lag = Family::<ProjectionLabels, Gauge>::default();
        registry.register(
            "projection_lag_events",
            "Events of a projection's aggregate types its tables do not reflect yet",
            lag.clone(),
        );
        let rebuild_done = Family::<ProjectionLabels, Gauge>::default();
        registry.register(
            "rebuild_events_done",
            "Events the running rebuild of a projection has applied",
            rebuild_done.clone(),
        );
        let rebuild_total = Family::<ProjectionLabels, Gauge>::default();
        registry.register(
            "rebuild_events_total",
            "Events the running rebuild of a projection has to apply (grows with live appends)",
            rebuild_total.clone(),
        );
        let rebuild_rate = Family::<ProjectionLabels, Rate>::default();
        registry.register(
            "rebuild_events_per_second",
            "Events per second of the running rebuild of a projection",
            rebuild_rate.clone(),
        );
        let rebuild_interrupted = Family::<ProjectionLabels, Gauge>::default();
        registry.register(
            "rebuild_interrupted",
            "1 while a projection's latest rebuild is interrupted (recorded running, run by no \
             process: run it again to resume it), else 0",
            rebuild_interrupted.clone(),
        );
        let [follow_applied, follow_refused, follow_lag_bytes, follow_stopped] = [
            (
                "follow_changes_applied",
                "Changes of the old database applied to a followed domain (cutover follow), \
                 already reflected ones included",
            ),
            (
                "follow_changes_refused",
                "Changes of the old database a followed domain refused (kept in follow_refusals)",
            ),
            (
                "follow_lag_bytes",
                "WAL of the old database a followed domain's slot had not confirmed at the \
                 follower's last look",
            ),
            (
                "follow_stopped",
                "1 while no follower has looked at the old database for a minute (its slot \
                 holds WAL back there), else 0",
            ),
        ]
        .map(|(name, help)| {
            let family = Family::<DomainLabels, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        });
        let follow_lag = Family::<LagLabels, Gauge>::default();
        registry.register(
            "follow_lag_changes",
            "Changes streamed from the old database and applied to a followed domain within le \
             seconds of their old commit (cumulative, as a histogram's buckets)",
            follow_lag.clone(),
        );
        let held_back = Gauge::default();
        registry.register(
            "feed_held_back",
            "Committed events the feed holds back behind an older running transaction",
            held_back.clone(),
        );
        let blocker = Family::<BlockerLabels, Rate>::default();
        registry.register(
            "log_horizon_blocker_age_seconds",
            "How long the transaction that holds the log's horizon back has been open, by its \
             pid and application (no series when none does)",
            blocker.clone(),
        );
        let pool = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Database connections of this server, idle or in use",
            pool.clone(),
        );
        let pool_max = Gauge::default();
        registry.register(
            "db_pool_max_connections",
            "Most database connections this server opens",
            pool_max.clone(),
        );
        let read = reads.metrics();
        registry.register(
            "reads",
            "GETs of the read models and of the event feed, by the server that answered them \
             (primary or replica)",
            read.served.clone(),
        );
        registry.register(
            "reads_waited_out",
            "Reads with Cutover-Min-Position that no replica showed in time, answered by the \
             primary",
            read.waited_out.clone(),
        );
        registry.register(
            "replica_in_rotation",
            "1 while a replica (by its place in --read-database-url) serves reads, else 0",
            read.in_rotation.clone(),
        );
        registry.register(
            "replica_lag_seconds",
            "How far behind the primary a replica's replay was at its last check",
            read.lag.clone(),
        );
        let shadow = reads.shadow().metrics();
        registry.register(
            "shadow_reads",
            "GETs of a domain in shadow also computed from the other model and compared, by \
             domain and route",
            shadow.reads.clone(),
        );
        registry.register(
            "shadow_mismatches",
            "Shadow reads whose two answers differed, by domain and route",
            shadow.mismatches.clone(),
        );
        registry.register(
            "shadow_errors",
            "Shadow reads whose second read failed and was not compared, by domain and route",
            shadow.errors.clone(),
        );
        let inner = Inner {
            registry,
            requests,
            durations,
            refused,
            commands: Counter::default(),
            lag,
            rebuild_done,
            rebuild_total,
            rebuild_rate,
            rebuild_interrupted,
            follow_applied,
            follow_refused,
            follow_lag_bytes,
            follow_stopped,
            follow_lag,
            held_back,
            blocker,
            pool,
            pool_max,
            history: Mutex::default(),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Counts a connection the HTTP layer ended before routing, for `reason`.
    pub fn refused_before_routing(&self, reason: &'static str) {
        self.inner
            .refused
            .get_or_create(&RefusalLabels { reason })
            .inc();
    }

    /// Reads what lives in the database into the gauges (on `session`, a direct connection),
    /// and the use of `store`'s pool.
    /// The exposition a scrape answers with `accept`: its content type and text, the gauges
    /// read from the database first. OpenMetrics, or the Prometheus text format (0.0.4) when
    /// the client asks for `text/plain` and not for OpenMetrics.
    pub async fn exposition(
        &self,
        session: &PgPool,
        store: &EventStore,
        accept: &str,
    ) -> Result<(&'static str, String), ApiError> {
        self.refresh(session, store).await?;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("encoding the metrics: {e}")))?;
        Ok(if wants_prometheus_text(accept) {
            (PROMETHEUS_TEXT, prometheus_text(&text))
        } else {
            (OPENMETRICS, text)
        })
    }

    /// The console's history, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.inner
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    async fn refresh(&self, session: &PgPool, store: &EventStore) -> Result<(), ApiError> {
        let pool = session;
        self.inner.lag.clear();
        self.inner.rebuild_done.clear();
        self.inner.rebuild_total.clear();
        self.inner.rebuild_rate.clear();
        self.inner.rebuild_interrupted.clear();
        for projection in registry::projections(pool).await? {
            let status = registry::progress(pool, store.projectors(), &projection.name).await?;
            let labels = ProjectionLabels {
                projection: projection.name,
            };
            if let Some(lag) = status.lag {
                self.inner.lag.get_or_create(&labels).set(lag);
            }
            let job = status.latest_job;
            let interrupted = job
                .as_ref()
                .is_some_and(|job| job.status == JobState::Interrupted);
            self.inner
                .rebuild_interrupted
                .get_or_create(&labels)
                .set(i64::from(interrupted));
            if let Some(job) = job.filter(|_| status.rebuild_running) {
                self.inner
                    .rebuild_done
                    .get_or_create(&labels)
                    .set(job.events_done);
                self.inner
                    .rebuild_total
                    .get_or_create(&labels)
                    .set(job.events_total);
                self.inner
                    .rebuild_rate
                    .get_or_create(&labels)
                    .set(job.events_per_second);
            }
        }
        let now = chrono::Utc::now();
        for family in [
            &self.inner.follow_applied,
            &self.inner.follow_refused,
            &self.inner.follow_lag_bytes,
            &self.inner.follow_stopped,
        ] {
            family.clear();
        }
        self.inner.follow_lag.clear();
        for followed in follow::follows(pool).await? {
            let mut within = 0;
            let bounds = follow::LAG_BUCKETS.iter().map(f64::to_string);
            for (le, count) in bounds
                .chain(["+Inf".to_owned()])
                .zip(followed.lag_histogram.iter().chain(std::iter::repeat(&0)))
            {
                within += count;
                let labels = LagLabels {
                    domain: followed.domain.clone(),
                    le,
                };
                self.inner.follow_lag.get_or_create(&labels).set(within);
            }
            let labels = DomainLabels {
                domain: followed.domain.clone(),
            };
            for (family, value) in [
                (&self.inner.follow_applied, followed.changes_applied),
                (&self.inner.follow_refused, followed.changes_refused),
                (&self.inner.follow_lag_bytes, followed.lag_bytes),
                (&self.inner.follow_stopped, i64::from(followed.stopped(now))),
            ] {
                family.get_or_create(&labels).set(value);
            }
        }
        self.inner.held_back.set(log::held_back_count(pool).await?);
        self.inner.blocker.clear();
        if let Some(b) = log::horizon_blocker(pool).await? {
            self.inner
                .blocker
                .get_or_create(&BlockerLabels {
                    pid: b.pid,
                    application: b.application,
                })
                .set(b.age_seconds);
        }
        let pool = store.pool();
        let size = i64::from(pool.size());
        let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
        self.inner
            .pool
            .get_or_create(&PoolLabels { state: "idle" })
            .set(idle);
        self.inner
            .pool
            .get_or_create(&PoolLabels { state: "in_use" })
            .set((size - idle).max(0));
        self.inner
            .pool_max
            .set(i64::from(pool.options().get_max_connections()));
        Ok(())
    }

    /// Counts and times one request by the route it matched (`None`: it matched none).
    pub fn record(&self, method: &Method, route: Option<&str>, status: u16, took: Duration) {
        let method = method_label(method);
        let route = route.unwrap_or(UNMATCHED).to_owned();
        if is_command(method, &route) {
            self.inner.commands.inc();
        }
        self.inner
            .durations
            .get_or_create(&RouteLabels {
                method,
                route: route.clone(),
            })
            .observe(took.as_secs_f64());
        self.inner
            .requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status,
            })
            .inc();
    }
}

/// A request that changes the event log: any non-GET outside the admin and console routes.
fn is_command(method: &str, route: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "OPTIONS") && !route.starts_with("/admin")
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for the Prometheus text format rather than OpenMetrics.
fn wants_prometheus_text(accept: &str) -> bool {
    let accept = accept.to_ascii_lowercase();
    accept.contains("text/plain") && !accept.contains("application/openmetrics-text")
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition: a counter family is named
/// after its `_total` samples, and the `# UNIT` and `# EOF` lines go.
fn prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// One point of the console's chart.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Sample {
    pub at: DateTime<Utc>,
    /// Commands per second this server answered since the previous sample.
    pub commands_per_second: f64,
    /// Events per second of the rebuilds running (on any instance).
    pub rebuild_events_per_second: f64,
}

/// How often [`sample`] takes a point, and how many it keeps (ten minutes).
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
const SAMPLES_KEPT: usize = 300;

/// Takes a point of the command and rebuild rates every [`SAMPLE_EVERY`] until `stopping`.
pub async fn sample(metrics: Metrics, session: PgPool, mut stopping: watch::Receiver<bool>) {
    let mut last = (Instant::now(), metrics.inner.commands.get());
    loop {
        tokio::select! {
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = stopping.changed() => return,
        }
        let rebuild: Result<f64, sqlx::Error> = async {
            let jobs = registry::unfinished_jobs(&session).await?;
            Ok(jobs
                .iter()
                .filter(|job| job.status == JobState::RUNNING)
                .fold(0.0, |sum, job| sum + job.events_per_second))
        }
        .await;
        let rebuild_events_per_second = rebuild.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the running rebuilds");
            0.0
        });
        let now = (Instant::now(), metrics.inner.commands.get());
        let seconds = now.0.duration_since(last.0).as_secs_f64();
        let point = Sample {
            at: Utc::now(),
            commands_per_second: (now.1 - last.1) as f64 / seconds.max(f64::EPSILON),
            rebuild_events_per_second,
        };
        last = now;
        let mut history = metrics
            .inner
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if history.len() == SAMPLES_KEPT {
            history.pop_front();
        }
        history.push_back(point);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_family_takes_the_name_of_its_total_samples_in_the_prometheus_format() {
        let openmetrics = "# HELP cutover_x Things.\n# TYPE cutover_x counter\n\
                           cutover_x_total 3\n# HELP cutover_g A gauge.\n# TYPE cutover_g gauge\n\
                           # UNIT cutover_g seconds\ncutover_g 1\n# EOF\n";

        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP cutover_x_total Things.\n# TYPE cutover_x_total counter\n\
             cutover_x_total 3\n# HELP cutover_g A gauge.\n# TYPE cutover_g gauge\ncutover_g 1\n"
        );
    }

    #[test]
    fn openmetrics_is_the_default_and_wins_when_both_are_acceptable() {
        assert!(!wants_prometheus_text(""));
        assert!(!wants_prometheus_text("*/*"));
        assert!(wants_prometheus_text("text/plain;version=0.0.4"));
        assert!(!wants_prometheus_text(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        ));
    }
}
