//! The projection registry: what each projection is, its state, and each domain's read source.
//! Every admin action (CLI or HTTP, on any instance) reads and changes these rows, so all
//! instances see one truth.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cutover_core::read_source::ReadSource;
use cutover_core::store::APPEND_LOCK;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// An admin action could not be done.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no projection named {0:?}")]
    UnknownProjection(String),
    #[error("no domain named {0:?}; the domains are collections, batches and competencies")]
    UnknownDomain(String),
    #[error("{0}")]
    Refused(String),
    /// The request names something that does not exist (an aggregate with no events).
    #[error("{0}")]
    NotFound(String),
    /// The request breaks a rule of the action.
    #[error("{0}")]
    Invalid(String),
    #[error("rebuild job {0} was cancelled")]
    Cancelled(Uuid),
    #[error("rebuild of {projections} failed: {reason}")]
    RebuildFailed { projections: String, reason: String },
    #[error(transparent)]
    Projection(#[from] cutover_core::projection::ProjectionError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A bug, not a fault of the request: a task of the job ended without its result.
    #[error("{0}")]
    Broken(String),
}

/// A registry row.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Projection {
    pub name: String,
    pub domain: String,
    pub shape: String,
    pub tables: Vec<String>,
    pub version: i32,
    pub state: String,
    pub inline_active: bool,
    pub rebuilt_to: Option<i64>,
    pub changed_at: DateTime<Utc>,
}

/// A rebuild job's row, with its rate and estimated time left.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Job {
    pub id: Uuid,
    pub projections: Vec<String>,
    pub purpose: String,
    pub status: String,
    pub events_done: i64,
    pub events_total: i64,
    pub position: i64,
    pub swap_hold_ms: Option<f64>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Events per second so far.
    #[sqlx(default)]
    pub events_per_second: f64,
    /// Seconds left at the current rate, while running.
    #[sqlx(default)]
    pub eta_seconds: Option<f64>,
}

impl Job {
    fn with_rate(mut self) -> Self {
        let end = self.finished_at.unwrap_or(self.updated_at);
        let elapsed = (end - self.started_at).num_milliseconds() as f64 / 1000.0;
        if elapsed > 0.0 {
            self.events_per_second = self.events_done as f64 / elapsed;
        }
        if self.status == "running" && self.events_per_second > 0.0 {
            let left = (self.events_total - self.events_done).max(0) as f64;
            self.eta_seconds = Some(left / self.events_per_second);
        }
        self
    }
}

/// A projection with its row counts, how far it is, and its latest job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    #[serde(flatten)]
    pub projection: Projection,
    /// Rows in each of its tables (none while retired).
    pub rows: BTreeMap<String, i64>,
    /// The log position its tables reflect: the head of its events while maintained inline.
    pub last_position: Option<i64>,
    /// Events of its aggregate types its tables do not reflect yet.
    pub lag: Option<i64>,
    /// Whether a rebuild of it runs right now (on any instance).
    pub rebuild_running: bool,
    pub latest_job: Option<Job>,
}

const SELECT_PROJECTIONS: &str = "\
SELECT name, domain, shape, tables, version, state, inline_active, rebuilt_to, changed_at
  FROM projections";

const SELECT_JOB: &str = "\
SELECT id, projections, purpose, status, events_done, events_total, position, swap_hold_ms,
       error, started_at, updated_at, finished_at
  FROM rebuild_jobs";

/// Every projection, by domain and shape.
///
/// # Errors
/// A database error.
pub async fn projections<'e>(
    executor: impl sqlx::PgExecutor<'e>,
) -> Result<Vec<Projection>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{SELECT_PROJECTIONS} ORDER BY domain, shape, name"
    ))
    .fetch_all(executor)
    .await
}

/// The projection `name`.
///
/// # Errors
/// `UnknownProjection`, or a database error.
pub async fn projection(conn: &mut PgConnection, name: &str) -> Result<Projection, AdminError> {
    sqlx::query_as(&format!("{SELECT_PROJECTIONS} WHERE name = $1"))
        .bind(name)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| AdminError::UnknownProjection(name.to_owned()))
}

