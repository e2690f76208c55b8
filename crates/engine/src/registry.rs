//! The projection registry: what each projection is, its state, and each domain's read source.
//! Every admin action (CLI or HTTP, on any instance) reads and changes these rows, so all
//! instances see one truth.

use std::collections::BTreeMap;
use std::fmt;

use crate::admin::{Actor, AdminError};
use crate::read_source::ReadSource;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Why a job builds tables (`rebuild_jobs.purpose`, and its CHECK constraint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, sqlx::Type, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Purpose {
    /// Replace the live tables.
    Rebuild,
    /// Build a scratch copy to compare with the live tables (verify); never swapped in.
    Verify,
}

/// How a swap stopped a session that held it up.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Its running query was cancelled (`pg_cancel_backend`): the query gets an error.
    Cancel,
    /// The session was ended (`pg_terminate_backend`): it sat idle in a transaction.
    Terminate,
}

/// A session that holds a lock on a live table, as `pg_stat_activity` shows it.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, sqlx::FromRow, utoipa::ToSchema,
)]
pub struct Session {
    pub pid: i32,
    pub user: Option<String>,
    pub application: Option<String>,
    pub query_start: Option<chrono::DateTime<chrono::Utc>>,
    pub state: Option<String>,
    /// Its query, cut to its first 200 characters.
    pub query: Option<String>,
}

/// A session that held a swap up, and what the swap did to it (`rebuild_jobs.swap_stopped`,
/// the job's `swap_stopped`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StoppedSession {
    #[serde(flatten)]
    pub session: Session,
    pub signal: Signal,
}

/// A projection's state (`projections.state`, and its CHECK constraint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum ProjectionState {
    /// Maintained inline.
    Live,
    /// A rebuild of it was started (running, or interrupted: see its latest job).
    Rebuilding,
    /// Its tables are dropped.
    Retired,
}

impl fmt::Display for ProjectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.serialize(f)
    }
}

/// A job's status as its row records it (`rebuild_jobs.status`, and its CHECK constraint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum JobStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.serialize(f)
    }
}

/// A job's status as every report gives it (the CLI, the admin API, `/metrics`, the console):
/// its recorded status, except that a job recorded running whose runner is gone is
/// `interrupted`. Never stored: a job's `observed` decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Recorded running, but no process runs it any more (killed, its server restarted, its
    /// connection lost): a rebuild of the same projections resumes it from its checkpoint.
    Interrupted,
    #[serde(untagged)]
    Recorded(JobStatus),
}

impl JobState {
    /// Running now, on some process.
    pub const RUNNING: Self = Self::Recorded(JobStatus::Running);
}

/// `interrupted`, or one of the recorded statuses (utoipa's derive does not read the untagged
/// variant).
impl utoipa::PartialSchema for JobState {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Ref, Type};
        let interrupted = serde_json::to_value(JobState::Interrupted).unwrap_or_default();
        OneOfBuilder::new()
            .description(Some(
                "A job's status: `running`; `interrupted` (recorded running, but no process runs \
                 it any more: a rebuild of the same projections resumes it from its \
                 checkpoint); or how it ended.",
            ))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some([interrupted])),
            )
            .item(Ref::from_schema_name(
                <JobStatus as utoipa::ToSchema>::name(),
            ))
            .into()
    }
}

impl utoipa::ToSchema for JobState {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((
            <JobStatus as utoipa::ToSchema>::name().into_owned(),
            <JobStatus as utoipa::PartialSchema>::schema(),
        ));
    }
}

impl From<JobStatus> for JobState {
    fn from(recorded: JobStatus) -> Self {
        Self::Recorded(recorded)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.serialize(f)
    }
}

/// A registry row.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Projection {
    pub name: String,
    /// `collections`, `batches` or `competencies`.
    pub domain: String,
    /// The shape its tables hold.
    pub shape: ReadSource,
    pub tables: Vec<String>,
    pub version: i32,
    pub state: ProjectionState,
    /// Whether commands update it.
    pub inline_active: bool,
    /// The log position its last rebuild reached.
    pub rebuilt_to: Option<i64>,
    pub changed_at: DateTime<Utc>,
}

/// A job's row (a rebuild's, or a verify's scratch job), with its rate and estimated time left.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Job {
    pub id: Uuid,
    pub projections: Vec<String>,
    pub purpose: Purpose,
    /// Its recorded status, or `interrupted` (see `JobState`).
    #[sqlx(try_from = "JobStatus")]
    pub status: JobState,
    pub events_done: i64,
    pub events_total: i64,
    pub position: i64,
    pub swap_hold_ms: Option<f64>,
    /// The sessions its swap stopped because they held it up (readers of the live tables).
    #[sqlx(json)]
    pub swap_stopped: Vec<StoppedSession>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Events per second so far.
    #[sqlx(default)]
    pub events_per_second: f64,
    /// Seconds left at the current rate, while running (none once interrupted).
    #[sqlx(default)]
    pub eta_seconds: Option<f64>,
}

