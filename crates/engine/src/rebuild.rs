//! Rebuilding projections from the log, while commands keep being accepted.
//!
//! A rebuild creates the projections' tables afresh in a schema of its own (from the templates
//! in `cutover_templates`), replays the whole log into them in gap-free order, in batches (a
//! batch's rows and the job's progress commit in one transaction, while a task reads and folds
//! the next batch), catches up with what was appended meanwhile, then swaps: in one short transaction that holds the append lock exclusively (so
//! no append is in flight and new ones wait), it applies the last events, moves the live tables
//! into `<job schema>_old` and the rebuilt ones into `public`; the old tables are dropped after
//! the commit. Every event is applied exactly once: before the swap only the live tables get
//! inline writes; from the swap on only the new ones do. A swap that cannot lock the live
//! tables in time (readers of them hold it up) lets appends go, catches up again and retries;
//! once readers have held it up for [`SwapArgs::swap_wait_secs`], [`SwapBlocked`] decides:
//! stop those readers (as pg_repack does) and go on, or fail.
//!
//! A rebuild holds a session advisory lock per projection for its whole run, so two rebuilds of
//! one projection cannot run at once on any instance, and a killed rebuild releases it with its
//! connection. Every job (rebuild or verify) also holds a lock of its own on that connection, by
//! which the registry tells a running job from an interrupted one
//! ([`crate::registry::JobState`]). A failed or interrupted rebuild leaves the live tables as
//! they were. Each batch records the job's checkpoint (its log position) with its rows: a
//! rebuild of the same projections started after an interruption (a killed CLI, a restarted
//! server) resumes the interrupted job from that checkpoint in its schema, so every event is
//! applied once. A failed job's schema is dropped; a cancelled one stops at its next batch and
//! drops its schema.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::log::{self, Horizon, LogCursor, Read, Rows};
use crate::projection::{project_all, table_names, Projector};
use crate::rows::Prepared;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::admin::AdminError;
use crate::registry::{
    job_lock_key, rebuild_lock_key, runner_alive, JobStatus, ProjectionState, Purpose, Session,
    Signal, StoppedSession,
};

/// Events replayed per batch transaction.
pub const BATCH: i64 = 5_000;
/// The swap is attempted once a catch-up batch finds fewer new events than this, so that the
/// final catch-up, done while appends wait, is short.
const SWAP_WHEN_BEHIND_BY: usize = 20;
/// Longest one swap attempt waits for a table lock (readers of the live tables) before it
/// lets appends go and tries again; appends wait at most this long.
const SWAP_LOCK_TIMEOUT: &str = "2s";
/// Default of [`SwapArgs::swap_wait_secs`].
const DEFAULT_SWAP_WAIT_SECS: u64 = 10;
/// How much of a stopped session's query its record keeps, in characters.
const STOPPED_QUERY_CHARS: i32 = 200;
/// How often a rebuild that waits for the horizon looks again.
const HORIZON_WAIT: Duration = Duration::from_secs(1);

/// What a swap does once readers of the live tables have held it up for
/// [`SwapArgs::swap_wait_secs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SwapBlocked {
    /// Stop the sessions that hold it up: cancel their query, or end the session when it sits
    /// idle in a transaction; then the swap goes on. A rebuild does not fail because someone
    /// was reading, unless that session is one this role may not signal (a superuser's).
    #[default]
    ReadersCancel,
    /// Fail the rebuild (the live tables stay as they were), as before this option.
    GiveUp,
}

/// How a swap treats the readers that hold it up: flags (with environment variables) of the
/// server and of the `cutover` commands that rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct SwapArgs {
    /// Seconds readers of the live tables may hold a rebuild's swap up (attempts of at most 2 s
    /// each, appends let go between them) before `--swap-blocked` applies.
    #[arg(long, env = "CUTOVER_SWAP_WAIT_SECS", default_value_t = DEFAULT_SWAP_WAIT_SECS)]
    pub swap_wait_secs: u64,
    /// What a swap held up that long does: `readers-cancel` stops the sessions that hold it up
    /// (cancels their query, ends a session idle in a transaction) and goes on; `give-up`
    /// fails the rebuild.
    #[arg(long, env = "CUTOVER_SWAP_BLOCKED", value_enum, default_value_t = SwapBlocked::default())]
    pub swap_blocked: SwapBlocked,
}

impl Default for SwapArgs {
    fn default() -> Self {
        Self {
            swap_wait_secs: DEFAULT_SWAP_WAIT_SECS,
            swap_blocked: SwapBlocked::default(),
        }
    }
}

impl SwapArgs {
    fn wait(&self) -> Duration {
        Duration::from_secs(self.swap_wait_secs)
    }
}

