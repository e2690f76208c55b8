//! Rebuilding projections from the log, while commands keep being accepted.
//!
//! A rebuild creates the projections' tables afresh in a schema of its own (from the templates
//! in `cutover_templates`), replays the whole log into them in gap-free order, in batches (each
//! projector writes a batch in a short transaction of its own, in parallel with the others,
//! and the job's progress is recorded after them), catches up with what was appended
//! meanwhile, then swaps: in one short transaction that holds the append lock exclusively (so
//! no append is in flight and new ones wait), it applies the last events, moves the live tables
//! into `<job schema>_old` and the rebuilt ones into `public`; the old tables are dropped after
//! the commit. Every event is applied exactly once: before the swap only the live tables get
//! inline writes; from the swap on only the new ones do. A swap that cannot lock the live
//! tables in time catches up again and retries, [`SWAP_ATTEMPTS`] times in all, then fails.
//!
//! A rebuild holds a session advisory lock per projection for its whole run, so two rebuilds of
//! one projection cannot run at once on any instance, and a killed rebuild releases it with its
//! connection. A failed or interrupted rebuild leaves the live tables as they were; its schema
//! is dropped and the next run starts over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cutover_core::log::{self, Horizon, LogCursor, Read};
use cutover_core::projection::{project_all, Projector};
use cutover_core::store::{StoredEvent, APPEND_LOCK};
use futures_util::future::try_join_all;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::registry::{rebuild_lock_key, AdminError};

/// Events replayed per batch transaction.
pub const BATCH: i64 = 5_000;
/// The swap is attempted once a catch-up batch finds fewer new events than this, so that the
/// final catch-up, done while appends wait, is short.
const SWAP_WHEN_BEHIND_BY: usize = 200;
/// Longest the swap waits for a table lock (readers of the live tables) before giving up and
/// trying again; appends wait at most this long.
const SWAP_LOCK_TIMEOUT: &str = "2s";
const SWAP_ATTEMPTS: u32 = 5;