/// The job `id`.
///
/// # Errors
/// A database error.
pub async fn job(pool: &PgPool, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
    let job: Option<Job> = sqlx::query_as(&format!("{SELECT_JOB} WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(job.map(Job::with_rate))
}

/// The rebuild jobs that run now: those marked running that reported progress in the last 30
/// seconds (a job whose process died stays marked running, but stops reporting).
///
/// # Errors
/// A database error.
pub async fn running_jobs(pool: &PgPool) -> Result<Vec<Job>, sqlx::Error> {
    let jobs: Vec<Job> = sqlx::query_as(&format!(
        "{SELECT_JOB} WHERE status = 'running' AND updated_at > now() - interval '30 seconds'"
    ))
    .fetch_all(pool)
    .await?;
    Ok(jobs.into_iter().map(Job::with_rate).collect())
}

/// The rebuild job marked running whose projections overlap `names` (the newest), running or
/// interrupted.
///
/// # Errors
/// A database error.
pub async fn running_job_of(pool: &PgPool, names: &[String]) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM rebuild_jobs
          WHERE status = 'running' AND purpose = 'rebuild' AND projections && $1
          ORDER BY started_at DESC LIMIT 1",
    )
    .bind(names)
    .fetch_optional(pool)
    .await
}

/// The rebuild jobs marked running that no process runs any more (killed, or their server
/// restarted): `cutover rebuild` of the same projections resumes each from its checkpoint.
///
/// # Errors
/// A database error.
pub async fn interrupted_jobs(pool: &PgPool) -> Result<Vec<Job>, sqlx::Error> {
    let marked: Vec<Job> = sqlx::query_as(&format!(
        "{SELECT_JOB} WHERE status = 'running' AND purpose = 'rebuild' ORDER BY started_at"
    ))
    .fetch_all(pool)
    .await?;
    let mut interrupted = Vec::new();
    for job in marked {
        let mut running = false;
        for name in &job.projections {
            running |= rebuild_running(pool, name).await?;
        }
        if !running {
            interrupted.push(job);
        }
    }
    Ok(interrupted)
}

/// The session-lock key that a running rebuild of `projection` holds.
pub(crate) fn rebuild_lock_key(projection: &str) -> String {
    format!("cutover:rebuild:{projection}")
}

/// Whether a rebuild of `projection` runs (anywhere): whether some session of this database
/// holds its lock. It reads `pg_locks` and takes no lock itself, so a probe never makes a
/// starting rebuild be refused and never leaves a lock behind.
///
/// # Errors
/// A database error.
pub async fn rebuild_running<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    projection: &str,
) -> Result<bool, sqlx::Error> {
    // A bigint advisory key shows as its high and low 32 bits in classid and objid.
    sqlx::query_scalar(
        "SELECT EXISTS (
             SELECT 1 FROM pg_locks, (SELECT hashtextextended($1, 0) AS k) AS key
              WHERE locktype = 'advisory' AND granted AND objsubid = 1
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND classid::bigint = (key.k >> 32) & 4294967295
                AND objid::bigint = key.k & 4294967295)",
    )
    .bind(rebuild_lock_key(projection))
    .fetch_one(executor)
    .await
}

/// The status of projection `name`.
///
/// # Errors
/// `UnknownProjection`, or a database error.
pub async fn status(
    pool: &PgPool,
    projectors: &[std::sync::Arc<dyn cutover_core::projection::Projector>],
    name: &str,
) -> Result<Status, AdminError> {
    status_of(pool, projectors, name, true).await
}

/// The status of projection `name` without its row counts (`rows` is empty): how far it is
/// and its latest job, without a scan of its tables.
///
/// # Errors
/// `UnknownProjection`, or a database error.
pub async fn progress(
    pool: &PgPool,
    projectors: &[std::sync::Arc<dyn cutover_core::projection::Projector>],
    name: &str,
) -> Result<Status, AdminError> {
    status_of(pool, projectors, name, false).await
}

