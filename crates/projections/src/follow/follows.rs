//! The `follows` table: a followed domain's row (its slot, publication, the position its
//! follower reached and its lag), the follower lock that lets one follower at a time apply a
//! domain, and what a round of following did.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::pgoutput;

/// The replication slot that follows `domain` on the old database.
pub fn slot_name(domain: &str) -> String {
    format!("cutover_follow_{domain}")
}

/// The class of the advisory lock (with the domain's `hashtext`) a follower holds while it
/// applies, hands over or drops a domain: one at a time per domain, whatever process runs it
/// (a `cutover follow`, a server, a handover).
pub(super) const FOLLOW_LOCK_CLASS: i32 = 0x4355_5446;

/// Takes the follower lock of `domain` on `conn` (a connection of its own: closing it releases
/// the lock), waiting for the follower that holds it to finish its round.
pub(super) async fn lock_domain(conn: &mut PgConnection, domain: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "SELECT pg_advisory_lock($1, hashtext($2))",
        FOLLOW_LOCK_CLASS,
        domain
    )
    .execute(conn)
    .await
    .map(drop)
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

pub(super) const SELECT_FOLLOW: &str = "\
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
    pub(super) fn parse(text: &str) -> Result<Self, pgoutput::DecodeError> {
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

    pub(super) fn taken(&self) -> bool {
        self.0.is_some()
    }

    /// Whether the transaction `xid` (32 bits, as the stream gives it) had committed when the
    /// snapshot was taken: its changes were in the copy.
    pub(super) fn shows(&self, xid: u32) -> bool {
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
