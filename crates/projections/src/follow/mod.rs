//! Following the old system while it still writes (`cutover follow`): the old database's
//! table is read through Postgres's logical replication — a publication of the table and a
//! replication slot, read with `pg_logical_slot_peek_binary_changes` in the `pgoutput`
//! format — first its existing rows under one snapshot, then every insert, update and delete
//! in commit order. Each row change is read as "this row now looks like this" and turned, through
//! the domain's commands, into the events that take the aggregate there: nothing when it is
//! already there, so the copy and the stream may overlap. A change the domain refuses is kept
//! in `follow_refusals` with why, and following goes on.
//!
//! Exactly once: the position reached (the old transaction's commit position and how many of
//! its changes were applied) commits in the transaction of the events a change made; the slot
//! is advanced past a transaction only after all of it committed here. A follower stopped at
//! any moment, old database restarted or not, resumes where it stands, losing no change and
//! applying none twice.
//!
//! What is particular to a domain (its old table, how a row becomes its commands) is a
//! [`source::Source`]: the collections, the batches and the competency documents (attempts and
//! reviews) are followed.

mod batches;
mod collections;
mod competencies;
pub mod handover;
pub mod pgoutput;
mod source;

use std::collections::HashMap;
use std::str::FromStr as _;

use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cutover_core::store::{Batch, CommandError, EventStore};
use cutover_engine::locks::APPEND_LOCK;
use futures_util::TryStreamExt as _;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};

use pgoutput::{Lsn, Message, Relation, Value};
use source::{Change, Source};

/// The domains that can be followed.
pub const FOLLOWED: &[&str] = &["collections", "batches", "competencies"];

/// Default of `--batch`: most changes applied in one transaction here (a larger old
/// transaction is applied in several, each recording how many of its changes it reached; the
/// copy reads as many rows at once).
pub const DEFAULT_BATCH: u16 = 2_000;

/// Default of `--publication`: the publication of the old tables on the old database.
pub const DEFAULT_PUBLICATION: &str = "cutover_follow";

/// The replication slot that follows `domain` on the old database.
pub fn slot_name(domain: &str) -> String {
    format!("cutover_follow_{domain}")
}

/// Following could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// Something the operator must do first, said with how.
    #[error("{0}")]
    Setup(String),
    #[error("the old database: {0}")]
    Legacy(#[source] sqlx::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Decode(#[from] pgoutput::DecodeError),
    #[error("{what}")]
    Command {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The projections maintained inline changed while a batch ran (a rebuild swapped, a
    /// projection was retired): nothing of it was written, and it runs again.
    #[error("the projections maintained inline changed while a batch of changes ran")]
    InlineChanged,
    /// The domain's following ended while this follower waited (handed over, or dropped).
    #[error("{0} is not followed any more: it was handed over, or its following was dropped")]
    NotFollowed(String),
}

/// A batch that failed at `what`.
fn failed<E>(what: &'static str) -> impl FnOnce(CommandError<E>) -> FollowError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |source| match source {
        CommandError::InlineChanged => FollowError::InlineChanged,
        CommandError::Database(e) => FollowError::Database(e),
        source => FollowError::Command {
            what: what.into(),
            source: Box::new(source),
        },
    }
}

impl FollowError {
    /// Whether waiting may mend it: either database out of reach, shutting down or starting
    /// up. Nothing of a batch that failed so was committed, and following resumes where it
    /// stood.
    pub fn is_transient(&self) -> bool {
        match self {
            // The old database refusing a write is no outage to wait out.
            Self::Legacy(e) => {
                cutover_core::database::is_unreachable(e)
                    && !cutover_core::database::is_read_only(e)
            }
            Self::Database(e) => cutover_core::database::is_unreachable(e),
            _ => false,
        }
    }
}

fn legacy(e: sqlx::Error) -> FollowError {
    FollowError::Legacy(e)
}

/// The old database followed, and the store its followers write Cutover's events through.
#[derive(Clone)]
pub struct OldSystem {
    pub store: EventStore,
    pub old: PgPool,
}

impl OldSystem {
    /// The old database at `url`, followed into Cutover's database of `pool` (a direct
    /// connection: its sessions are marked as the follower's). Nothing connects until used.
    ///
    /// # Errors
    /// A URL that does not parse.
    pub fn open(pool: &PgPool, url: &str) -> Result<Self, FollowError> {
        Ok(Self {
            store: EventStore::new(writer_pool(pool), crate::inline_projectors(), 5),
            old: connect_legacy(url)?,
        })
    }
}

/// A pool on the old database at `url`, whose sessions write values as the follower reads them
/// (ISO dates, UTC). It connects when first used: an old database out of reach is an error
/// then.
///
/// # Errors
/// A URL that does not parse.
fn connect_legacy(url: &str) -> Result<PgPool, FollowError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(legacy)?
        .application_name("cutover follow")
        .options([("datestyle", "ISO"), ("timezone", "UTC")]);
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy_with(options))
}

/// The class of the advisory lock (with the domain's `hashtext`) a follower holds while it
/// applies, hands over or drops a domain: one at a time per domain, whatever process runs it
/// (a `cutover follow`, a server, a handover).
const FOLLOW_LOCK_CLASS: i32 = 0x4355_5446;

/// Takes the follower lock of `domain` on `conn` (a connection of its own: closing it releases
/// the lock), waiting for the follower that holds it to finish its round.
async fn lock_domain(conn: &mut PgConnection, domain: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_lock($1, hashtext($2))")
        .bind(FOLLOW_LOCK_CLASS)
        .bind(domain)
        .execute(conn)
        .await
        .map(drop)
}

/// A pool like `pool` whose sessions write as the follower (`cutover.writer = follow`): the
/// only sessions whose commands a followed domain accepts. It connects when first used.
fn writer_pool(pool: &PgPool) -> PgPool {
    let options = (*pool.connect_options())
        .clone()
        .options([("cutover.writer", "follow")]);
    PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy_with(options)
}