impl Job {
    /// The job as it is now, as every report gives it: a job recorded running whose runner is
    /// gone is `interrupted` (the one place that decides it); with its rate and, while it
    /// runs, its time left.
    ///
    /// A runner holds the job's session lock ([`runner_alive`]) from before its row says
    /// `running` until after its row says how it ended, and loses it with its connection when
    /// its process dies. So a row that says `running` while no session holds the lock is
    /// interrupted, unless the job ended between the read and the probe: then the row read
    /// again says so.
    ///
    /// # Errors
    /// A database error.
    async fn observed(self, conn: &mut PgConnection) -> Result<Self, sqlx::Error> {
        let job = if self.status == JobState::RUNNING && !runner_alive(&mut *conn, self.id).await? {
            let mut again = job_row(&mut *conn, self.id).await?.unwrap_or(self);
            if again.status == JobState::RUNNING {
                again.status = JobState::Interrupted;
            }
            again
        } else {
            self
        };
        Ok(job.with_rate())
    }

    fn with_rate(mut self) -> Self {
        let end = self.finished_at.unwrap_or(self.updated_at);
        let elapsed = (end - self.started_at).num_milliseconds() as f64 / 1000.0;
        if elapsed > 0.0 {
            self.events_per_second = self.events_done as f64 / elapsed;
        }
        if self.status == JobState::RUNNING && self.events_per_second > 0.0 {
            let left = (self.events_total - self.events_done).max(0) as f64;
            self.eta_seconds = Some(left / self.events_per_second);
        }
        self
    }
}

/// A projection with its row counts, how far it is, and its latest job.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = ProjectionStatus)]
pub struct Status {
    #[serde(flatten)]
    pub projection: Projection,
    /// Rows in each of its tables (none while retired).
    pub rows: BTreeMap<String, i64>,
    /// The log position its tables reflect: the head of its events while maintained inline,
    /// unknown (`null`) while events that bypassed it are missing (see `lag`).
    pub last_position: Option<i64>,
    /// Events of its aggregate types its tables do not reflect yet: while it is maintained
    /// inline, those that reached the log without passing through it (`cutover seed`) since
    /// its tables were last built; while retired, all of them; while it rebuilds, what the job
    /// has left.
    pub lag: Option<i64>,
    /// Whether a rebuild of it runs right now (on any instance): its latest job is `running`.
    pub rebuild_running: bool,
    /// Its latest rebuild job, as it is now (`running`, `interrupted`, or how it ended).
    pub latest_job: Option<Job>,
}

/// A job's row. Runtime SQL: `Job`'s recorded status becomes a state and its JSON column a
/// list, which `query_as!` cannot do.
const SELECT_JOB: &str = "\
SELECT id, projections, purpose, status, events_done, events_total, position, swap_hold_ms,
       swap_stopped, error, started_at, updated_at, finished_at
  FROM rebuild_jobs";

/// Every projection, by domain and shape.
///
/// # Errors
/// A database error.
pub async fn projections<'e>(
    executor: impl sqlx::PgExecutor<'e>,
) -> Result<Vec<Projection>, sqlx::Error> {
    projections_named(executor, None).await
}

/// The projections, or the one named `name`, by domain and shape.
async fn projections_named<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    name: Option<&str>,
) -> Result<Vec<Projection>, sqlx::Error> {
    sqlx::query_as!(
        Projection,
        r#"SELECT name, domain, shape AS "shape: ReadSource", tables, version,
                  state AS "state: ProjectionState", inline_active, rebuilt_to, changed_at
             FROM projections
            WHERE $1::text IS NULL OR name = $1
            ORDER BY domain, shape, name"#,
        name
    )
    .fetch_all(executor)
    .await
}

/// The projection `name`.
///
/// # Errors
/// `UnknownProjection`, or a database error.
pub async fn projection(conn: &mut PgConnection, name: &str) -> Result<Projection, AdminError> {
    projections_named(conn, Some(name))
        .await?
        .pop()
        .ok_or_else(|| AdminError::UnknownProjection(name.to_owned()))
}

