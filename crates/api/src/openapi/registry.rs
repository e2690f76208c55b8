//! The schemas of the registry's rows as the `/admin` routes answer them: the types live in
//! `cutover_projections` (`registry`, `rebuild`), which does not describe itself, so their
//! fields are declared again here, only for the description. The e2e test
//! `the_admin_answers_have_the_described_fields_and_no_others` compares real answers with
//! them, so a field added there and not here fails it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use uuid::Uuid;

use super::ReadSourceName;

/// A projection's state: `live` (maintained inline), `rebuilding` (a rebuild of it was started:
/// running, or interrupted, see its latest job), `retired` (its tables are dropped).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionState {
    Live,
    Rebuilding,
    Retired,
}

/// A registry row.
#[derive(Serialize, ToSchema)]
pub struct Projection {
    pub name: String,
    /// `collections`, `batches` or `competencies`.
    pub domain: String,
    /// The shape its tables hold.
    pub shape: ReadSourceName,
    pub tables: Vec<String>,
    pub version: i32,
    pub state: ProjectionState,
    /// Whether commands update it.
    pub inline_active: bool,
    /// The log position its last rebuild reached.
    pub rebuilt_to: Option<i64>,
    pub changed_at: DateTime<Utc>,
}

/// A projection with its row counts, how far it is, and its latest job.
#[derive(Serialize, ToSchema)]
pub struct ProjectionStatus {
    #[serde(flatten)]
    pub projection: Projection,
    /// Rows in each of its tables (none while retired).
    pub rows: BTreeMap<String, i64>,
    /// The log position its tables reflect: the head of its events while maintained inline,
    /// unknown (`null`) while events that bypassed it are missing (see `lag`).
    pub last_position: Option<i64>,
    /// Events of its aggregate types its tables do not reflect yet.
    pub lag: Option<i64>,
    /// Whether a rebuild of it runs right now (on any instance).
    pub rebuild_running: bool,
    /// Its latest rebuild job, as it is now.
    pub latest_job: Option<Job>,
}

/// What a job is for: `rebuild` replaces the live tables; `verify` builds a scratch copy to
/// compare with them.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Rebuild,
    Verify,
}

/// A job's status: `running`; `interrupted` (recorded running, but no process runs it any
/// more: a rebuild of the same projections resumes it); or how it ended.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Interrupted,
    Succeeded,
    Failed,
    Cancelled,
}

/// How a swap stopped a session that held it up: `cancel` (its query was cancelled) or
/// `terminate` (the session, idle in a transaction, was ended).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    Cancel,
    Terminate,
}

/// A session that held a swap up, as `pg_stat_activity` showed it, and what the swap did to it.
#[derive(Serialize, ToSchema)]
pub struct StoppedSession {
    pub pid: i32,
    pub user: Option<String>,
    pub application: Option<String>,
    pub query_start: Option<DateTime<Utc>>,
    pub state: Option<String>,
    /// Its query, cut to its first 200 characters.
    pub query: Option<String>,
    pub signal: Signal,
}

/// A job (a rebuild's, or a verify's scratch job), with its rate and estimated time left.
#[derive(Serialize, ToSchema)]
pub struct Job {
    pub id: Uuid,
    pub projections: Vec<String>,
    pub purpose: Purpose,
    pub status: JobState,
    pub events_done: i64,
    pub events_total: i64,
    pub position: i64,
    pub swap_hold_ms: Option<f64>,
    /// The sessions its swap stopped because they held it up (readers of the live tables).
    pub swap_stopped: Vec<StoppedSession>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Events per second so far.
    pub events_per_second: f64,
    /// Seconds left at the current rate, while running (none once interrupted).
    pub eta_seconds: Option<f64>,
}

/// Whether a domain's read source may be switched, and why (or why not), with the command that
/// helps.
#[derive(Serialize, ToSchema)]
pub struct Gate {
    pub open: bool,
    pub reason: String,
}

/// One entry of the activity history (a switch of a read source, for one).
#[derive(Serialize, ToSchema)]
pub struct Action {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub action: String,
    pub domain: String,
    /// Who asked: the token's name.
    pub actor: String,
    pub forced: bool,
    /// What else the action recorded (a JSON value).
    pub detail: Value,
}