/// How far a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub events_done: i64,
    pub events_total: i64,
    pub position: i64,
}

/// What a finished rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub job_id: Uuid,
    /// Events the job applied, over every run of it.
    pub events: i64,
    /// Events this run applied (fewer than `events` when it resumed an interrupted job).
    pub replayed: i64,
    /// The checkpoint an interrupted job was resumed from.
    pub resumed_from: Option<i64>,
    pub elapsed: Duration,
    /// How long appends were held back while the tables were swapped in.
    pub swap_hold: Duration,
    pub position: i64,
}

/// A running job: its projections, its schema, how far it is.
pub struct Job {
    pool: PgPool,
    projectors: Vec<Arc<dyn Projector>>,
    names: Vec<String>,
    types: Vec<String>,
    purpose: Purpose,
    id: Uuid,
    schema: String,
    cursor: LogCursor,
    progress: Progress,
    /// Events applied by this run.
    replayed: i64,
    resumed_from: Option<i64>,
    started: Instant,
    /// Holds the job's session lock, and a rebuild's locks of its projections: released by
    /// `release` when the job ends, or with the connection when the process dies.
    locks: Option<PgConnection>,
}

/// Resolves projection names (`all` for every one) to projectors.
///
/// # Errors
/// `UnknownProjection` for a name no projector has.
pub fn select(
    projectors: &[Arc<dyn Projector>],
    names: &[String],
) -> Result<Vec<Arc<dyn Projector>>, AdminError> {
    if names.iter().any(|n| n == "all") {
        return Ok(projectors.to_vec());
    }
    names
        .iter()
        .map(|name| {
            projectors
                .iter()
                .find(|p| p.name() == name)
                .cloned()
                .ok_or_else(|| AdminError::UnknownProjection(name.clone()))
        })
        .collect()
}

