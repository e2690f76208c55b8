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
mod error;
mod follower;
mod follows;
pub mod handover;
pub mod pgoutput;
mod source;

pub use error::FollowError;
pub use follower::{drop_follow, DomainFollower};
pub use follows::{follows, slot_name, Follow, Progress, Snapshot, LAG_BUCKETS, STOPPED_AFTER};

use std::str::FromStr as _;

use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cutover_core::store::EventStore;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use error::legacy;
use follower::create_slot;
use follows::SELECT_FOLLOW;
use source::Source;

/// The domains that can be followed.
pub const FOLLOWED: &[&str] = &["collections", "batches", "competencies"];

/// Default of `--batch`: most changes applied in one transaction here (a larger old
/// transaction is applied in several, each recording how many of its changes it reached; the
/// copy reads as many rows at once).
pub const DEFAULT_BATCH: u16 = 2_000;

/// Default of `--publication`: the publication of the old tables on the old database.
pub const DEFAULT_PUBLICATION: &str = "cutover_follow";

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
    let recorded = sqlx::query!(
        "UPDATE follows SET last_error = $2, last_error_at = now() WHERE domain = $1",
        domain,
        error
    )
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
                // With appends held back: commands under way end first, and those sent after
                // are refused.
                let mut tx = store.pool().begin().await?;
                sqlx::Executor::execute(&mut *tx, cutover_engine::locks::HOLD_APPENDS).await?;
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

#[cfg(test)]
mod tests {
    use super::source::timestamp;
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