/// Why a job builds tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Replace the live tables.
    Rebuild,
    /// Build a scratch copy to compare with the live tables (verify); never swapped in.
    Verify,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Self::Rebuild => "rebuild",
            Self::Verify => "verify",
        }
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
    pub events: i64,
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
    started: Instant,
    /// Holds the session locks of a rebuild; dropping it closes it, which releases them.
    _locks: Option<PgConnection>,
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
        let locks = match purpose {
            Purpose::Rebuild => Some(claim(pool, &names).await?),
            Purpose::Verify => None,
        };
        let id = Uuid::now_v7();
        let schema = format!("cutover_job_{}", id.simple());
        let events_total: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = ANY($1)")
                .bind(&types)
                .fetch_one(pool)
                .await?;
        let mut tx = pool.begin().await?;
        if purpose == Purpose::Rebuild {
            let interrupted: Vec<Uuid> = sqlx::query_scalar(
                "UPDATE rebuild_jobs
                    SET status = 'failed', error = 'interrupted', finished_at = now()
                  WHERE status = 'running' AND purpose = 'rebuild' AND projections && $1
              RETURNING id",
            )
            .bind(&names)
            .fetch_all(&mut *tx)
            .await?;
            for old in interrupted {
                drop_schemas(&mut tx, old).await?;
            }
            sqlx::query(
                "UPDATE projections SET state = 'rebuilding', changed_at = now()
                  WHERE name = ANY($1)",
            )
            .bind(&names)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO rebuild_jobs (id, projections, purpose, status, events_total)
             VALUES ($1, $2, $3, 'running', $4)",
        )
        .bind(id)
        .bind(&names)
        .bind(purpose.as_str())
        .bind(events_total)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut *tx)
            .await?;
        for projector in &projectors {
            for table in projector.tables() {
                sqlx::query(&format!(
                    "CREATE TABLE {schema}.{table} (LIKE cutover_templates.{table} INCLUDING ALL)"
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
            started: Instant::now(),
            _locks: locks,
        })
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
    /// `on_progress` after each batch.
    ///
    /// # Errors
    /// A database or projection error; the job's tables are left for the caller to drop.
    pub async fn catch_up(
        &mut self,
        on_progress: &mut impl FnMut(Progress),
    ) -> Result<(), AdminError> {
        loop {
            let applied = self.batch().await?;
            on_progress(self.progress);
            if applied < SWAP_WHEN_BEHIND_BY {
                return Ok(());
            }
        }
    }

    /// One batch: the events, then each projector's rows in a short transaction of its own —
    /// projectors own disjoint tables, so they write in parallel — then the job's progress.
    async fn batch(&mut self) -> Result<usize, AdminError> {
        let read = log::read_safe(&self.pool, self.cursor, BATCH, Some(&self.types)).await?;
        if read.scanned == 0 {
            return Ok(0);
        }
        if !read.events.is_empty() {
            let writes = self.projectors.iter().map(|projector| async {
                let mut tx = self.pool.begin().await?;
                self.write(&mut tx, std::slice::from_ref(projector), &read.events)
                    .await?;
                tx.commit().await?;
                Ok::<_, AdminError>(())
            });
            try_join_all(writes).await?;
        }
        self.advance(&read);
        let mut conn = self.pool.acquire().await?;
        self.record(&mut conn, "running").await?;
        Ok(read.scanned)
    }

    /// Applies what `read` found to the job's tables in `conn`'s transaction and moves the
    /// cursor past everything it looked at.
    async fn apply(&mut self, conn: &mut PgConnection, read: &Read) -> Result<(), AdminError> {
        if !read.events.is_empty() {
            self.write(conn, &self.projectors, &read.events).await?;
        }
        self.advance(read);
        Ok(())
    }

    /// Writes `events` with `projectors` into the job's tables, in `conn`'s transaction.
    async fn write(
        &self,
        conn: &mut PgConnection,
        projectors: &[Arc<dyn Projector>],
        events: &[StoredEvent],
    ) -> Result<(), AdminError> {
        sqlx::query(&format!("SET LOCAL search_path TO {}", self.schema))
            .execute(&mut *conn)
            .await?;
        project_all(projectors, conn, events).await?;
        sqlx::query("SET LOCAL search_path TO DEFAULT")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Moves the cursor past everything `read` looked at.
    fn advance(&mut self, read: &Read) {
        if let Some(cursor) = read.scanned_to {
            self.cursor = cursor;
            self.progress.position = cursor.position;
        }
        self.progress.events_done += i64::try_from(read.events.len()).unwrap_or(i64::MAX);
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
            self.apply(conn, &read).await?;
        }
    }

    /// Rebuilds: catches up, then swaps the tables in.
    ///
    /// # Errors
    /// `RebuildFailed` with the cause; the live tables are untouched and the job is marked
    /// failed.
    pub async fn run(
        mut self,
        mut on_progress: impl FnMut(Progress),
    ) -> Result<Outcome, AdminError> {
        let result = self.run_inner(&mut on_progress).await;
        match result {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                let reason = e.to_string();
                if let Err(cleanup) = self.fail(&reason).await {
                    tracing::error!(error = %cleanup, job = %self.id, "cannot record the failed rebuild");
                }
                Err(AdminError::RebuildFailed {
                    projections: self.names.join(", "),
                    reason,
                })
            }
        }
    }

    async fn run_inner(
        &mut self,
        on_progress: &mut impl FnMut(Progress),
    ) -> Result<Outcome, AdminError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.catch_up(on_progress).await?;
            match self.swap().await {
                Ok(hold) => {
                    on_progress(self.progress);
                    return Ok(Outcome {
                        job_id: self.id,
                        events: self.progress.events_done,
                        elapsed: self.started.elapsed(),
                        swap_hold: hold,
                        position: self.progress.position,
                    });
                }
                Err(AdminError::Database(sqlx::Error::Database(e)))
                    if e.code().as_deref() == Some("55P03") && attempt < SWAP_ATTEMPTS =>
                {
                    tracing::warn!(job = %self.id, attempt, "swap could not lock the live tables in time; retrying");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The swap: appends wait from the moment the exclusive append lock is requested until the
    /// commit; that span is returned.
    async fn swap(&mut self) -> Result<Duration, AdminError> {
        let saved = (self.cursor, self.progress);
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!("SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'"))
            .execute(&mut *tx)
            .await?;
        let held_from = Instant::now();
        let swapped = async {
            sqlx::query(&format!("SELECT pg_advisory_xact_lock({APPEND_LOCK})"))
                .execute(&mut *tx)
                .await?;
            self.finish_in(&mut tx).await?;
            // The live tables are moved aside, not dropped: dropping large tables takes a while,
            // and appends wait until this transaction ends. They are dropped after the commit.
            sqlx::query(&format!("CREATE SCHEMA {}_old", self.schema))
                .execute(&mut *tx)
                .await?;
            for projector in &self.projectors {
                for table in projector.tables() {
                    sqlx::query(&format!(
                        "ALTER TABLE IF EXISTS public.{table} SET SCHEMA {}_old",
                        self.schema
                    ))
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(&format!(
                        "ALTER TABLE {}.{table} SET SCHEMA public",
                        self.schema
                    ))
                    .execute(&mut *tx)
                    .await?;
                    // A new table has no grants: the read-only role reads it again.
                    sqlx::query(&format!("GRANT SELECT ON public.{table} TO cutover_reader"))
                        .execute(&mut *tx)
                        .await?;
                }
            }
            sqlx::query(
                "UPDATE projections
                    SET state = 'live', inline_active = true, version = version + 1,
                        rebuilt_to = $2, changed_at = now()
                  WHERE name = ANY($1)",
            )
            .bind(&self.names)
            .bind(self.progress.position)
            .execute(&mut *tx)
            .await?;
            self.record(&mut tx, "succeeded").await?;
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
        sqlx::query("UPDATE rebuild_jobs SET swap_hold_ms = $2 WHERE id = $1")
            .bind(self.id)
            .bind(hold.as_secs_f64() * 1000.0)
            .execute(&self.pool)
            .await?;
        drop_schemas(&mut *self.pool.acquire().await?, self.id).await?;
        Ok(hold)
    }

    /// Records the job's progress, and its end when `status` is not `running`.
    async fn record(&self, conn: &mut PgConnection, status: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE public.rebuild_jobs
                SET status = $4, events_done = $2, position = $3,
                    events_total = greatest(events_total, $2), updated_at = now(),
                    finished_at = CASE WHEN $4 = 'running' THEN NULL ELSE now() END
              WHERE id = $1",
        )
        .bind(self.id)
        .bind(self.progress.events_done)
        .bind(self.progress.position)
        .bind(status)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Marks the job failed, gives the projections their state back and drops the job's
    /// tables.
    async fn fail(&self, reason: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE rebuild_jobs SET status = 'failed', error = $2, finished_at = now(),
                    updated_at = now()
              WHERE id = $1",
        )
        .bind(self.id)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        if self.purpose == Purpose::Rebuild {
            sqlx::query(
                "UPDATE projections
                    SET state = CASE WHEN inline_active THEN 'live' ELSE 'retired' END,
                        changed_at = now()
                  WHERE name = ANY($1) AND state = 'rebuilding'",
            )
            .bind(&self.names)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// Ends a scratch job, failed or not: records it and drops its tables.
    ///
    /// # Errors
    /// A database error.
    pub async fn discard(self, failure: Option<&str>) -> Result<(), sqlx::Error> {
        match failure {
            None => {
                let mut conn = self.pool.acquire().await?;
                self.record(&mut conn, "succeeded").await?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
            Some(reason) => self.fail(reason).await,
        }
    }
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
        let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(rebuild_lock_key(name))
            .fetch_one(&mut conn)
            .await?;
        if !free {
            for held in taken {
                sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                    .bind(rebuild_lock_key(held))
                    .execute(&mut conn)
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