async fn status_of(
    pool: &PgPool,
    projectors: &[std::sync::Arc<dyn cutover_core::projection::Projector>],
    name: &str,
    count_rows: bool,
) -> Result<Status, AdminError> {
    let mut conn = pool.acquire().await?;
    let projection = projection(&mut conn, name).await?;
    let mut rows = BTreeMap::new();
    if projection.inline_active && count_rows {
        for table in &projection.tables {
            let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM public.{table}"))
                .fetch_one(&mut *conn)
                .await?;
            rows.insert(table.clone(), count);
        }
    }
    let types: Vec<String> = projectors
        .iter()
        .find(|p| p.name() == name)
        .map(|p| {
            p.aggregate_types()
                .iter()
                .map(|t| (*t).to_owned())
                .collect()
        })
        .unwrap_or_default();
    let head: Option<i64> =
        sqlx::query_scalar("SELECT max(position) FROM events WHERE aggregate_type = ANY($1)")
            .bind(&types)
            .fetch_one(&mut *conn)
            .await?;
    let (last_position, lag) = if projection.inline_active {
        (Some(head.unwrap_or(0)), Some(0))
    } else {
        let total: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = ANY($1)")
                .bind(&types)
                .fetch_one(&mut *conn)
                .await?;
        (None, Some(total))
    };
    let running = rebuild_running(&mut *conn, name).await?;
    let latest_job: Option<Job> = sqlx::query_as(&format!(
        "{SELECT_JOB} WHERE $1 = ANY(projections) AND purpose = 'rebuild' \
          ORDER BY started_at DESC LIMIT 1"
    ))
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    let latest_job = latest_job.map(Job::with_rate);
    // While it rebuilds, what it lacks is what the job has left.
    let lag = match &latest_job {
        Some(job) if running && job.status == "running" => {
            Some((job.events_total - job.events_done).max(0))
        }
        _ => lag,
    };
    Ok(Status {
        projection,
        rows,
        last_position,
        lag,
        rebuild_running: running,
        latest_job,
    })
}

/// Each domain's read source.
///
/// # Errors
/// A database error.
pub async fn read_sources(pool: &PgPool) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT domain, source FROM read_sources ORDER BY domain")
        .fetch_all(pool)
        .await
}

/// Whether `domain`'s read source may be switched: only after a clean consistency report of the
/// domain, taken after the last rebuild, repair or retirement of any of its projections, and a
/// shadow window since then of enough reads with no mismatch (`crate::shadow`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gate {
    pub open: bool,
    /// The report that opens it, or what is missing or failing; with the command that helps.
    pub reason: String,
}

/// What `gate` reads of a kept report (`crate::verify::Report` as stored).
#[derive(Debug, serde::Deserialize)]
struct KeptReport {
    difference_count: usize,
    differences: Vec<KeptDifference>,
}

#[derive(Debug, serde::Deserialize)]
struct KeptDifference {
    /// A projection's name, or a domain's two as `legacy/new`.
    projection: String,
}

/// The latest report naming `domain`, as `gate` reads it.
type ReportRow = (i64, DateTime<Utc>, sqlx::types::Json<KeptReport>);

/// The switch gate of `domain` (see [`Gate`]).
///
/// # Errors
/// A database error.
pub async fn gate(conn: &mut PgConnection, domain: &str) -> Result<Gate, sqlx::Error> {
    let (changed, names): (Option<DateTime<Utc>>, Vec<String>) = sqlx::query_as(
        "SELECT max(changed_at), coalesce(array_agg(name), '{}') FROM projections WHERE domain = $1",
    )
    .bind(domain)
    .fetch_one(&mut *conn)
    .await?;
    let report: Option<ReportRow> = sqlx::query_as(
        "SELECT id, checked_at, report FROM consistency_reports
          WHERE report -> 'domains' ? $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(domain)
    .fetch_optional(&mut *conn)
    .await?;
    let closed = |reason: String| Gate {
        open: false,
        reason,
    };
    let Some((id, checked_at, report)) = report else {
        return Ok(closed(format!(
            "no consistency report of {domain} yet: run `cutover verify {domain}`"
        )));
    };
    if changed.is_some_and(|changed| checked_at <= changed) {
        return Ok(closed(format!(
            "the latest consistency report of {domain} (#{id}, {checked_at}) is older than the \
             last rebuild, repair or retirement of its projections: run `cutover verify {domain}`"
        )));
    }
    let listed_all = report.differences.len() == report.difference_count;
    let own = report
        .differences
        .iter()
        .filter(|d| {
            d.projection
                .split('/')
                .any(|p| names.iter().any(|n| n == p))
        })
        .count();
    if own > 0 || (!listed_all && report.difference_count > 0) {
        return Ok(closed(format!(
            "the latest consistency report of {domain} (#{id}, {checked_at}) found differences: \
             repair them and run `cutover verify {domain}` again"
        )));
    }
    if let Some(reason) = crate::shadow::closes_gate(conn, domain).await? {
        return Ok(closed(reason));
    }
    Ok(Gate {
        open: true,
        reason: format!(
            "consistency report #{id} of {domain} ({checked_at}) is clean, and so is its shadow \
             window"
        ),
    })
}

/// Who asks for an action, as the activity history records it.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// Switches what `domain`'s GET routes read. Refused when that shape's projection is retired
/// (its tables do not exist), and while the domain's [`gate`] is closed unless `force`. Every
/// switch is recorded in `admin_actions` with `actor`.
///
/// # Errors
/// `UnknownDomain`, `Refused` (a retired projection, or a closed gate, named), or a database
/// error.
pub async fn set_read_source(
    pool: &PgPool,
    domain: &str,
    source: ReadSource,
    force: bool,
    actor: &Actor,
) -> Result<Gate, AdminError> {
    let shape = source.as_str();
    let mut tx = pool.begin().await?;
    let target: Option<(String, bool)> = sqlx::query_as(
        "SELECT name, inline_active FROM projections WHERE domain = $1 AND shape = $2 FOR SHARE",
    )
    .bind(domain)
    .bind(shape)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((name, live)) = target else {
        return Err(AdminError::UnknownDomain(domain.to_owned()));
    };
    if !live {
        return Err(AdminError::Refused(format!(
            "projection {name} is retired: rebuild it before reading {domain} from it"
        )));
    }
    let gate = gate(&mut tx, domain).await?;
    if !gate.open && !force {
        return Err(AdminError::Refused(format!(
            "switching {domain} to {shape} needs a clean consistency report and a clean shadow \
             window: {}; or force it (recorded)",
            gate.reason
        )));
    }
    sqlx::query("UPDATE read_sources SET source = $2, changed_at = now() WHERE domain = $1")
        .bind(domain)
        .bind(shape)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO admin_actions (action, domain, actor, forced, detail)
         VALUES ('read_source', $1, $2, $3, $4)",
    )
    .bind(domain)
    .bind(&actor.0)
    .bind(!gate.open)
    .bind(serde_json::json!({ "source": shape, "gate": gate }))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(gate)
}