/// The row of job `id`, as recorded.
async fn job_row(conn: &mut PgConnection, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query_as(&format!("{SELECT_JOB} WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// The job `id`, as it is now.
///
/// # Errors
/// A database error.
pub async fn job(pool: &PgPool, id: Uuid) -> Result<Option<Job>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    match job_row(&mut conn, id).await? {
        Some(job) => Ok(Some(job.observed(&mut conn).await?)),
        None => Ok(None),
    }
}

/// Every job recorded running (rebuilds and verifies), as it is now: `running`, or
/// `interrupted` (a rebuild of the same projections resumes it from its checkpoint); oldest
/// first.
///
/// # Errors
/// A database error.
pub async fn unfinished_jobs(pool: &PgPool) -> Result<Vec<Job>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let recorded: Vec<Job> = sqlx::query_as(&format!(
        "{SELECT_JOB} WHERE status = $1 ORDER BY started_at"
    ))
    .bind(JobStatus::Running)
    .fetch_all(&mut *conn)
    .await?;
    let mut now = Vec::with_capacity(recorded.len());
    for job in recorded {
        now.push(job.observed(&mut conn).await?);
    }
    Ok(now)
}

/// The rebuild job recorded running whose projections overlap `names` (the newest), running
/// or interrupted.
///
/// # Errors
/// A database error.
pub async fn running_job_of(pool: &PgPool, names: &[String]) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT id FROM rebuild_jobs
          WHERE status = $2 AND purpose = $3 AND projections && $1
          ORDER BY started_at DESC LIMIT 1",
        names,
        JobStatus::Running as _,
        Purpose::Rebuild as _
    )
    .fetch_optional(pool)
    .await
}

/// The session-lock key that a running rebuild of `projection` holds.
pub(crate) fn rebuild_lock_key(projection: &str) -> String {
    format!("cutover:rebuild:{projection}")
}

/// The session-lock key that the runner of job `id` holds while it runs it.
pub(crate) fn job_lock_key(id: Uuid) -> String {
    format!("cutover:job:{id}")
}

/// Whether a process runs job `id`: whether some session of this database holds the job's
/// lock (which its runner holds until the job ends, and loses with its connection when it
/// dies). It reads `pg_locks` and takes no lock itself, so a probe never makes a starting job
/// wait and never leaves a lock behind.
///
/// # Errors
/// A database error.
pub(crate) async fn runner_alive<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    id: Uuid,
) -> Result<bool, sqlx::Error> {
    // A bigint advisory key shows as its high and low 32 bits in classid and objid.
    sqlx::query_scalar!(
        "SELECT EXISTS (
             SELECT 1 FROM pg_locks, (SELECT hashtextextended($1, 0) AS k) AS key
              WHERE locktype = 'advisory' AND granted AND objsubid = 1
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND classid::bigint = (key.k >> 32) & 4294967295
                AND objid::bigint = key.k & 4294967295) AS \"held!\"",
        job_lock_key(id)
    )
    .fetch_one(executor)
    .await
}

/// The status of projection `name`.
///
/// # Errors
/// `UnknownProjection`, or a database error.
pub async fn status(
    pool: &PgPool,
    projectors: &[std::sync::Arc<dyn crate::projection::Projector>],
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
    projectors: &[std::sync::Arc<dyn crate::projection::Projector>],
    name: &str,
) -> Result<Status, AdminError> {
    status_of(pool, projectors, name, false).await
}

