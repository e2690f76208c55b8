//! Where a read is served: a streaming replica when one is configured, in rotation and far
//! enough along, else the primary.
//!
//! Every GET of the read models and of the event feed opens a [`Snapshot`] through [`Reading`].
//! Its first query, on the server chosen, reads what the answer needs before the rows: the
//! domain's read source, the highest log position the server shows (the answer's
//! `Cutover-Position` header), and, when the client sent `Cutover-Min-Position: N`, whether the
//! server shows the event at position N. A replica that does not yet show it is asked again
//! until `--replica-wait-ms` has passed; then the read goes to the primary, which shows every
//! committed event, so a client always reads its own writes.
//!
//! A check task looks at every replica a few times a second: one that does not answer, that
//! is no longer in recovery (promoted), or whose replay is more than `--replica-max-lag-ms`
//! behind the primary leaves the rotation, and returns when it is well again. The lag is
//! measured in WAL: the primary's WAL position is sampled at each check, and a replica is as
//! far behind as the newest sample it has replayed is old.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use cutover_engine::read_source::{self, Domain, ReadSource};
use cutover_runtime::database::{self, Route};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres, Row as _, Transaction};
use tokio::sync::watch;

use crate::answer::{Answer, Respond};
use crate::bounds::bounds;
use crate::error::ApiError;
use crate::shadow::{Sampling, Shadow};

/// The log position a command reached, or the highest one the server that answered a read
/// shows.
pub const POSITION: HeaderName = HeaderName::from_static("cutover-position");
/// A read answered only from a server that shows the event at this position.
const MIN_POSITION: HeaderName = HeaderName::from_static("cutover-min-position");

/// How often every replica is checked.
const CHECK_EVERY: Duration = Duration::from_millis(200);
/// How long a replica's check (or a read's connection to it) may take before it counts as
/// down.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a replica is asked again whether it shows a client's position.
const WAIT_STEP: Duration = Duration::from_millis(5);

/// The replicas' options of the server.
#[derive(Debug, Clone, clap::Args)]
pub struct ReadArgs {
    /// Streaming replicas (hot standbys) of the primary, comma-separated: GETs of the read
    /// models and of the event feed are served by them in turn. Commands, idempotency keys,
    /// rebuilds and the admin routes stay on the primary.
    #[arg(
        long = "read-database-url",
        env = "CUTOVER_READ_DATABASE_URL",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub urls: Vec<String>,

    /// A replica whose replay is further behind the primary than this leaves the rotation
    /// until it catches up.
    #[arg(long, env = "CUTOVER_REPLICA_MAX_LAG_MS", default_value_t = 5_000)]
    pub replica_max_lag_ms: u64,

    /// How long a read with `Cutover-Min-Position` waits for a replica to show that position
    /// before it is served by the primary.
    #[arg(long, env = "CUTOVER_REPLICA_WAIT_MS", default_value_t = 1_000)]
    pub replica_wait_ms: u64,
}

/// A server reads can be served by.
#[derive(Clone)]
struct Target {
    pool: PgPool,
    route: Route,
}

impl Target {
    /// A connection for one read: through a transaction pooler, a read-only transaction (which
    /// is rolled back when dropped), so that its statements stay on one server connection.
    async fn connect(&self) -> Result<Conn, sqlx::Error> {
        Ok(match self.route {
            Route::Direct => Conn::Direct(self.pool.acquire().await?),
            Route::Pooled { .. } => {
                // In a task of its own: a `BEGIN` cancelled while it waits (the client hung
                // up) would leave sqlx believing the connection is not in a transaction, and
                // return it to the pool inside one.
                let pool = self.pool.clone();
                let begin = format!("BEGIN READ ONLY{}", self.route.transaction_settings());
                let tx = tokio::spawn(async move { pool.begin_with(begin).await })
                    .await
                    .map_err(|e| sqlx::Error::Io(std::io::Error::other(e)))??;
                Conn::Pooled(tx)
            }
        })
    }
}