impl Job {
    /// Claims `projectors` and prepares empty tables for them in a schema of the job's own.
    ///
    /// # Errors
    /// `Refused` when a rebuild of one of them runs already; a database error.
    pub async fn start(
        pool: &PgPool,
        projectors: Vec<Arc<dyn Projector>>,
        purpose: Purpose,
    ) -> Result<Self, AdminError> {
        let names: Vec<String> = projectors.iter().map(|p| p.name().to_owned()).collect();
        let mut types: Vec<String> = projectors
            .iter()
            .flat_map(|p| p.aggregate_types().iter().map(|t| (*t).to_owned()))
            .collect();
        types.sort();
        types.dedup();
        let mut locks = match purpose {
            Purpose::Rebuild => claim(pool, &names).await?,
            // Detached from the pool, as in `claim`.
            Purpose::Verify => pool.acquire().await?.detach(),
        };
        let events_total: i64 = sqlx::query_scalar!(
            r#"SELECT count(*) AS "count!" FROM events WHERE aggregate_type = ANY($1)"#,
            &types
        )
        .fetch_one(pool)
        .await?;
        if purpose == Purpose::Rebuild {
            sweep_leftovers(pool).await?;
            // Holding the locks, no job of these projections still marked running is running.
            if let Some(job) = Self::resume(pool, &projectors, &names, &types, events_total).await?
            {
                hold(&mut locks, job.id).await?;
                return Ok(Self {
                    locks: Some(locks),
                    ..job
                });
            }
        }
        let id = Uuid::now_v7();
        // Before its row says `running`: from then on, a row that says so without the lock
        // held is an interrupted job.
        hold(&mut locks, id).await?;
        let schema = format!("cutover_job_{}", id.simple());
        let mut tx = pool.begin().await?;
        if purpose == Purpose::Rebuild {
            let interrupted: Vec<Uuid> = sqlx::query_scalar!(
                "UPDATE rebuild_jobs
                    SET status = $2, error = 'interrupted', finished_at = now()
                  WHERE status = $3 AND purpose = $4 AND projections && $1
              RETURNING id",
                &names,
                JobStatus::Failed as _,
                JobStatus::Running as _,
                Purpose::Rebuild as _
            )
            .fetch_all(&mut *tx)
            .await?;
            for old in interrupted {
                drop_schemas(&mut tx, old).await?;
            }
            sqlx::query!(
                "UPDATE projections SET state = $2, changed_at = now()
                  WHERE name = ANY($1)",
                &names,
                ProjectionState::Rebuilding as _
            )
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query!(
            "INSERT INTO rebuild_jobs (id, projections, purpose, status, events_total)
             VALUES ($1, $2, $3, $4, $5)",
            id,
            &names,
            purpose as _,
            JobStatus::Running as _,
            events_total
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut *tx)
            .await?;
        for projector in &projectors {
            for table in table_names(projector.as_ref()) {
                // Autovacuum stays off the job's tables until the swap: an autovacuum of a
                // freshly filled table holds a lock the swap's move must wait for (a second
                // per table, until Postgres cancels the autovacuum), and appends wait with it.
                sqlx::query(&format!(
                    "CREATE TABLE {schema}.{table} (LIKE cutover_templates.{table} INCLUDING ALL)
                       WITH (autovacuum_enabled = false)"
                ))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(Self {
            pool: pool.clone(),
            projectors,
            names,
            types,
            purpose,
            id,
            schema,
            cursor: LogCursor::START,
            progress: Progress {
                events_done: 0,
                events_total,
                position: 0,
            },
            replayed: 0,
            resumed_from: None,
            started: Instant::now(),
            locks: Some(locks),
        })
    }

    /// The interrupted job of exactly these projections, if one has its tables and checkpoint,
    /// taken up again from its checkpoint (the caller holds the projections' locks).
    async fn resume(
        pool: &PgPool,
        projectors: &[Arc<dyn Projector>],
        names: &[String],
        types: &[String],
        events_total: i64,
    ) -> Result<Option<Self>, AdminError> {
        let interrupted: Option<(Uuid, i64, i64)> = sqlx::query_as(
            "SELECT id, position, events_done FROM rebuild_jobs
              WHERE status = $2 AND purpose = $3
                AND projections @> $1 AND projections <@ $1
              ORDER BY started_at DESC LIMIT 1",
        )
        .bind(names)
        .bind(JobStatus::Running)
        .bind(Purpose::Rebuild)
        .fetch_optional(pool)
        .await?;
        let Some((id, position, events_done)) = interrupted else {
            return Ok(None);
        };
        let schema = format!("cutover_job_{}", id.simple());
        let tables: Vec<String> = projectors
            .iter()
            .flat_map(|p| table_names(p.as_ref()).map(|t| format!("{schema}.{t}")))
            .collect();
        let intact: bool = sqlx::query_scalar!(
            r#"SELECT coalesce(bool_and(to_regclass(t) IS NOT NULL), true) AS "intact!"
                 FROM unnest($1::text[]) AS t"#,
            &tables
        )
        .fetch_one(pool)
        .await?;
        let Some(cursor) = log::cursor_at(pool, position).await?.filter(|_| intact) else {
            return Ok(None);
        };
        sqlx::query!(
            "UPDATE rebuild_jobs SET events_total = greatest($2, events_done), updated_at = now()
              WHERE id = $1",
            id,
            events_total
        )
        .execute(pool)
        .await?;
        tracing::info!(job = %id, position, "resuming an interrupted rebuild from its checkpoint");
        Ok(Some(Self {
            pool: pool.clone(),
            projectors: projectors.to_vec(),
            names: names.to_vec(),
            types: types.to_vec(),
            purpose: Purpose::Rebuild,
            id,
            schema,
            cursor,
            progress: Progress {
                events_done,
                events_total: events_total.max(events_done),
                position,
            },
            replayed: 0,
            resumed_from: Some(position),
            started: Instant::now(),
            locks: None,
        }))
    }

    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The schema the job builds its tables in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub fn projectors(&self) -> &[Arc<dyn Projector>] {
        &self.projectors
    }

    /// Replays the log into the job's tables up to what is safe to read now, calling
    /// `on_progress` after each batch. A task reads and prepares the next batch (its events
    /// folded into statements, on a blocking thread) while this one is written, so that the
    /// fold and Postgres work at the same time.
    ///
    /// # Errors
    /// A database or projection error; the job's tables are left for the caller to drop.
    pub async fn catch_up(
        &mut self,
        on_progress: &mut impl FnMut(Progress),
    ) -> Result<(), AdminError> {
        // One batch waits while one is written: at most three in memory, the one being made
        // included.
        let (sender, mut batches) = tokio::sync::mpsc::channel(1);
        let reader = tokio::spawn(read_ahead(
            self.pool.clone(),
            self.cursor,
            self.types.clone(),
            self.projectors.clone(),
            sender,
        ));
        while let Some(batch) = batches.recv().await {
            self.batch(&batch?).await?;
            on_progress(self.progress);
        }
        reader.await.map_err(|e| {
            AdminError::Broken(format!("the task reading the log ahead ended: {e}"))
        })?;
        Ok(())
    }

    /// One batch, in one transaction: every projector's rows for its events (folded per row, a
    /// few set-based statements whatever the number of events), then the job's checkpoint. A
    /// batch is applied exactly once: an interrupted job resumes after the last batch that
    /// committed.
    async fn batch(&mut self, batch: &Batch) -> Result<(), AdminError> {
        let mut tx = self.pool.begin().await?;
        self.apply(&mut tx, batch).await?;
        self.record(&mut tx, JobStatus::Running).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes `batch` into the job's tables in `conn`'s transaction and moves the cursor past
    /// everything its read looked at.
    async fn apply(&mut self, conn: &mut PgConnection, batch: &Batch) -> Result<(), AdminError> {
        if batch.events > 0 {
            sqlx::query(&format!("SET LOCAL search_path TO {}", self.schema))
                .execute(&mut *conn)
                .await?;
            batch.statements.write(conn).await?;
            sqlx::query!("SET LOCAL search_path TO DEFAULT")
                .execute(&mut *conn)
                .await?;
        }
        if let Some(cursor) = batch.scanned_to {
            self.cursor = cursor;
            self.progress.position = cursor.position;
        }
        self.progress.events_done += batch.events;
        self.replayed += batch.events;
        Ok(())
    }

    /// Applies every event after the cursor, with no horizon: only for a transaction in which
    /// no append can be in flight (it holds the append lock, or its snapshot was taken while the
    /// lock was held).
    ///
    /// # Errors
    /// A database or projection error.
    pub async fn finish_in(&mut self, conn: &mut PgConnection) -> Result<(), AdminError> {
        loop {
            let read = log::read(
                &mut *conn,
                self.cursor,
                BATCH,
                Some(&self.types),
                Horizon::Everything,
            )
            .await?;
            if read.scanned == 0 {
                return Ok(());
            }
            let batch = Batch::of(&self.projectors, read)?;
            self.apply(conn, &batch).await?;
        }
    }

    /// Rebuilds: catches up, then swaps the tables in.
    ///
    /// # Errors
    /// `RebuildFailed` with the cause; the live tables are untouched and the job is marked
    /// failed.
    pub async fn run(
        mut self,
        swap: SwapArgs,
        mut on_progress: impl FnMut(Progress),
    ) -> Result<Outcome, AdminError> {
        let result = match self.run_inner(swap, &mut on_progress).await {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                let reason = e.to_string();
                if let Err(cleanup) = self.fail(&reason).await {
                    tracing::error!(error = %cleanup, job = %self.id, "cannot record the failed rebuild");
                }
                if matches!(e, AdminError::Cancelled(_)) {
                    Err(e)
                } else {
                    Err(AdminError::RebuildFailed {
                        projections: self.names.join(", "),
                        reason,
                    })
                }
            }
        };
        // Only once the job is recorded as ended: a rebuild that starts then finds no
        // interrupted job to resume.
        self.release().await;
        result
    }

    /// Releases the job's session locks now, so that the next rebuild of the same projections
    /// can start at once (closing the connection releases them only when the server has
    /// noticed).
    async fn release(&mut self) {
        if let Some(mut conn) = self.locks.take() {
            let unlocked = sqlx::query!("SELECT pg_advisory_unlock_all()")
                .execute(&mut conn)
                .await;
            if let Err(e) = unlocked {
                tracing::warn!(error = %e, job = %self.id, "cannot release the rebuild's locks; they go with the connection");
            }
            if let Err(e) = sqlx::Connection::close(conn).await {
                tracing::debug!(error = %e, "closing the rebuild's lock connection");
            }
        }
    }

    async fn run_inner(
        &mut self,
        swap: SwapArgs,
        on_progress: &mut impl FnMut(Progress),
    ) -> Result<Outcome, AdminError> {
        // Since when readers of the live tables hold the swap up.
        let mut blocked_since: Option<Instant> = None;
        loop {
            self.catch_up(on_progress).await?;
            self.wait_for_the_horizon(on_progress).await?;
            let attempted_at = Instant::now();
            let waited = blocked_since.map(|since| since.elapsed() >= swap.wait());
            let stop_readers =
                swap.swap_blocked == SwapBlocked::ReadersCancel && waited == Some(true);
            match self.swap(stop_readers).await {
                Ok(hold) => {
                    on_progress(self.progress);
                    return Ok(Outcome {
                        job_id: self.id,
                        events: self.progress.events_done,
                        replayed: self.replayed,
                        resumed_from: self.resumed_from,
                        elapsed: self.started.elapsed(),
                        swap_hold: hold,
                        position: self.progress.position,
                    });
                }
                Err(AdminError::Database(sqlx::Error::Database(e)))
                    if e.code().as_deref() == Some("55P03") =>
                {
                    let since = *blocked_since.get_or_insert(attempted_at);
                    if swap.swap_blocked == SwapBlocked::GiveUp && since.elapsed() >= swap.wait() {
                        return Err(AdminError::Database(sqlx::Error::Database(e)));
                    }
                    tracing::warn!(job = %self.id, held_up_ms = since.elapsed().as_millis(), "readers of the live tables held the swap up; retrying");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits while an old transaction holds the log's horizon back with more than a few events
    /// committed behind it: the swap applies those while appends wait, so it would hold them
    /// for as long as that backlog takes. Catches up meanwhile; a cancel is noticed.
    async fn wait_for_the_horizon(
        &mut self,
        on_progress: &mut impl FnMut(Progress),
    ) -> Result<(), AdminError> {
        let mut waited = 0_u32;
        while log::held_back_count(&self.pool).await? > SWAP_WHEN_BEHIND_BY as i64 {
            if waited.is_multiple_of(30) {
                let blocker = log::horizon_blocker(&self.pool).await?;
                tracing::warn!(job = %self.id, ?blocker, "the swap waits: an old transaction holds the log's horizon back");
            }
            waited += 1;
            tokio::time::sleep(HORIZON_WAIT).await;
            self.catch_up(on_progress).await?;
            self.record(&mut *self.pool.acquire().await?, JobStatus::Running)
                .await?;
        }
        Ok(())
    }

    /// The swap: appends wait from the moment the exclusive append lock is requested until the
    /// commit; that span is returned. With `stop_readers`, the sessions that hold a lock on a
    /// live table are stopped first ([`Self::stop_readers`]).
    async fn swap(&mut self, stop_readers: bool) -> Result<Duration, AdminError> {
        let saved = (self.cursor, self.progress);
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!("SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'"))
            .execute(&mut *tx)
            .await?;
        let held_from = Instant::now();
        let swapped = async {
            sqlx::Executor::execute(&mut *tx, crate::locks::HOLD_APPENDS).await?;
            if stop_readers {
                self.stop_readers(&mut tx).await?;
            }
            self.finish_in(&mut tx).await?;
            // The live tables are moved aside, not dropped: dropping large tables takes a while,
            // and appends wait until this transaction ends. They are dropped after the commit.
            // One round trip for every move (fixed names, no parameters): appends wait for it.
            let mut moves = format!("CREATE SCHEMA {}_old;", self.schema);
            for table in self.projectors.iter().flat_map(|p| table_names(p.as_ref())) {
                moves.push_str(&format!(
                    "ALTER TABLE IF EXISTS public.{table} SET SCHEMA {schema}_old;
                     ALTER TABLE {schema}.{table} SET SCHEMA public;
                     ALTER TABLE public.{table} RESET (autovacuum_enabled);
                     GRANT SELECT ON public.{table} TO cutover_reader;",
                    schema = self.schema
                ));
            }
            // (A new table has no grants: the read-only role reads it again.)
            sqlx::Executor::execute(&mut *tx, moves.as_str()).await?;
            sqlx::query!(
                "UPDATE projections
                    SET state = $3, inline_active = true, version = version + 1,
                        rebuilt_to = $2, unprojected = 0, changed_at = now()
                  WHERE name = ANY($1)",
                &self.names,
                self.progress.position,
                ProjectionState::Live as _
            )
            .execute(&mut *tx)
            .await?;
            self.record(&mut tx, JobStatus::Succeeded).await?;
            Ok::<_, AdminError>(())
        }
        .await;
        if let Err(e) = swapped {
            // Nothing of the swap committed: the events it applied will be read again.
            (self.cursor, self.progress) = saved;
            return Err(e);
        }
        tx.commit().await?;
        let hold = held_from.elapsed();
        sqlx::query!(
            "UPDATE rebuild_jobs SET swap_hold_ms = $2 WHERE id = $1",
            self.id,
            hold.as_secs_f64() * 1000.0
        )
        .execute(&self.pool)
        .await?;
        drop_schemas(&mut *self.pool.acquire().await?, self.id).await?;
        Ok(hold)
    }

    /// Stops the sessions other than the swap's own (`swap`, which holds the append lock, so
    /// no command is in flight) that hold a lock on a live table of the job: cancels a
    /// session's query, or ends a session that sits idle in a transaction (a cancelled query
    /// leaves its transaction holding its locks until it rolls back: the next attempt ends
    /// it). Names each in the log and in the job's row, at once (whether the swap commits or
    /// not).
    ///
    /// # Errors
    /// `Refused` when this role may not signal one of them (a superuser's session, or no
    /// `pg_signal_backend`); a database error.
    async fn stop_readers(&self, swap: &mut PgConnection) -> Result<(), AdminError> {
        let own: i32 = sqlx::query_scalar!(r#"SELECT pg_backend_pid() AS "pid!""#)
            .fetch_one(&mut *swap)
            .await?;
        let tables: Vec<&str> = self
            .projectors
            .iter()
            .flat_map(|p| table_names(p.as_ref()))
            .collect();
        let holders: Vec<Session> = sqlx::query_as(
            "SELECT a.pid, a.usename::text AS user, a.application_name AS application,
                    a.query_start, a.state, left(a.query, $3) AS query
               FROM pg_stat_activity AS a
              WHERE a.pid <> $2
                AND a.pid IN (SELECT l.pid FROM pg_locks AS l
                               WHERE l.locktype = 'relation' AND l.granted
                                 AND l.database = (SELECT oid FROM pg_database
                                                    WHERE datname = current_database())
                                 AND l.relation IN (SELECT to_regclass('public.' || t)::oid
                                                      FROM unnest($1::text[]) AS t))
              ORDER BY a.pid",
        )
        .bind(&tables)
        .bind(own)
        .bind(STOPPED_QUERY_CHARS)
        .fetch_all(&self.pool)
        .await?;
        let mut stopped = Vec::new();
        for holder in holders {
            let idle_in_transaction = holder
                .state
                .as_deref()
                .is_some_and(|s| s.starts_with("idle in transaction"));
            let (signal, function) = if idle_in_transaction {
                (Signal::Terminate, "pg_terminate_backend")
            } else {
                (Signal::Cancel, "pg_cancel_backend")
            };
            let signalled = sqlx::query_scalar(&format!("SELECT {function}($1)"))
                .bind(holder.pid)
                .fetch_one(&self.pool)
                .await;
            match signalled {
                // false: the session ended meanwhile.
                Ok(false) => continue,
                Ok(true) => {}
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
                    return Err(AdminError::Refused(format!(
                        "the swap is held up by session {} (user {}), which this role may not \
                         signal: {}",
                        holder.pid,
                        holder.user.as_deref().unwrap_or("?"),
                        e.message()
                    )));
                }
                Err(e) => return Err(e.into()),
            }
            tracing::warn!(
                job = %self.id,
                pid = holder.pid,
                user = holder.user.as_deref().unwrap_or(""),
                application = holder.application.as_deref().unwrap_or(""),
                query_start = ?holder.query_start,
                query = holder.query.as_deref().unwrap_or(""),
                ?signal,
                "the swap stopped a session that held it up"
            );
            stopped.push(StoppedSession {
                session: holder,
                signal,
            });
        }
        if !stopped.is_empty() {
            sqlx::query!(
                "UPDATE rebuild_jobs SET swap_stopped = swap_stopped || $2, updated_at = now()
                  WHERE id = $1",
                self.id,
                sqlx::types::Json(&stopped) as _
            )
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// Records the job's progress (its checkpoint), and its end when `status` is not
    /// `running`.
    ///
    /// # Errors
    /// `Cancelled` when the job was cancelled meanwhile; a database error.
    async fn record(&self, conn: &mut PgConnection, status: JobStatus) -> Result<(), AdminError> {
        let recorded = sqlx::query!(
            "UPDATE public.rebuild_jobs
                SET status = $4, events_done = $2, position = $3,
                    events_total = greatest(events_total, $2), updated_at = now(),
                    finished_at = CASE WHEN $4 = $5 THEN NULL ELSE now() END
              WHERE id = $1 AND status = $5",
            self.id,
            self.progress.events_done,
            self.progress.position,
            status as _,
            JobStatus::Running as _
        )
        .execute(conn)
        .await?;
        if recorded.rows_affected() == 0 {
            return Err(AdminError::Cancelled(self.id));
        }
        Ok(())
    }

    /// Marks the job failed, gives the projections their state back and drops the job's
    /// tables.
    async fn fail(&self, reason: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // A cancelled job stays cancelled.
        sqlx::query!(
            "UPDATE rebuild_jobs SET status = $3, error = $2, finished_at = now(),
                    updated_at = now()
              WHERE id = $1 AND status = $4",
            self.id,
            reason,
            JobStatus::Failed as _,
            JobStatus::Running as _
        )
        .execute(&mut *tx)
        .await?;
        if self.purpose == Purpose::Rebuild {
            give_back(&mut tx, &self.names).await?;
        }
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// Ends a scratch job, failed or not: records it, drops its tables and releases its lock.
    ///
    /// # Errors
    /// A database error.
    pub async fn discard(mut self, failure: Option<&str>) -> Result<(), AdminError> {
        let ended = match failure {
            None => self.succeed_scratch().await,
            Some(reason) => self.fail(reason).await.map_err(AdminError::from),
        };
        // Only once the job is recorded as ended, as in `run`.
        self.release().await;
        ended
    }

    async fn succeed_scratch(&self) -> Result<(), AdminError> {
        let mut conn = self.pool.acquire().await?;
        self.record(&mut conn, JobStatus::Succeeded).await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Cancels rebuild job `id`: it stops at its next batch (or, when no process runs it any
/// more, at once) and its tables are dropped; the live tables stay as they are.
///
/// # Errors
/// `NotFound` for an unknown job, `Refused` for one that is not running, a database error.
pub async fn cancel(pool: &PgPool, id: Uuid) -> Result<Vec<String>, AdminError> {
    let mut tx = pool.begin().await?;
    let cancelled: Option<Vec<String>> = sqlx::query_scalar!(
        "UPDATE rebuild_jobs
            SET status = $2, error = 'cancelled', finished_at = now(), updated_at = now()
          WHERE id = $1 AND purpose = $3 AND status = $4
      RETURNING projections",
        id,
        JobStatus::Cancelled as _,
        Purpose::Rebuild as _,
        JobStatus::Running as _
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(names) = cancelled else {
        let status: Option<JobStatus> = sqlx::query_scalar!(
            r#"SELECT status AS "status: JobStatus" FROM rebuild_jobs
                WHERE id = $1 AND purpose = $2"#,
            id,
            Purpose::Rebuild as _
        )
        .fetch_optional(&mut *tx)
        .await?;
        return Err(match status {
            None => AdminError::NotFound(format!("no rebuild job {id}")),
            Some(status) => {
                AdminError::Refused(format!("rebuild job {id} is {status}, not running"))
            }
        });
    };
    if !runner_alive(&mut *tx, id).await? {
        // Interrupted: nobody else will clean up.
        give_back(&mut tx, &names).await?;
        drop_schemas(&mut tx, id).await?;
    }
    tx.commit().await?;
    Ok(names)
}

/// Gives projections `names` that a rebuild left `rebuilding` their state back: live when
/// commands still maintain them, retired otherwise.
async fn give_back(conn: &mut PgConnection, names: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE projections SET state = CASE WHEN inline_active THEN $2 ELSE $3 END,
                changed_at = now()
          WHERE name = ANY($1) AND state = $4",
        names,
        ProjectionState::Live as _,
        ProjectionState::Retired as _,
        ProjectionState::Rebuilding as _
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes the session lock of job `id` on `conn`, the connection its runner keeps until the
/// job ends (see [`crate::registry::JobState`]).
async fn hold(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "SELECT pg_advisory_lock(hashtextextended($1, 0))",
        job_lock_key(id)
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Drops the schemas of jobs that no longer run (tables swapped out by a rebuild whose process
/// died between its commit and their drop, or schemas of jobs that ended otherwise).
async fn sweep_leftovers(pool: &PgPool) -> Result<(), sqlx::Error> {
    let leftovers: Vec<String> = sqlx::query_scalar!(
        r#"SELECT nspname::text AS "nspname!" FROM pg_namespace AS n
          WHERE nspname ~ '^cutover_job_[0-9a-f]{32}(_old)?$'
            AND NOT EXISTS (SELECT 1 FROM rebuild_jobs AS j
                             WHERE j.status = $1
                               AND substr(n.nspname, 13, 32) = replace(j.id::text, '-', ''))"#,
        JobStatus::Running as _
    )
    .fetch_all(pool)
    .await?;
    for schema in leftovers {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Drops what is left of job `id`: its (now empty) schema and the tables it swapped out.
async fn drop_schemas(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    let schema = format!("cutover_job_{}", id.simple());
    for name in [format!("{schema}_old"), schema] {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Takes the rebuild lock of every projection in `names` on one connection, or none of them.
async fn claim(pool: &PgPool, names: &[String]) -> Result<PgConnection, AdminError> {
    // Detached from the pool: a pooled connection would go back with its session locks held.
    let mut conn = pool.acquire().await?.detach();
    let mut taken: Vec<&String> = Vec::new();
    for name in names {
        let free: bool = sqlx::query_scalar!(
            r#"SELECT pg_try_advisory_lock(hashtextextended($1, 0)) AS "free!""#,
            rebuild_lock_key(name)
        )
        .fetch_one(&mut conn)
        .await?;
        if !free {
            for held in taken {
                sqlx::query!(
                    "SELECT pg_advisory_unlock(hashtextextended($1, 0))",
                    rebuild_lock_key(held)
                )
                .fetch_one(&mut conn)
                .await?;
            }
            return Err(AdminError::Refused(format!(
                "a rebuild of {name} is already running"
            )));
        }
        taken.push(name);
    }
    Ok(conn)
}

/// What a rebuild of some projections would do, without doing it.
#[derive(Debug, Clone, PartialEq)]
pub struct DryRun {
    /// The events it would replay (the log holds them now; appends meanwhile add to it).
    pub events: i64,
    /// Each table it would write, with the rows it has now (what the rebuild should
    /// produce, for a live projection).
    pub tables: Vec<(String, i64)>,
    /// The mean rate of the last successful rebuilds, in events per second, if any ran.
    pub recent_rate: Option<f64>,
}

impl DryRun {
    /// The expected duration at the recent rate.
    pub fn expected(&self) -> Option<Duration> {
        let rate = self.recent_rate.filter(|r| *r > 0.0)?;
        Duration::try_from_secs_f64(self.events as f64 / rate).ok()
    }
}

/// Plans a rebuild of `projectors`: events, tables and rows, and the time it should take.
///
/// # Errors
/// A database error.
pub async fn dry_run(
    pool: &PgPool,
    projectors: &[Arc<dyn Projector>],
) -> Result<DryRun, AdminError> {
    let types: Vec<&str> = projectors
        .iter()
        .flat_map(|p| p.aggregate_types().iter().copied())
        .collect();
    let events: i64 = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM events WHERE aggregate_type = ANY($1)"#,
        &types as _
    )
    .fetch_one(pool)
    .await?;
    let mut tables = Vec::new();
    for table in projectors.iter().flat_map(|p| table_names(p.as_ref())) {
        // A retired projection has no live table: nothing to count.
        let exists: bool = sqlx::query_scalar!(
            r#"SELECT to_regclass('public.' || $1) IS NOT NULL AS "exists!""#,
            table
        )
        .fetch_one(pool)
        .await?;
        let rows: i64 = if exists {
            sqlx::query_scalar(&format!("SELECT count(*) FROM public.{table}"))
                .fetch_one(pool)
                .await?
        } else {
            0
        };
        tables.push((table.to_owned(), rows));
    }
    let recent_rate: Option<f64> = sqlx::query_scalar!("SELECT avg(events_done / greatest(extract(epoch FROM finished_at - started_at), 0.001))::float8
           FROM (SELECT events_done, started_at, finished_at FROM rebuild_jobs
                  WHERE purpose = $1 AND status = $2 AND events_done > 0
                  ORDER BY finished_at DESC LIMIT 5) AS recent", Purpose::Rebuild as _, JobStatus::Succeeded as _)
    .fetch_one(pool)
    .await?;
    Ok(DryRun {
        events,
        tables,
        recent_rate,
    })
}

/// A batch of the log made ready to write: its rows' statements, how many events it applies,
/// and how far its read looked.
struct Batch {
    statements: Prepared,
    events: i64,
    scanned_to: Option<LogCursor>,
}

impl Batch {
    /// Folds `read`'s events into statements (no IO).
    fn of(projectors: &[Arc<dyn Projector>], read: Read) -> Result<Self, AdminError> {
        Ok(Self {
            statements: project_all(projectors, &read.events)?.prepare(),
            events: i64::try_from(read.events.len()).unwrap_or(i64::MAX),
            scanned_to: read.scanned_to,
        })
    }
}

/// Reads the log after `after` batch by batch, up to what is safe to read now, and sends each
/// made ready to write; stops after a short batch (the swap's turn), at the end, at the
/// first error (sent), or when nobody listens any more.
async fn read_ahead(
    pool: PgPool,
    mut after: LogCursor,
    types: Vec<String>,
    projectors: Vec<Arc<dyn Projector>>,
    batches: tokio::sync::mpsc::Sender<Result<Batch, AdminError>>,
) {
    let projectors: Arc<[Arc<dyn Projector>]> = projectors.into();
    loop {
        let rows = match Rows::fetch(&pool, after, BATCH, Some(&types), Horizon::Safe).await {
            Ok(rows) if rows.is_empty() => return,
            Ok(rows) => rows,
            Err(e) => {
                // Nobody may listen any more; then there is no one to tell.
                let _ = batches.send(Err(e.into())).await;
                return;
            }
        };
        let last = rows.len() < SWAP_WHEN_BEHIND_BY;
        let projectors = Arc::clone(&projectors);
        let batch = tokio::task::spawn_blocking(move || Batch::of(&projectors, rows.decode()?))
            .await
            .unwrap_or_else(|e| {
                Err(AdminError::Broken(format!(
                    "the thread preparing a batch ended: {e}"
                )))
            });
        let failed = match &batch {
            Ok(batch) => {
                after = batch.scanned_to.unwrap_or(after);
                false
            }
            Err(_) => true,
        };
        if batches.send(batch).await.is_err() || failed || last {
            return;
        }
    }
}