/// One entry of the activity history.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Action {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub action: String,
    pub domain: String,
    pub actor: String,
    pub forced: bool,
    pub detail: serde_json::Value,
}

/// The newest entry of `domain` in the activity history.
///
/// # Errors
/// A database error.
pub async fn last_action(pool: &PgPool, domain: &str) -> Result<Option<Action>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, action, domain, actor, forced, detail FROM admin_actions
          WHERE domain = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(domain)
    .fetch_optional(pool)
    .await
}

/// Stops maintaining projection `name` and drops its tables. Refused while it is its domain's
/// read source or while a rebuild of it runs. Appends wait for the moment it takes.
///
/// # Errors
/// `UnknownProjection`, `Refused`, or a database error.
pub async fn retire(pool: &PgPool, name: &str) -> Result<Projection, AdminError> {
    let mut tx = pool.begin().await?;
    // The rebuild's lock, for this transaction only: no rebuild starts meanwhile, and it is
    // released with the transaction however the request ends.
    let free: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(rebuild_lock_key(name))
            .fetch_one(&mut *tx)
            .await?;
    if !free {
        return Err(AdminError::Refused(format!(
            "a rebuild of {name} is running; retire it once the rebuild ends"
        )));
    }
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("SELECT pg_advisory_xact_lock({APPEND_LOCK})"))
        .execute(&mut *tx)
        .await?;
    // The registry row first, as a read-source switch takes it (FOR SHARE) before it writes
    // `read_sources`: a switch to this projection that is under way finishes before the check
    // below reads the read source, and one that starts later sees the projection retired.
    sqlx::query("SELECT 1 FROM projections WHERE name = $1 FOR UPDATE")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let projection = projection(&mut tx, name).await?;
    if projection.state == "retired" {
        return Err(AdminError::Refused(format!("{name} is already retired")));
    }
    let read_source: Option<String> =
        sqlx::query_scalar("SELECT source FROM read_sources WHERE domain = $1")
            .bind(&projection.domain)
            .fetch_optional(&mut *tx)
            .await?;
    if read_source.as_deref() == Some(projection.shape.as_str()) {
        return Err(AdminError::Refused(format!(
            "{name} is the read source of {}: switch the read source first",
            projection.domain
        )));
    }
    for table in &projection.tables {
        sqlx::query(&format!("DROP TABLE IF EXISTS public.{table}"))
            .execute(&mut *tx)
            .await?;
    }
    let retired: Projection = sqlx::query_as(
        "UPDATE projections SET state = 'retired', inline_active = false, changed_at = now()
          WHERE name = $1
      RETURNING name, domain, shape, tables, version, state, inline_active, rebuilt_to,
                changed_at",
    )
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(retired)
}