/// A followed domain's row.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Follow {
    pub domain: String,
    pub slot: String,
    pub publication: String,
    pub legacy_table: String,
    /// Whether the existing rows were copied (the stream is applied after).
    #[sqlx(try_from = "Option<String>")]
    #[serde(skip)]
    #[schema(ignore)]
    pub snapshot: Snapshot,
    /// The commit position of the last old transaction applied (Postgres's `pg_lsn` text),
    /// and how many of its row changes were.
    pub lsn: String,
    pub applied: i32,
    pub changes_applied: i64,
    pub changes_refused: i64,
    pub lag_bytes: i64,
    pub waiting_since: Option<DateTime<Utc>>,
    /// Changes applied within each of [`LAG_BUCKETS`] of their old commit, and later.
    #[serde(skip)]
    #[schema(ignore)]
    pub lag_histogram: Vec<i64>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Why the follower last failed, and when (it tries again); null since its next good look.
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

/// How long a followed domain's row may go unrefreshed before it counts as stopped: a running
/// follower refreshes it at every look (several times a second).
pub const STOPPED_AFTER: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

impl Follow {
    /// The bound of [`LAG_BUCKETS`] within which the fraction `q` of the changes counted in
    /// `histogram` were applied (`f64::INFINITY`: later than the last), or none counted.
    pub fn lag_quantile(histogram: &[i64], q: f64) -> Option<f64> {
        let total: i64 = histogram.iter().sum();
        if total == 0 {
            return None;
        }
        let wanted = (q * total as f64).ceil() as i64;
        let mut seen = 0;
        for (i, count) in histogram.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return Some(LAG_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }

    /// Whether no follower has looked at the old database for [`STOPPED_AFTER`] by `now`: the
    /// old database then keeps the WAL its slot has not confirmed, and its disk fills.
    pub fn stopped(&self, now: DateTime<Utc>) -> bool {
        now - self.updated_at > STOPPED_AFTER
    }
}

const SELECT_FOLLOW: &str = "\
SELECT domain, slot, publication, legacy_table, snapshot, lsn::text AS lsn, applied,
       changes_applied, changes_refused, lag_bytes, waiting_since, lag_histogram, started_at,
       updated_at, last_error, last_error_at
  FROM follows";

/// Every followed domain.
///
/// # Errors
/// A database error.
pub async fn follows<'e>(executor: impl sqlx::PgExecutor<'e>) -> Result<Vec<Follow>, sqlx::Error> {
    sqlx::query_as(&format!("{SELECT_FOLLOW} ORDER BY domain"))
        .fetch_all(executor)
        .await
}

/// A followed domain as the admin API shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct FollowState {
    #[serde(flatten)]
    pub follow: Follow,
    /// Within how many seconds of their old commit 99% of the changes streamed so far were
    /// applied (a bound of the lag histogram's buckets, 0.005 to 60); null when none was
    /// streamed yet or when that is later than a minute (see `late_changes`).
    pub lag_p99_seconds: Option<f64>,
    /// Changes applied more than a minute after their old commit.
    pub late_changes: i64,
    /// No follower has looked at the old database for a minute: it keeps WAL for the slot.
    pub stopped: bool,
}

/// Every followed domain, and every handover.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Following {
    pub follows: Vec<FollowState>,
    pub handovers: Vec<handover::HandedOver>,
    /// The domains that can be followed.
    pub followable: Vec<String>,
}

/// Every followed domain as the admin API shows it, and every handover.
///
/// # Errors
/// A database error.
pub async fn following(pool: &PgPool) -> Result<Following, sqlx::Error> {
    let now = Utc::now();
    let follows = follows(pool)
        .await?
        .into_iter()
        .map(|follow| FollowState {
            lag_p99_seconds: Follow::lag_quantile(&follow.lag_histogram, 0.99)
                .filter(|p99| p99.is_finite()),
            late_changes: follow
                .lag_histogram
                .get(LAG_BUCKETS.len())
                .copied()
                .unwrap_or(0),
            stopped: follow.stopped(now),
            follow,
        })
        .collect();
    Ok(Following {
        follows,
        handovers: handover::handovers(pool).await?,
        followable: FOLLOWED.iter().map(|d| (*d).to_owned()).collect(),
    })
}

/// The transactions a snapshot shows (Postgres's `pg_snapshot`: `xmin:xmax:xip,…`), or none
/// taken yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot(Option<(u64, u64, Vec<u64>)>);

impl TryFrom<Option<String>> for Snapshot {
    type Error = pgoutput::DecodeError;

    fn try_from(text: Option<String>) -> Result<Self, Self::Error> {
        text.map_or(Ok(Self(None)), |text| Self::parse(&text))
    }
}

impl Snapshot {
    fn parse(text: &str) -> Result<Self, pgoutput::DecodeError> {
        let bad = || pgoutput::DecodeError::new(format!("not a snapshot: {text:?}"));
        let mut parts = text.splitn(3, ':');
        let mut next = || -> Result<&str, pgoutput::DecodeError> { parts.next().ok_or_else(bad) };
        let xmin = next()?.parse().map_err(|_| bad())?;
        let xmax = next()?.parse().map_err(|_| bad())?;
        let xip = next()?
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        Ok(Self(Some((xmin, xmax, xip))))
    }

    fn taken(&self) -> bool {
        self.0.is_some()
    }

    /// Whether the transaction `xid` (32 bits, as the stream gives it) had committed when the
    /// snapshot was taken: its changes were in the copy.
    fn shows(&self, xid: u32) -> bool {
        let Some((xmin, xmax, xip)) = &self.0 else {
            return false;
        };
        // The full id: the epoch of xmax, or the one before for an id above xmax's low bits.
        let epoch = xmax >> 32;
        let mut full = (epoch << 32) | u64::from(xid);
        if full > *xmax && epoch > 0 {
            full -= 1 << 32;
        }
        full < *xmin || (full < *xmax && !xip.contains(&full))
    }
}

/// What following did in one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Rows of the initial copy read.
    pub copied: u64,
    /// Row changes applied (or already reflected).
    pub applied: u64,
    /// Row changes refused (kept in `follow_refusals`).
    pub refused: u64,
}

/// Upper bounds, in seconds, of the lag histogram's buckets (`follows.lag_histogram` counts the
/// changes applied within each, and one more bucket those applied later): how long after its
/// old transaction committed a change was written here.
pub const LAG_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How often a follower looks for new changes once caught up.
pub const POLL: Duration = Duration::from_millis(200);

