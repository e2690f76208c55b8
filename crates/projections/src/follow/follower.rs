//! One domain followed from the old database ([`DomainFollower`]): its initial copy under one
//! snapshot, then the stream of its slot, each row change applied through the domain's
//! commands in the transaction that records the position reached; and the slot's making and
//! dropping.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::str::FromStr as _;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cutover_core::store::{Batch, CommandError, EventStore};
use futures_util::TryStreamExt as _;
use serde_json::json;
use sqlx::{Connection as _, PgConnection, PgPool};

use super::error::{failed, legacy, FollowError};
use super::follows::{
    lock_domain, slot_name, Follow, Progress, Snapshot, LAG_BUCKETS, SELECT_FOLLOW,
};
use super::pgoutput::{self, Lsn, Message, Relation, Value};
use super::source::{Change, Source};

/// One domain followed from the old database, its particulars in `S`.
pub struct DomainFollower<S> {
    pub(super) store: EventStore,
    pub(super) old: PgPool,
    pub(super) follow: Follow,
    /// Most changes applied in one transaction here.
    pub(super) batch: usize,
    /// The connection that holds the domain's follower lock during a round (dropped, it
    /// closes, and the lock is released).
    pub(super) lock: Option<PgConnection>,
    pub(super) source: PhantomData<S>,
}

impl<S: Source> DomainFollower<S>
where
    <S::Aggregate as Aggregate>::Error: Send + Sync,
{
    /// [`Self::apply_all`] holding the domain's follower lock.
    pub(super) async fn catch_up(&mut self) -> Result<Progress, FollowError> {
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
    pub(super) async fn lock(&mut self) -> Result<(), FollowError> {
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
    pub(super) async fn unlock(&mut self) {
        if let Some(conn) = &mut self.lock {
            if sqlx::query!("SELECT pg_advisory_unlock_all()")
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
    pub(super) async fn apply_all(&mut self) -> Result<Progress, FollowError> {
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
        sqlx::query!(
            "UPDATE follows SET snapshot = $2, updated_at = now() WHERE domain = $1",
            self.follow.domain,
            snapshot
        )
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
pub(super) const MAX_INLINE_REFRESHES: u32 = 3;

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
pub(super) struct Tx {
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
pub(super) struct Legacy {
    /// Its transaction's commit position, and its place among that transaction's changes.
    lsn: Lsn,
    index: i32,
    xid: u32,
    /// Its transaction's commit time, in microseconds since 2000.
    commit_time: i64,
}

/// Counts a change of `tx`; where it stands, when it is to be applied (not applied before).
pub(super) fn next_change(tx: Option<&mut Tx>) -> Option<Legacy> {
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
pub(super) struct Item<R> {
    legacy: Option<Legacy>,
    /// The old table changed (empty for a change of no table of the domain's).
    table: &'static str,
    kind: Kind<R>,
}

pub(super) enum Kind<R> {
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
pub(super) struct Refusals {
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
pub(super) fn lag_histogram<R>(items: &[Item<R>], now: DateTime<Utc>) -> Vec<i64> {
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

/// The stream's columns as kept with a refusal.
pub(super) fn shown(columns: &HashMap<&str, &Value>) -> serde_json::Value {
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
pub(super) const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A time the stream gives (microseconds since Postgres's epoch).
pub(super) fn postgres_time(micros: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros + POSTGRES_EPOCH_MICROS)
}

/// Makes the slot of `domain` on the old database, after checking what it needs.
pub(super) async fn create_slot(
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
    let deleted = sqlx::query!("DELETE FROM follows WHERE domain = $1", domain)
        .execute(store.pool())
        .await?
        .rows_affected();
    // Closing the connection releases the lock.
    lock.close().await?;
    Ok(dropped || deleted > 0)
}

/// Removes `slot` from the old database, if it is there; whether it was.
pub(super) async fn drop_slot(old: &PgPool, slot: &str) -> Result<bool, FollowError> {
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