enum Conn {
    Direct(PoolConnection<Postgres>),
    Pooled(Transaction<'static, Postgres>),
}

impl std::ops::Deref for Conn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        match self {
            Self::Direct(conn) => conn,
            Self::Pooled(tx) => tx,
        }
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            Self::Direct(conn) => conn,
            Self::Pooled(tx) => tx,
        }
    }
}

/// The highest log position the server a request read shows (-1 until a snapshot is opened),
/// which [`position_header`] sends as `Cutover-Position`.
#[derive(Clone)]
struct Seen(Arc<AtomicI64>);

/// Sends, on the answer of every request that opened a [`Snapshot`] (errors included: a 404
/// from a replica says how far it was), the position that server showed as `Cutover-Position`.
pub async fn position_header(mut request: Request, next: Next) -> Response {
    let seen = Seen(Arc::new(AtomicI64::new(-1)));
    request.extensions_mut().insert(seen.clone());
    let mut response = next.run(request).await;
    let position = seen.0.load(Ordering::Relaxed);
    if position >= 0 {
        response
            .headers_mut()
            .insert(POSITION, HeaderValue::from(position));
    }
    response
}

/// One replica and what its last check found.
struct Replica {
    /// Its place in `--read-database-url`, from 0: its label in the metrics and logs.
    name: String,
    target: Target,
    /// One connection of its own for the checks, so that reads filling `target`'s pool do not
    /// make a busy replica look down.
    checks: PgPool,
    in_rotation: AtomicBool,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServedLabels {
    served_by: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    replica: String,
}

/// What the reads count, for `/metrics`; clones share the counts.
#[derive(Clone, Default)]
pub struct ReadMetrics {
    /// Reads by the server that answered them (`primary` or `replica`).
    pub served: Family<ServedLabels, Counter>,
    /// Reads with `Cutover-Min-Position` that no replica could answer in time.
    pub waited_out: Counter,
    /// 1 while a replica is in the rotation, else 0.
    pub in_rotation: Family<ReplicaLabels, Gauge>,
    /// How far behind the primary a replica's replay was at its last check, in seconds.
    pub lag: Family<ReplicaLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

/// The servers reads go to; cheap to clone.
#[derive(Clone)]
pub struct Reads {
    inner: Arc<Inner>,
}

struct Inner {
    primary: Target,
    /// A direct connection to the primary, for the checks.
    session: PgPool,
    replicas: Vec<Replica>,
    next: AtomicUsize,
    wait: Duration,
    max_lag: Duration,
    metrics: ReadMetrics,
    shadow: Shadow,
}

impl Reads {
    /// Opens the replicas of `args` (reached by `route`, as the primary's `pool` is) and
    /// starts checking them; `session` is a direct connection to the primary. The checks end
    /// when `shutdown` turns true.
    ///
    /// # Errors
    /// A malformed replica URL. (A replica that does not answer yet is only out of rotation.)
    pub fn open(
        pool: PgPool,
        route: Route,
        session: PgPool,
        args: &ReadArgs,
        database: &database::DatabaseArgs,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, database::DatabaseError> {
        let mut replicas = Vec::new();
        for (index, url) in args.urls.iter().enumerate() {
            let options = database::connect_options(url, route, database.statement_timeout_secs)?;
            let pool = database::pool_options(database.max_connections, REPLICA_TIMEOUT)
                .connect_lazy_with(options.clone());
            replicas.push(Replica {
                name: index.to_string(),
                target: Target { pool, route },
                checks: database::pool_options(1, REPLICA_TIMEOUT).connect_lazy_with(options),
                in_rotation: AtomicBool::new(false),
            });
        }
        let reads = Self::new(
            pool,
            route,
            session,
            replicas,
            Duration::from_millis(args.replica_wait_ms),
            Duration::from_millis(args.replica_max_lag_ms),
        );
        tokio::spawn(
            reads
                .inner
                .shadow
                .clone()
                .run(reads.inner.session.clone(), shutdown.clone()),
        );
        if !reads.inner.replicas.is_empty() {
            tokio::spawn(reads.clone().check(shutdown));
        }
        Ok(reads)
    }

    fn new(
        pool: PgPool,
        route: Route,
        session: PgPool,
        replicas: Vec<Replica>,
        wait: Duration,
        max_lag: Duration,
    ) -> Self {
        let metrics = ReadMetrics::default();
        for served_by in ["primary", "replica"] {
            metrics
                .served
                .get_or_create(&ServedLabels { served_by })
                .inc_by(0);
        }
        for replica in &replicas {
            let labels = ReplicaLabels {
                replica: replica.name.clone(),
            };
            metrics.in_rotation.get_or_create(&labels).set(0);
        }
        Self {
            inner: Arc::new(Inner {
                primary: Target { pool, route },
                session,
                replicas,
                next: AtomicUsize::new(0),
                wait,
                max_lag,
                metrics,
                shadow: Shadow::default(),
            }),
        }
    }

    pub fn metrics(&self) -> &ReadMetrics {
        &self.inner.metrics
    }

    /// The shadow reads of this instance.
    pub fn shadow(&self) -> &Shadow {
        &self.inner.shadow
    }

    /// The next replica in rotation, taken in turn.
    fn pick(&self) -> Option<&Replica> {
        let replicas = &self.inner.replicas;
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        (0..replicas.len())
            .map(|i| &replicas[(start + i) % replicas.len()])
            .find(|r| r.in_rotation.load(Ordering::Relaxed))
    }

    /// A snapshot on a replica when one is in rotation and shows `min_position` within the
    /// wait, else on the primary.
    async fn open_snapshot(
        &self,
        domain: Option<Domain>,
        min_position: Option<i64>,
    ) -> Result<Snapshot, ApiError> {
        if let Some(replica) = self.pick() {
            let deadline = Instant::now() + self.inner.wait;
            match replica.target.connect().await {
                Ok(conn) => match Snapshot::on(conn, domain, min_position, Some(deadline)).await {
                    Ok(Some(snapshot)) => {
                        self.count("replica");
                        return Ok(snapshot);
                    }
                    Ok(None) => {
                        self.inner.metrics.waited_out.inc();
                    }
                    Err(e) => self.replica_failed(replica, &e),
                },
                Err(e) => self.replica_failed(replica, &e),
            }
        }
        self.open_on_primary(domain, min_position).await
    }

    /// A snapshot on the primary. A `min_position` the primary does not show is no position a
    /// command answered, and no server can meet it: a 412.
    async fn open_on_primary(
        &self,
        domain: Option<Domain>,
        min_position: Option<i64>,
    ) -> Result<Snapshot, ApiError> {
        let conn = self.inner.primary.connect().await?;
        let snapshot = Snapshot::on(conn, domain, min_position, None)
            .await?
            .ok_or_else(|| {
                ApiError::PreconditionFailed(format!(
                    "Cutover-Min-Position: no event has position {}; send a position a \
                     command answered",
                    min_position.unwrap_or_default()
                ))
            })?;
        self.count("primary");
        Ok(snapshot)
    }

    fn count(&self, served_by: &'static str) {
        self.inner
            .metrics
            .served
            .get_or_create(&ServedLabels { served_by })
            .inc();
    }

    /// The read goes to the primary, which answers with its own error if the read has one (a
    /// replica may also cancel a query that conflicts with its replay). A replica that cannot
    /// be reached leaves the rotation until its next good check; one whose pool is only full
    /// stays in it.
    fn replica_failed(&self, replica: &Replica, e: &sqlx::Error) {
        if matches!(e, sqlx::Error::PoolTimedOut) || !database::is_unreachable(e) {
            tracing::warn!(replica = %replica.name, error = %e, "replica read failed: reading the primary");
            return;
        }
        if replica.in_rotation.swap(false, Ordering::Relaxed) {
            tracing::warn!(replica = %replica.name, error = %e, "replica unreachable: out of rotation");
        }
        self.show_rotation(replica);
    }

    /// The rotation gauge of `replica`, from its flag (whoever changed it last).
    fn show_rotation(&self, replica: &Replica) {
        self.inner
            .metrics
            .in_rotation
            .get_or_create(&ReplicaLabels {
                replica: replica.name.clone(),
            })
            .set(i64::from(replica.in_rotation.load(Ordering::Relaxed)));
    }

    /// Checks every replica each [`CHECK_EVERY`] until `shutdown`.
    async fn check(self, mut shutdown: watch::Receiver<bool>) {
        // The primary's WAL position at each recent check, newest last.
        let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
        let keep = self.inner.max_lag + CHECK_EVERY * 2;
        loop {
            match wal_position(&self.inner.session, "pg_current_wal_lsn()").await {
                Ok(lsn) => samples.push_back((Instant::now(), lsn)),
                Err(e) => {
                    tracing::warn!(error = %e, "replica checks: cannot read the primary's WAL position")
                }
            }
            while samples
                .front()
                .is_some_and(|(at, _)| at.elapsed() > keep && samples.len() > 1)
            {
                samples.pop_front();
            }
            for replica in &self.inner.replicas {
                let state = tokio::time::timeout(REPLICA_TIMEOUT, replica_state(&replica.checks))
                    .await
                    .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut));
                self.record(replica, state, &samples);
            }
            tokio::select! {
                () = tokio::time::sleep(CHECK_EVERY) => {}
                stopped = shutdown.changed() => if stopped.is_err() || *shutdown.borrow() { return },
            }
        }
    }