/// The longest a follower waits before trying again while a database is out of reach.
pub const RETRY_MAX: Duration = Duration::from_secs(10);

/// Which domains [`keep_following`] follows.
pub enum Domains {
    /// These followers, started by the caller: a failure that waiting cannot mend ends
    /// following.
    These(Vec<Follower>),
    /// Every domain `follows` lists, looked up again each round, with the publication it was
    /// started with, applying at most `batch` changes a transaction (a server's followers): a
    /// failure is logged, and the domain tried again after a pause.
    Listed { batch: usize },
}

/// Follows `domains` from `old`: a round applies what each domain's slot holds, then the next
/// starts [`POLL`] later, until `stop` (or after one round, `until_caught_up`). `report` is
/// told what a round applied to a domain, when it applied anything. A failure that waiting may
/// mend (either database out of reach) is logged and tried again, after 0.2 s and then twice
/// as long each time up to [`RETRY_MAX`].
///
/// # Errors
/// With `Domains::These`, a failure that waiting cannot mend (or, `until_caught_up`, any), or
/// what `report` returns.
pub async fn keep_following<E: From<FollowError>>(
    store: &EventStore,
    old: &PgPool,
    domains: Domains,
    until_caught_up: bool,
    stop: impl Future<Output = ()>,
    mut report: impl FnMut(&Follow, Progress) -> Result<(), E>,
) -> Result<(), E> {
    let (mut followers, listed) = match domains {
        Domains::These(followers) => (followers, None),
        Domains::Listed { batch } => (Vec::new(), Some(batch)),
    };
    let mut stop = std::pin::pin!(stop);
    let mut retry = POLL;
    loop {
        let mut failed = false;
        if let Some(batch) = listed {
            if let Err(e) = follow_listed(store, old, &mut followers, batch).await {
                tracing::warn!(error = %e, "starting the followed domains failed; trying again in {retry:?}");
                failed = true;
            }
        }
        let mut ended = Vec::new();
        for (i, follower) in followers.iter_mut().enumerate() {
            let progress = match follower.catch_up().await {
                Ok(progress) => progress,
                Err(FollowError::NotFollowed(_)) if listed.is_some() => {
                    ended.push(i);
                    continue;
                }
                Err(e) if (listed.is_some() || e.is_transient()) && !until_caught_up => {
                    let domain = &follower.follow().domain;
                    let error = chain(&e);
                    tracing::warn!(%domain, %error, "following paused; trying again in {retry:?}");
                    record_error(store, domain, &error).await;
                    failed = true;
                    continue;
                }
                Err(e) => {
                    record_error(store, &follower.follow().domain, &chain(&e)).await;
                    return Err(e.into());
                }
            };
            if progress != Progress::default() {
                report(follower.follow(), progress)?;
            }
        }
        for i in ended.into_iter().rev() {
            followers.remove(i);
        }
        let pause = if failed { retry } else { POLL };
        retry = if failed {
            (retry * 2).min(RETRY_MAX)
        } else {
            POLL
        };
        if until_caught_up {
            return Ok(());
        }
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// `e` and its causes, in one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut said = e.to_string();
    let mut cause = e.source();
    while let Some(e) = cause {
        let more = e.to_string();
        if !said.contains(&more) {
            said = format!("{said}: {more}");
        }
        cause = e.source();
    }
    said
}

/// Records on `domain`'s row why its follower failed, where status and the console read it;
/// a database out of reach keeps nothing, which the follower's warning says too.
async fn record_error(store: &EventStore, domain: &str, error: &str) {
    let recorded =
        sqlx::query("UPDATE follows SET last_error = $2, last_error_at = now() WHERE domain = $1")
            .bind(domain)
            .bind(error)
            .execute(store.pool())
            .await;
    if let Err(e) = recorded {
        tracing::debug!(%domain, error = %e, "the follower's error is not recorded");
    }
}

/// Starts a follower for each domain `follows` lists that `followers` lacks.
async fn follow_listed(
    store: &EventStore,
    old: &PgPool,
    followers: &mut Vec<Follower>,
    batch: usize,
) -> Result<(), FollowError> {
    for follow in follows(store.pool()).await? {
        if followers.iter().any(|f| f.follow().domain == follow.domain) {
            continue;
        }
        match Follower::take_up(store.clone(), old.clone(), &follow.domain).await {
            Ok(follower) => followers.push(follower.with_batch(batch)),
            // Dropped or handed over since it was listed.
            Err(FollowError::NotFollowed(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One domain followed from the old database.
pub enum Follower {
    Collections(DomainFollower<collections::Collections>),
    Batches(DomainFollower<batches::Batches>),
    Competencies(DomainFollower<competencies::Competencies>),
}

/// The same code for every domain a [`Follower`] may follow.
macro_rules! each {
    ($follower:expr, $f:ident => $body:expr) => {
        match $follower {
            Follower::Collections($f) => $body,
            Follower::Batches($f) => $body,
            Follower::Competencies($f) => $body,
        }
    };
}

impl Follower {
    /// Starts following `domain` (its slot and its row in `follows` are made the first time),
    /// or takes up where an earlier follower stopped.
    ///
    /// # Errors
    /// `Setup` for a domain that cannot be followed or an old database that is not ready (with
    /// what to do), or a database error.
    pub async fn start(
        store: EventStore,
        old: PgPool,
        domain: &str,
        publication: &str,
    ) -> Result<Self, FollowError> {
        Start {
            store,
            old,
            publication,
            create: true,
        }
        .of(domain)
        .await
    }

    /// Takes up following `domain` where an earlier follower stopped, never starting it (a
    /// handover, a server's follower: a domain dropped meanwhile stays dropped).
    ///
    /// # Errors
    /// `NotFollowed` when it is not followed, or as [`Follower::start`].
    pub async fn take_up(
        store: EventStore,
        old: PgPool,
        domain: &str,
    ) -> Result<Self, FollowError> {
        Start {
            store,
            old,
            publication: DEFAULT_PUBLICATION,
            create: false,
        }
        .of(domain)
        .await
    }
}

impl Start<'_> {
    /// The follower of `domain`.
    async fn of(self, domain: &str) -> Result<Follower, FollowError> {
        let start = self;
        match domain {
            "collections" => Ok(Follower::Collections(start.follow().await?)),
            "batches" => Ok(Follower::Batches(start.follow().await?)),
            "competencies" => Ok(Follower::Competencies(start.follow().await?)),
            _ => Err(FollowError::Setup(format!(
                "{domain} cannot be followed: only {} can",
                FOLLOWED.join(", ")
            ))),
        }
    }
}

impl Follower {
    /// The follower applying at most `batch` changes in one transaction here (at least one).
    #[must_use]
    pub fn with_batch(self, batch: usize) -> Self {
        let batch = batch.max(1);
        each!(self, f => DomainFollower { batch, ..f }.into())
    }

    /// The followed domain's row as this follower last wrote it.
    pub fn follow(&self) -> &Follow {
        each!(self, f => &f.follow)
    }

    /// Copies the existing rows if that is not done, then applies what the slot holds, a batch
    /// at a time, until it holds nothing more.
    ///
    /// # Errors
    /// See [`FollowError`]; what was applied before stays applied.
    pub async fn catch_up(&mut self) -> Result<Progress, FollowError> {
        each!(self, f => f.catch_up().await)
    }

    /// Hands the domain's writes over to Cutover (see [`handover`]), holding the domain's
    /// follower lock.
    ///
    /// # Errors
    /// See [`handover::handover`].
    pub async fn handover(&mut self) -> Result<handover::Handover, FollowError> {
        each!(self, f => {
            f.lock().await?;
            let report = handover::handover(f).await;
            f.unlock().await;
            report
        })
    }
}

impl From<DomainFollower<collections::Collections>> for Follower {
    fn from(f: DomainFollower<collections::Collections>) -> Self {
        Self::Collections(f)
    }
}

impl From<DomainFollower<batches::Batches>> for Follower {
    fn from(f: DomainFollower<batches::Batches>) -> Self {
        Self::Batches(f)
    }
}

impl From<DomainFollower<competencies::Competencies>> for Follower {
    fn from(f: DomainFollower<competencies::Competencies>) -> Self {
        Self::Competencies(f)
    }
}

/// What starting a follower needs.
struct Start<'a> {
    store: EventStore,
    old: PgPool,
    /// Used when the domain is started here.
    publication: &'a str,
    /// Whether to start following a domain not followed yet.
    create: bool,
}

impl Start<'_> {
    async fn follow<S: Source>(self) -> Result<DomainFollower<S>, FollowError> {
        let Start {
            store,
            old,
            publication,
            create,
        } = self;
        let (domain, aggregate_type) = (S::DOMAIN.as_str(), S::Aggregate::TYPE);
        let tables: Vec<&str> = S::TABLES.iter().map(|table| table.name).collect();
        let existing: Option<Follow> =
            sqlx::query_as(&format!("{SELECT_FOLLOW} WHERE domain = $1"))
                .bind(domain)
                .fetch_optional(store.pool())
                .await?;
        let follow = match existing {
            Some(follow) => follow,
            None if !create => return Err(FollowError::NotFollowed(domain.to_owned())),
            None => {
                let handed_over: Option<DateTime<Utc>> = sqlx::query_scalar(
                    "SELECT handed_over_at FROM handovers WHERE domain = $1
                      ORDER BY handed_over_at DESC LIMIT 1",
                )
                .bind(domain)
                .fetch_optional(store.pool())
                .await?;
                if let Some(at) = handed_over {
                    return Err(FollowError::Setup(format!(
                        "{domain} was handed over to Cutover at {at}: Cutover writes it, and \
                         following the old system again would make two writers"
                    )));
                }
                create_slot(&old, domain, &tables, publication).await?;
                // Under the append lock, which every command holds shared from its BEGIN:
                // commands begun before end first, and those begun after are refused.
                let mut tx = store.pool().begin().await?;
                sqlx::query(&format!("SELECT pg_advisory_xact_lock({APPEND_LOCK})"))
                    .execute(&mut *tx)
                    .await?;
                let made = sqlx::query_as(&format!(
                    "WITH made AS (INSERT INTO follows
                                       (domain, slot, publication, legacy_table, aggregate_type)
                                   VALUES ($1, $2, $3, $4, $5) RETURNING *)
                     {}",
                    SELECT_FOLLOW.replace("FROM follows", "FROM made")
                ))
                .bind(domain)
                .bind(slot_name(domain))
                .bind(publication)
                .bind(
                    tables
                        .iter()
                        .map(|table| format!("public.{table}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                )
                .bind(aggregate_type)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                made
            }
        };
        Ok(DomainFollower {
            store,
            old,
            follow,
            batch: DEFAULT_BATCH.into(),
            lock: None,
            source: PhantomData,
        })
    }
}

/// One domain followed from the old database, its particulars in `S`.
pub struct DomainFollower<S> {
    store: EventStore,
    old: PgPool,
    follow: Follow,
    /// Most changes applied in one transaction here.
    batch: usize,
    /// The connection that holds the domain's follower lock during a round (dropped, it
    /// closes, and the lock is released).
    lock: Option<PgConnection>,
    source: PhantomData<S>,
}

impl<S: Source> DomainFollower<S>
where
    <S::Aggregate as Aggregate>::Error: Send + Sync,
{
    /// [`Self::apply_all`] holding the domain's follower lock.
    async fn catch_up(&mut self) -> Result<Progress, FollowError> {
        self.lock().await?;
        let applied = self.apply_all().await;
        self.unlock().await;
        applied
    }

    /// Takes the domain's follower lock, waiting for another follower's round to end, and
    /// reads where following stands (another follower may have applied meanwhile).
    ///
    /// # Errors
    /// `NotFollowed` when the following ended meanwhile, or a database error.
    async fn lock(&mut self) -> Result<(), FollowError> {
        let conn = match &mut self.lock {
            Some(conn) => conn,
            None => self
                .lock
                .insert(self.store.pool().acquire().await?.detach()),
        };
        if let Err(e) = lock_domain(conn, &self.follow.domain).await {
            self.lock = None;
            return Err(e.into());
        }
        let now: Option<Follow> = sqlx::query_as(&format!("{SELECT_FOLLOW} WHERE domain = $1"))
            .bind(&self.follow.domain)
            .fetch_optional(self.store.pool())
            .await?;
        match now {
            Some(follow) => {
                self.follow = follow;
                Ok(())
            }
            None => {
                self.unlock().await;
                Err(FollowError::NotFollowed(self.follow.domain.clone()))
            }
        }
    }

    /// Releases the domain's follower lock (closing the connection if that fails).
    async fn unlock(&mut self) {
        if let Some(conn) = &mut self.lock {
            if sqlx::query("SELECT pg_advisory_unlock_all()")
                .execute(conn)
                .await
                .is_err()
            {
                self.lock = None;
            }
        }
    }

    /// Copies the existing rows if that is not done, then applies what the slot holds until it
    /// holds nothing more (the caller holds the follower lock).
    async fn apply_all(&mut self) -> Result<Progress, FollowError> {
        let mut progress = Progress::default();
        if !self.follow.snapshot.taken() {
            self.copy(&mut progress).await?;
        }
        while self.step(&mut progress).await? {}
        Ok(progress)
    }

    /// The initial copy: every existing row, under one snapshot of the old database, whose
    /// visible transactions the stream then skips. Run again from the start if it stopped
    /// (a row already reflected is a no-op).
    async fn copy(&mut self, progress: &mut Progress) -> Result<(), FollowError> {
        let mut old = self.old.begin().await.map_err(legacy)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *old)
            .await
            .map_err(legacy)?;
        let snapshot: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
            .fetch_one(&mut *old)
            .await
            .map_err(legacy)?;
        for table in S::TABLES {
            let sql = format!(
                "SELECT $1::text AS old_table, {columns} FROM public.{table} ORDER BY {order}",
                columns = S::COLUMNS,
                table = table.name,
                order = S::ORDER,
            );
            let mut rows = sqlx::query_as::<_, S::Row>(&sql)
                .bind(table.name)
                .fetch(&mut *old);
            let mut items = Vec::with_capacity(self.batch);
            loop {
                let row = rows.try_next().await.map_err(legacy)?;
                let ended = row.is_none();
                items.extend(row.map(|row| Item {
                    legacy: None,
                    table: table.name,
                    kind: Kind::Row(Change {
                        row,
                        unchanged: Vec::new(),
                        deleted: false,
                    }),
                }));
                if items.len() >= self.batch || (ended && !items.is_empty()) {
                    progress.copied += items.len() as u64;
                    self.apply(&items, progress).await?;
                    items.clear();
                }
                if ended {
                    break;
                }
            }
        }
        old.commit().await.map_err(legacy)?;
        sqlx::query("UPDATE follows SET snapshot = $2, updated_at = now() WHERE domain = $1")
            .bind(&self.follow.domain)
            .bind(&snapshot)
            .execute(self.store.pool())
            .await?;
        self.follow.snapshot = Snapshot::parse(&snapshot)?;
        Ok(())
    }

    /// Applies one batch of the slot's transactions; whether there was any.
    async fn step(&mut self, progress: &mut Progress) -> Result<bool, FollowError> {
        let changes: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT data FROM pg_logical_slot_peek_binary_changes(
                 $1, NULL, $2, 'proto_version', '1', 'publication_names', $3)",
        )
        .bind(&self.follow.slot)
        .bind(i32::try_from(self.peek()).unwrap_or(i32::MAX))
        .bind(&self.follow.publication)
        .fetch_all(&self.old)
        .await
        .map_err(legacy)?;
        let (mut done, mut end) = (Lsn::from_str(&self.follow.lsn)?, None);
        let mut applied_in_done = self.follow.applied;
        let mut relations: HashMap<u32, Relation> = HashMap::new();
        let mut tx: Option<Tx> = None;
        let mut last_commit_time = None;
        let mut items = Vec::new();
        for data in &changes {
            match pgoutput::decode(data)? {
                Message::Begin {
                    final_lsn,
                    commit_time,
                    xid,
                } => {
                    tx = Some(Tx {
                        lsn: final_lsn,
                        xid,
                        commit_time,
                        changes: 0,
                        skip_through: if self.follow.snapshot.shows(xid) || final_lsn < done {
                            i32::MAX
                        } else if final_lsn == done {
                            applied_in_done
                        } else {
                            0
                        },
                    });
                    last_commit_time = Some(commit_time);
                }
                Message::Relation(relation) => {
                    relations.insert(relation.id, relation);
                }
                Message::Insert { relation, new } | Message::Update { relation, new } => {
                    items.extend(self.read_change(
                        &relations,
                        tx.as_mut(),
                        relation,
                        &new,
                        false,
                    )?);
                }
                Message::Delete { relation, old } => {
                    items.extend(self.read_change(
                        &relations,
                        tx.as_mut(),
                        relation,
                        &old,
                        true,
                    )?);
                }
                Message::Truncate { .. } => {
                    if let Some(legacy) = next_change(tx.as_mut()) {
                        items.push(Item {
                            legacy: Some(legacy),
                            table: "",
                            kind: Kind::Unreadable {
                                shown: json!({}),
                                reason: "the old table was truncated: Cutover deletes nothing \
                                         for a TRUNCATE; delete the rows instead"
                                    .into(),
                            },
                        });
                    }
                }
                Message::Commit {
                    commit_lsn,
                    end_lsn,
                } => {
                    // A transaction applied before, read again because the slot had not
                    // been advanced past it, leaves the position where it stands.
                    if let Some(tx) = tx.take().filter(|_| commit_lsn >= done) {
                        done = commit_lsn;
                        applied_in_done = tx.changes;
                    }
                    end = Some(end_lsn);
                }
                Message::Other => {}
            }
        }
        // (Each chunk records the position of its last change as it commits.)
        for chunk in items.chunks(self.batch) {
            self.apply(chunk, progress).await?;
        }
        if let Some(end) = end {
            sqlx::query("SELECT pg_replication_slot_advance($1, $2::pg_lsn)")
                .bind(&self.follow.slot)
                .bind(end.to_string())
                .execute(&self.old)
                .await
                .map_err(legacy)?;
        }
        let more = changes.len() >= self.peek();
        self.record_lag(more.then_some(last_commit_time).flatten())
            .await?;
        self.follow.lsn = done.to_string();
        self.follow.applied = applied_in_done;
        Ok(!changes.is_empty())
    }

    /// Records how far behind the old database this follower is: WAL bytes its slot has not
    /// confirmed, and since when old transactions wait (`waiting_commit`: the commit time, in
    /// microseconds since 2000, of the last transaction applied while more wait).
    async fn record_lag(&self, waiting_commit: Option<i64>) -> Result<(), FollowError> {
        let lag_bytes: Option<i64> = sqlx::query_scalar(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint
               FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&self.follow.slot)
        .fetch_optional(&self.old)
        .await
        .map_err(legacy)?
        .flatten();
        let waiting_since = waiting_commit.and_then(postgres_time);
        sqlx::query(
            "UPDATE follows SET lag_bytes = $2, waiting_since = $3, updated_at = now(),
                    last_error = NULL, last_error_at = NULL
              WHERE domain = $1",
        )
        .bind(&self.follow.domain)
        .bind(lag_bytes.unwrap_or(0))
        .bind(waiting_since)
        .execute(self.store.pool())
        .await?;
        Ok(())
    }

    /// One inserted, updated or deleted row of transaction `tx`, as a change to apply (none
    /// when it was applied before).
    fn read_change(
        &self,
        relations: &HashMap<u32, Relation>,
        tx: Option<&mut Tx>,
        relation: u32,
        values: &[Value],
        deleted: bool,
    ) -> Result<Option<Item<S::Row>>, FollowError> {
        let Some(legacy) = next_change(tx) else {
            return Ok(None);
        };
        let relation = relations.get(&relation).ok_or_else(|| {
            pgoutput::DecodeError::new(format!("a row of relation {relation}, not described"))
        })?;
        let Some(table) = S::TABLES
            .iter()
            .find(|table| relation.schema == "public" && relation.table == table.name)
        else {
            // Another table of the publication: not this domain's.
            return Ok(Some(Item {
                legacy: Some(legacy),
                table: "",
                kind: Kind::OtherTable,
            }));
        };
        let columns: HashMap<&str, &Value> = relation
            .columns
            .iter()
            .map(String::as_str)
            .zip(values)
            .collect();
        let kind = match S::read(table.name, &columns) {
            Ok((row, unchanged)) => Kind::Row(Change {
                row,
                unchanged,
                deleted,
            }),
            Err(reason) => Kind::Unreadable {
                shown: shown(&columns),
                reason,
            },
        };
        Ok(Some(Item {
            legacy: Some(legacy),
            table: table.name,
            kind,
        }))
    }

    /// Applies `items` (old changes in commit order) in one transaction here, with the position
    /// of the last of them; counts them in `progress` once committed. Run again, from the
    /// start, when the projections maintained inline changed meanwhile.
    async fn apply(
        &self,
        items: &[Item<S::Row>],
        progress: &mut Progress,
    ) -> Result<(), FollowError> {
        let mut refreshes = 0;
        loop {
            match self.apply_once(items).await {
                Ok((applied, refused)) => {
                    progress.applied += applied;
                    progress.refused += refused;
                    return Ok(());
                }
                Err(FollowError::InlineChanged) if refreshes < MAX_INLINE_REFRESHES => {
                    refreshes += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// [`DomainFollower::apply`], once: how many changes were applied and refused.
    async fn apply_once(&self, items: &[Item<S::Row>]) -> Result<(u64, u64), FollowError> {
        let rows = || {
            items.iter().filter_map(|item| match &item.kind {
                Kind::Row(change) => Some(&change.row),
                _ => None,
            })
        };
        let ids: Vec<String> = rows().filter_map(|row| S::aggregate_id(row).ok()).collect();
        let keys: Vec<String> = rows().map(S::key).collect();
        let mut batch = self
            .store
            .batch::<S::Aggregate>(&ids)
            .await
            .map_err(failed("beginning a batch of changes"))?;
        let source = batch
            .read_sources()
            .of(S::DOMAIN)
            .map_err(|e| FollowError::Setup(e.to_string()))?;
        let mut current = S::shown(batch.conn(), source, &keys).await?;
        let mut refusals = Refusals::default();
        let mut applied = 0_u64;
        for item in items {
            match &item.kind {
                Kind::OtherTable => {}
                Kind::Unreadable { shown, reason } => refusals.push(item, shown.clone(), reason),
                Kind::Row(change) => {
                    let key = S::key(&change.row);
                    match self
                        .run(&mut batch, item, change, current.get(&key))
                        .await?
                    {
                        Ok(now) => {
                            applied += 1;
                            if let Some(now) = now {
                                current.insert(key, now);
                            }
                        }
                        Err(reason) => {
                            let row = serde_json::to_value(&change.row).unwrap_or_default();
                            refusals.push(item, row, &reason);
                        }
                    }
                }
            }
        }
        batch
            .append()
            .await
            .map_err(failed("appending a batch of changes"))?;
        let lag = lag_histogram(items, Utc::now());
        let last = items.iter().rev().find_map(|item| item.legacy);
        sqlx::query(
            "WITH refused AS (
                 INSERT INTO follow_refusals (domain, lsn, legacy_table, legacy_row, reason)
                 SELECT $1, r.lsn::pg_lsn, r.legacy_table, r.legacy_row, r.reason
                   FROM unnest($3::text[], $4::jsonb[], $5::text[], $2::text[])
                        AS r (lsn, legacy_row, reason, legacy_table)
             )
             UPDATE follows
                SET lsn = coalesce($6::pg_lsn, lsn),
                    applied = coalesce($7, applied),
                    changes_applied = changes_applied + $8,
                    changes_refused = changes_refused + cardinality($5::text[]),
                    lag_histogram = ARRAY(
                        SELECT coalesce(was, 0) + coalesce(more, 0)
                          FROM unnest(lag_histogram, $9::bigint[]) WITH ORDINALITY
                               AS bucket (was, more, n)
                         ORDER BY n),
                    updated_at = now()
              WHERE domain = $1",
        )
        .bind(&self.follow.domain)
        .bind(
            refusals
                .tables
                .iter()
                .map(|table| match *table {
                    "" => self.follow.legacy_table.clone(),
                    table => format!("public.{table}"),
                })
                .collect::<Vec<_>>(),
        )
        .bind(&refusals.lsns)
        .bind(&refusals.rows)
        .bind(&refusals.reasons)
        .bind(last.map(|legacy| legacy.lsn.to_string()))
        .bind(last.map(|legacy| legacy.index))
        .bind(i64::try_from(applied).unwrap_or(i64::MAX))
        .bind(lag)
        .execute(batch.conn())
        .await?;
        batch
            .commit()
            .await
            .map_err(failed("committing a batch of changes"))?;
        Ok((applied, refusals.reasons.len() as u64))
    }

    /// Stages in `batch` the commands that take the aggregate of `change.row` to the state the
    /// old row shows, from `current` (as Cutover shows it, if it shows it); returns how it then
    /// shows (`None`: not shown), or why the domain refuses the change.
    async fn run(
        &self,
        batch: &mut Batch<S::Aggregate>,
        item: &Item<S::Row>,
        change: &Change<S::Row>,
        current: Option<&S::Shown>,
    ) -> Result<Result<Option<S::Shown>, String>, FollowError> {
        let deleted_at = item
            .legacy
            .and_then(|legacy| postgres_time(legacy.commit_time));
        let id = match S::aggregate_id(&change.row) {
            Ok(id) => id,
            Err(reason) => return Ok(Err(reason)),
        };
        let Some(aggregate) = batch.aggregate(&id) else {
            return Err(FollowError::Setup(format!(
                "a batch of changes did not hold {id}, which it was begun on"
            )));
        };
        let (commands, now) = match S::decide(change, current, aggregate, deleted_at) {
            Ok(decided) => decided,
            Err(reason) => return Ok(Err(reason)),
        };
        let metadata = json!({
            "source": "follow",
            "legacy_table": format!("public.{}", item.table),
            "legacy_lsn": item.legacy.map(|legacy| legacy.lsn.to_string()),
            "legacy_xid": item.legacy.map(|legacy| legacy.xid),
            "legacy_committed_at": item.legacy.and_then(|legacy| postgres_time(legacy.commit_time)),
        });
        for (i, command) in commands.into_iter().enumerate() {
            let mut metadata = metadata.clone();
            metadata["command"] = json!(S::command_name(&command));
            match batch.handle(&id, command, &(), &metadata).await {
                Ok(_) => {}
                Err(CommandError::Rejected(e)) if i == 0 => return Ok(Err(e.to_string())),
                Err(source) => {
                    return Err(FollowError::Command {
                        what: format!("applying a change of {} {id}", S::Aggregate::TYPE),
                        source: Box::new(source),
                    })
                }
            }
        }
        Ok(Ok(now))
    }
}

/// Most times a batch is run again because the projections maintained inline changed.
const MAX_INLINE_REFRESHES: u32 = 3;

impl<S> DomainFollower<S> {
    /// Most messages read from the slot at once (whole transactions: a larger one is read
    /// whole). Every read decodes the slot's log from its start again, which costs tens of
    /// milliseconds whatever it returns, and a transaction of one row change is three
    /// messages: so several batches are read at once.
    fn peek(&self) -> usize {
        5 * self.batch
    }
}

/// A transaction of the stream being read.
struct Tx {
    /// Its commit position.
    lsn: Lsn,
    xid: u32,
    /// Its commit time, in microseconds since 2000.
    commit_time: i64,
    /// Its row changes so far.
    changes: i32,
    /// Its changes up to this one were applied before (all of them: `i32::MAX`).
    skip_through: i32,
}

/// Where a change of the stream stands in the old database's log.
#[derive(Debug, Clone, Copy)]
struct Legacy {
    /// Its transaction's commit position, and its place among that transaction's changes.
    lsn: Lsn,
    index: i32,
    xid: u32,
    /// Its transaction's commit time, in microseconds since 2000.
    commit_time: i64,
}

/// Counts a change of `tx`; where it stands, when it is to be applied (not applied before).
fn next_change(tx: Option<&mut Tx>) -> Option<Legacy> {
    let tx = tx?;
    tx.changes += 1;
    (tx.changes > tx.skip_through).then_some(Legacy {
        lsn: tx.lsn,
        index: tx.changes,
        xid: tx.xid,
        commit_time: tx.commit_time,
    })
}

/// A change to apply: a row of the copy (no position) or of the stream.
struct Item<R> {
    legacy: Option<Legacy>,
    /// The old table changed (empty for a change of no table of the domain's).
    table: &'static str,
    kind: Kind<R>,
}

enum Kind<R> {
    /// A row as it now is.
    Row(Change<R>),
    /// A change that cannot be read as a row: the columns as the stream showed them, and why.
    Unreadable {
        shown: serde_json::Value,
        reason: String,
    },
    /// A change of another table of the publication: only its position counts.
    OtherTable,
}

/// Refused changes of a batch, as `follow_refusals` keeps them.
#[derive(Default)]
struct Refusals {
    lsns: Vec<Option<String>>,
    rows: Vec<serde_json::Value>,
    reasons: Vec<String>,
    /// The old tables changed (empty where no one table: a truncate).
    tables: Vec<&'static str>,
}

impl Refusals {
    fn push<R>(&mut self, item: &Item<R>, row: serde_json::Value, reason: &str) {
        self.lsns
            .push(item.legacy.map(|legacy| legacy.lsn.to_string()));
        self.tables.push(item.table);
        self.rows.push(row);
        self.reasons.push(reason.to_owned());
    }
}

/// How many of `items` (those of the stream) were applied within each of [`LAG_BUCKETS`] of
/// their old commit, at `now`, and in one more bucket, later.
fn lag_histogram<R>(items: &[Item<R>], now: DateTime<Utc>) -> Vec<i64> {
    let mut counts = vec![0_i64; LAG_BUCKETS.len() + 1];
    for legacy in items.iter().filter_map(|item| item.legacy) {
        let Some(committed) = postgres_time(legacy.commit_time) else {
            continue;
        };
        let lag = (now - committed).as_seconds_f64();
        let bucket = LAG_BUCKETS
            .iter()
            .position(|bound| lag <= *bound)
            .unwrap_or(LAG_BUCKETS.len());
        if let Some(count) = counts.get_mut(bucket) {
            *count += 1;
        }
    }
    counts
}

/// A `timestamptz` as the old database writes it in ISO style in UTC
/// (`2026-12-04 21:37:01.123456+00`).
pub(crate) fn timestamp(name: &str, text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("{name} is not a time Cutover can hold: {text:?}"))
}

/// The stream's columns as kept with a refusal.
fn shown(columns: &HashMap<&str, &Value>) -> serde_json::Value {
    columns
        .iter()
        .map(|(name, value)| {
            let value = match value {
                Value::Null => serde_json::Value::Null,
                Value::Unchanged => json!("(unchanged)"),
                Value::Text(text) => json!(text),
            };
            ((*name).to_owned(), value)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Postgres's epoch (2000-01-01 UTC) in microseconds since the Unix epoch.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A time the stream gives (microseconds since Postgres's epoch).
fn postgres_time(micros: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros + POSTGRES_EPOCH_MICROS)
}

/// Makes the slot of `domain` on the old database, after checking what it needs.
async fn create_slot(
    old: &PgPool,
    domain: &str,
    tables: &[&str],
    publication: &str,
) -> Result<(), FollowError> {
    let wal_level: String = sqlx::query_scalar("SHOW wal_level")
        .fetch_one(old)
        .await
        .map_err(legacy)?;
    if wal_level != "logical" {
        return Err(FollowError::Setup(format!(
            "the old database's wal_level is {wal_level}: set it to logical \
             (ALTER SYSTEM SET wal_level = logical) and restart it"
        )));
    }
    for table in tables {
        let published: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables
                             WHERE pubname = $1 AND schemaname = 'public' AND tablename = $2)",
        )
        .bind(publication)
        .bind(table)
        .fetch_one(old)
        .await
        .map_err(legacy)?;
        if !published {
            return Err(FollowError::Setup(format!(
                "the old database has no publication {publication} of table {table}: run there \
                 `CREATE PUBLICATION {publication} FOR TABLE {table};` (or `ALTER PUBLICATION \
                 {publication} ADD TABLE {table};`), and `ALTER TABLE {table} REPLICA IDENTITY \
                 FULL;` so that a deleted row says all its columns"
            )));
        }
    }
    let slot = slot_name(domain);
    let made = sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(&slot)
        .execute(old)
        .await;
    match made {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42710") => {
            Err(FollowError::Setup(format!(
                "the old database has a slot {slot} that Cutover has no record of following \
                 with: remove it with `cutover follow --drop {domain} --legacy-url …` and start \
                 again"
            )))
        }
        Err(e) => Err(legacy(e)),
    }
}

/// Stops following `domain`: removes its slot from the old database (which then keeps no WAL
/// for it) and its row here, with its refusals; waits for a follower's round to end first.
///
/// # Errors
/// A database error.
pub async fn drop_follow(
    store: &EventStore,
    old: &PgPool,
    domain: &str,
) -> Result<bool, FollowError> {
    let mut lock = store.pool().acquire().await?.detach();
    lock_domain(&mut lock, domain).await?;
    let dropped = drop_slot(old, &slot_name(domain)).await?;
    let deleted = sqlx::query("DELETE FROM follows WHERE domain = $1")
        .bind(domain)
        .execute(store.pool())
        .await?
        .rows_affected();
    // Closing the connection releases the lock.
    lock.close().await?;
    Ok(dropped || deleted > 0)
}

/// Removes `slot` from the old database, if it is there; whether it was.
async fn drop_slot(old: &PgPool, slot: &str) -> Result<bool, FollowError> {
    let found: Option<String> =
        sqlx::query_scalar("SELECT slot_name::text FROM pg_replication_slots WHERE slot_name = $1")
            .bind(slot)
            .fetch_optional(old)
            .await
            .map_err(legacy)?;
    if found.is_some() {
        sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(slot)
            .execute(old)
            .await
            .map_err(legacy)?;
    }
    Ok(found.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_shows_what_had_committed_when_it_was_taken() {
        let snapshot = Snapshot::parse("100:105:101,103").unwrap();
        assert!(snapshot.shows(99));
        assert!(snapshot.shows(100));
        assert!(!snapshot.shows(101));
        assert!(snapshot.shows(102));
        assert!(!snapshot.shows(103));
        assert!(!snapshot.shows(105));
        assert!(!Snapshot::default().shows(1));
        // Ids of a later epoch, as the stream gives them in 32 bits.
        let (base, running) = (1_u64 << 32, (1_u64 << 32) + 15);
        let wrapped = Snapshot::parse(&format!("{}:{}:{running}", base + 10, base + 20)).unwrap();
        assert!(wrapped.shows(5));
        assert!(!wrapped.shows(15));
        assert!(wrapped.shows(u32::MAX));
    }

    #[test]
    fn the_lag_quantile_is_the_bound_of_the_bucket_it_falls_in() {
        let mut histogram = vec![0_i64; LAG_BUCKETS.len() + 1];
        assert_eq!(Follow::lag_quantile(&histogram, 0.99), None);
        histogram[4] = 98; // within 0.1 s
        histogram[8] = 1; // within 1 s
        histogram[LAG_BUCKETS.len()] = 1; // later than a minute
        assert_eq!(Follow::lag_quantile(&histogram, 0.98), Some(0.1));
        assert_eq!(Follow::lag_quantile(&histogram, 0.99), Some(1.0));
        assert_eq!(Follow::lag_quantile(&histogram, 1.0), Some(f64::INFINITY));
    }

    #[test]
    fn times_read_as_the_old_database_writes_them() {
        let t = timestamp("t", "2026-12-04 21:37:01.123456+00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-04T21:37:01.123456+00:00");
        assert!(timestamp("t", "2026-12-04 21:37:01+00").is_ok());
        assert!(timestamp("t", "infinity").is_err());
    }
}