async fn status_of(
    pool: &PgPool,
    projectors: &[std::sync::Arc<dyn crate::projection::Projector>],
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
    let head: Option<i64> = sqlx::query_scalar!(
        "SELECT max(position) FROM events WHERE aggregate_type = ANY($1)",
        &types
    )
    .fetch_one(&mut *conn)
    .await?;
    let (last_position, lag) = if projection.inline_active {
        // Commands update it as they append; what it lacks is what reached the log without
        // passing through it (`cutover seed`), until a rebuild.
        let unprojected: i64 =
            sqlx::query_scalar!("SELECT unprojected FROM projections WHERE name = $1", name)
                .fetch_one(&mut *conn)
                .await?;
        let reflects_head = unprojected == 0;
        (reflects_head.then(|| head.unwrap_or(0)), Some(unprojected))
    } else {
        let total: i64 = sqlx::query_scalar!(
            r#"SELECT count(*) AS "count!" FROM events WHERE aggregate_type = ANY($1)"#,
            &types
        )
        .fetch_one(&mut *conn)
        .await?;
        (None, Some(total))
    };
    let latest_job: Option<Job> = sqlx::query_as(&format!(
        "{SELECT_JOB} WHERE $1 = ANY(projections) AND purpose = $2 \
          ORDER BY started_at DESC LIMIT 1"
    ))
    .bind(name)
    .bind(Purpose::Rebuild)
    .fetch_optional(&mut *conn)
    .await?;
    let latest_job = match latest_job {
        Some(job) => Some(job.observed(&mut conn).await?),
        None => None,
    };
    let running = latest_job
        .as_ref()
        .is_some_and(|job| job.status == JobState::RUNNING);
    // While it rebuilds, what it lacks is what the job has left.
    let lag = match &latest_job {
        Some(job) if running => Some((job.events_total - job.events_done).max(0)),
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
pub async fn read_sources(pool: &PgPool) -> Result<Vec<(String, ReadSource)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT domain, source AS "source: ReadSource" FROM read_sources ORDER BY domain"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.domain, r.source)).collect())
}

/// Whether `domain`'s read source may be switched: only after a clean consistency report of the
/// domain, taken after the last rebuild, repair or retirement of any of its projections, and a
/// shadow window since then of enough reads with no mismatch (see shadow reads).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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
    let mut tx = pool.begin().await?;
    let target: Option<(String, bool)> = sqlx::query_as(
        "SELECT name, inline_active FROM projections WHERE domain = $1 AND shape = $2 FOR SHARE",
    )
    .bind(domain)
    .bind(source)
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
            "switching {domain} to {} needs a clean consistency report and a clean shadow \
             window: {}; or force it (recorded)",
            source.as_str(),
            gate.reason
        )));
    }
    sqlx::query!(
        "UPDATE read_sources SET source = $2, changed_at = now() WHERE domain = $1",
        domain,
        source as _
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO admin_actions (action, domain, actor, forced, detail)
         VALUES ('read_source', $1, $2, $3, $4)",
        domain,
        actor.0,
        !gate.open,
        serde_json::json!({ "source": source, "gate": gate })
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(gate)
}

/// One entry of the activity history (a switch of a read source, for one).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Action {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub action: String,
    pub domain: String,
    /// Who asked: the token's name.
    pub actor: String,
    pub forced: bool,
    /// What else the action recorded (a JSON value).
    pub detail: serde_json::Value,
}

/// The newest read-source switch of `domain` in the activity history.
///
/// # Errors
/// A database error.
pub async fn last_switch(pool: &PgPool, domain: &str) -> Result<Option<Action>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, at, action, domain, actor, forced, detail FROM admin_actions
          WHERE domain = $1 AND action = 'read_source' ORDER BY id DESC LIMIT 1",
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
    let free: bool = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0)) AS "free!""#,
        rebuild_lock_key(name)
    )
    .fetch_one(&mut *tx)
    .await?;
    if !free {
        return Err(AdminError::Refused(format!(
            "a rebuild of {name} is running; retire it once the rebuild ends"
        )));
    }
    sqlx::query!("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    sqlx::Executor::execute(&mut *tx, crate::locks::HOLD_APPENDS).await?;
    // The registry row first, as a read-source switch takes it (FOR SHARE) before it writes
    // `read_sources`: a switch to this projection that is under way finishes before the check
    // below reads the read source, and one that starts later sees the projection retired.
    sqlx::query!(
        "SELECT name FROM projections WHERE name = $1 FOR UPDATE",
        name
    )
    .fetch_optional(&mut *tx)
    .await?;
    let projection = projection(&mut tx, name).await?;
    if projection.state == ProjectionState::Retired {
        return Err(AdminError::Refused(format!("{name} is already retired")));
    }
    let read_source: Option<ReadSource> = sqlx::query_scalar!(
        r#"SELECT source AS "source: ReadSource" FROM read_sources WHERE domain = $1"#,
        projection.domain
    )
    .fetch_optional(&mut *tx)
    .await?;
    if read_source == Some(projection.shape) {
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
        "UPDATE projections SET state = $2, inline_active = false, changed_at = now()
          WHERE name = $1
      RETURNING name, domain, shape, tables, version, state, inline_active, rebuilt_to,
                changed_at",
    )
    .bind(name)
    .bind(ProjectionState::Retired)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(retired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_answered_and_printed_with_its_recorded_status_or_interrupted() {
        let answered = |state: JobState| serde_json::to_value(state).ok();
        assert_eq!(answered(JobState::RUNNING), Some("running".into()));
        assert_eq!(
            answered(JobStatus::Cancelled.into()),
            Some("cancelled".into())
        );
        assert_eq!(answered(JobState::Interrupted), Some("interrupted".into()));
        assert_eq!(format!("{:<12}|", JobState::Interrupted), "interrupted |");
        assert_eq!(format!("{:<12}|", ProjectionState::Live), "live        |");
    }
}