    /// Puts a replica in or out of the rotation after a check.
    fn record(
        &self,
        replica: &Replica,
        state: Result<(bool, i64), sqlx::Error>,
        samples: &VecDeque<(Instant, i64)>,
    ) {
        let labels = ReplicaLabels {
            replica: replica.name.clone(),
        };
        // Unknown (NaN) unless the replica is following this primary.
        let lag_gauge = self.inner.metrics.lag.get_or_create(&labels).clone();
        lag_gauge.set(f64::NAN);
        let (well, why) = match state {
            Err(e) => (false, format!("unreachable: {e}")),
            Ok((false, _)) => (
                false,
                "not in recovery: it was promoted, and no longer follows this primary".to_owned(),
            ),
            Ok((true, replayed)) => {
                let lag = lag(samples, replayed);
                lag_gauge.set(lag.map_or(f64::INFINITY, |l| l.as_secs_f64()));
                match lag {
                    Some(lag) if lag <= self.inner.max_lag => (true, String::new()),
                    _ => (
                        false,
                        format!(
                            "its replay is more than {} ms behind the primary",
                            self.inner.max_lag.as_millis()
                        ),
                    ),
                }
            }
        };
        let was = replica.in_rotation.swap(well, Ordering::Relaxed);
        if was != well {
            if well {
                tracing::info!(replica = %replica.name, "replica in rotation");
            } else {
                tracing::warn!(replica = %replica.name, "replica out of rotation: {why}");
            }
        }
        self.show_rotation(replica);
    }
}

/// How far behind the primary a replica that has replayed WAL up to `replayed` is: the age of
/// the newest sample of the primary's position it has reached; `None` when it has reached none
/// of them (it is further behind than they reach back).
fn lag(samples: &VecDeque<(Instant, i64)>, replayed: i64) -> Option<Duration> {
    let newest = samples.back()?;
    if replayed >= newest.1 {
        return Some(Duration::ZERO);
    }
    samples
        .iter()
        .rev()
        .find(|(_, lsn)| *lsn <= replayed)
        .map(|(at, _)| at.elapsed())
}

/// A WAL position (`expression`, a `pg_lsn`) as bytes from the start. The checks use the
/// simple protocol, which a transaction pooler passes as it is.
async fn wal_position(pool: &PgPool, expression: &str) -> Result<i64, sqlx::Error> {
    let row = sqlx::raw_sql(&format!(
        "SELECT (coalesce({expression}, '0/0') - '0/0'::pg_lsn)::bigint"
    ))
    .fetch_one(pool)
    .await?;
    row.try_get(0)
}

/// Whether a replica is in recovery, and how far it has replayed.
async fn replica_state(checks: &PgPool) -> Result<(bool, i64), sqlx::Error> {
    let row = sqlx::raw_sql(
        "SELECT pg_is_in_recovery(),
                (coalesce(pg_last_wal_replay_lsn(), '0/0') - '0/0'::pg_lsn)::bigint",
    )
    .fetch_one(checks)
    .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// What a read of one server starts from: a connection to it, its read source, and how far
/// its log goes.
pub struct Snapshot {
    conn: Conn,
    source: Option<ReadSource>,
    /// Whether the domain is in shadow, and its window.
    sampling: Option<Sampling>,
    position: i64,
    on_replica: bool,
}

impl Snapshot {
    /// Reads the read source of `domain`, the highest position and whether `min_position` is
    /// shown, asking again until `deadline` (a replica) while it is not; `None` when it still
    /// is not.
    async fn on(
        mut conn: Conn,
        domain: Option<Domain>,
        min_position: Option<i64>,
        deadline: Option<Instant>,
    ) -> Result<Option<Self>, sqlx::Error> {
        loop {
            let row = sqlx::query!(
                r#"SELECT (SELECT source FROM read_sources WHERE domain = $1) AS source,
                          (SELECT fraction FROM shadow_settings WHERE domain = $1) AS fraction,
                          (SELECT max(changed_at) FROM projections WHERE domain = $1) AS since,
                          coalesce((SELECT max(position) FROM events), 0) AS "position!",
                          $2::bigint IS NULL
                              OR EXISTS (SELECT 1 FROM events WHERE position = $2) AS "shows!""#,
                domain.map(Domain::as_str),
                min_position
            )
            .fetch_one(&mut *conn)
            .await?;
            if row.shows {
                let source = match domain {
                    Some(domain) => Some(
                        read_source::parse(domain, row.source.as_deref())
                            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                    ),
                    None => None,
                };
                // A domain in shadow has projections, so a time they last changed.
                let sampling = match (row.fraction, row.since) {
                    (Some(fraction), Some(since)) => Some(Sampling { fraction, since }),
                    _ => None,
                };
                return Ok(Some(Self {
                    conn,
                    source,
                    sampling,
                    position: row.position,
                    on_replica: deadline.is_some(),
                }));
            }
            match deadline {
                Some(deadline) if Instant::now() < deadline => tokio::time::sleep(WAIT_STEP).await,
                _ => return Ok(None),
            }
        }
    }

    /// The read source of the domain it was opened for (legacy for a read of none).
    pub fn source(&self) -> ReadSource {
        self.source.unwrap_or(ReadSource::Legacy)
    }

    /// Whether a replica serves it.
    pub fn on_replica(&self) -> bool {
        self.on_replica
    }
}

impl std::ops::Deref for Snapshot {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Snapshot {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// A GET's reading: where it may be served, and the position it must see
/// (`Cutover-Min-Position`, a position a command answered).
pub struct Reading {
    reads: Reads,
    min_position: Option<i64>,
    seen: Option<Seen>,
    /// The request's path and query, for a shadow read's record.
    path: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Reading
where
    Reads: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let min_position =
            match parts.headers.get(&MIN_POSITION) {
                None => None,
                Some(value) => Some(value.to_str().ok().and_then(parse_position).ok_or_else(
                    || {
                        ApiError::BadRequest(
                            "Cutover-Min-Position must be a log position a command answered: \
                             digits, 1 or more, at most 18 of them"
                                .to_owned(),
                        )
                    },
                )?),
            };
        Ok(Self {
            reads: Reads::from_ref(state),
            min_position,
            seen: parts.extensions.get::<Seen>().cloned(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

/// Most digits of a `Cutover-Min-Position` (any such number is a bigint).
pub const MIN_POSITION_DIGITS: usize = 18;

bounds! {
    /// A `Cutover-Min-Position` header.
    pub MinPositionHeader = serde_json::json!({
        "type": "string",
        "pattern": format!("^[1-9][0-9]{{0,{}}}$", MIN_POSITION_DIGITS - 1),
    });
}

/// A `Cutover-Min-Position`: digits only, not starting with 0, at most
/// [`MIN_POSITION_DIGITS`] of them (the description's pattern says the same).
fn parse_position(text: &str) -> Option<i64> {
    let well_formed = (1..=MIN_POSITION_DIGITS).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_digit())
        && !text.starts_with('0');
    well_formed.then(|| text.parse().ok()).flatten()
}

impl Reading {
    /// A snapshot for a read of `domain`'s read models (or of none, for the feed).
    ///
    /// # Errors
    /// The database's, or a 412 for a `Cutover-Min-Position` that no event has.
    pub async fn open(&self, domain: Option<Domain>) -> Result<Snapshot, ApiError> {
        let snapshot = self.reads.open_snapshot(domain, self.min_position).await?;
        Ok(self.saw(snapshot))
    }

    /// The answer of a GET of the old API's shape on `route` (its template), computed by `read`
    /// from `domain`'s read source; while the domain is in shadow, a share of them also from the
    /// other model, compared and counted ([`crate::shadow`]). The client gets the first answer.
    ///
    /// # Errors
    /// The read's error, or the snapshot's (as [`Reading::open`]).
    pub async fn answer(
        &self,
        domain: Domain,
        route: &'static str,
        read: impl for<'c> Fn(&'c mut PgConnection, ReadSource) -> Respond<'c>,
    ) -> Result<Response, ApiError> {
        let mut snapshot = self.open(Some(domain)).await?;
        let source = snapshot.source();
        let served = read(&mut snapshot, source).await;
        let shadow = self.reads.shadow();
        if let Some(sampling) = snapshot.sampling.filter(|s| shadow.sample(s.fraction)) {
            let other = read(&mut snapshot, source.other()).await;
            shadow.compare(domain, sampling, route, &self.path, source, &served, &other);
        }
        served.map(|answer| axum::response::IntoResponse::into_response(Answer(answer)))
    }

    /// A snapshot on the primary, for what a replica could not answer yet.
    ///
    /// # Errors
    /// As [`Reading::open`].
    pub async fn open_on_primary(&self, domain: Option<Domain>) -> Result<Snapshot, ApiError> {
        let snapshot = self
            .reads
            .open_on_primary(domain, self.min_position)
            .await?;
        Ok(self.saw(snapshot))
    }

    /// Records how far `snapshot`'s server is, for the answer's `Cutover-Position`.
    fn saw(&self, snapshot: Snapshot) -> Snapshot {
        if let Some(seen) = &self.seen {
            seen.0.store(snapshot.position, Ordering::Relaxed);
        }
        snapshot
    }
}

impl Reads {
    /// A connection to the primary, for a read only it can answer.
    ///
    /// # Errors
    /// The database's.
    pub async fn primary_connection(
        &self,
    ) -> Result<impl std::ops::DerefMut<Target = PgConnection>, sqlx::Error> {
        self.inner.primary.connect().await
    }
}

/// A connection for one batch of a live stream, on the next replica in rotation or the
/// primary.
///
/// # Errors
/// The database's.
pub async fn stream_connection(
    reads: &Reads,
) -> Result<(impl std::ops::DerefMut<Target = PgConnection>, bool), sqlx::Error> {
    if let Some(replica) = reads.pick() {
        match replica.target.connect().await {
            Ok(conn) => return Ok((conn, true)),
            Err(e) if database::is_unreachable(&e) => {
                // The check task takes it out of the rotation; this batch reads the primary.
            }
            Err(e) => return Err(e),
        }
    }
    Ok((reads.inner.primary.connect().await?, false))
}
