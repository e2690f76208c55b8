//! The admin API: the projection registry, rebuilds (run in the background, progress in the
//! database so every instance reports it), retirement, read sources, and verification.

use std::collections::BTreeMap;

use axum::extract::{Extension, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use cutover_engine::admin::{Actor, AdminError};
use cutover_engine::read_source::ReadSource;
use cutover_engine::rebuild;
use cutover_engine::registry::Purpose;
use cutover_engine::registry::{self, Job, Status};
use cutover_engine::repair;
use cutover_engine::rows::ProjectionError;
use cutover_engine::shadow;
use cutover_engine::verify::{self, Report};
use cutover_projections::follow::{self, FollowError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::bounds;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/projections", get(list))
        .route("/admin/projections/{name}", get(status))
        .route("/admin/projections/{name}/rebuild", post(start_rebuild))
        .route("/admin/projections/{name}/retire", post(retire))
        .route("/admin/projections/{name}/repair", post(repair_aggregates))
        .route("/admin/jobs/{id}", get(job).delete(cancel_job))
        .route("/admin/read-sources", get(read_sources))
        .route("/admin/read-sources/{domain}", put(set_read_source))
        .route("/admin/read-sources/{domain}/gate", get(switch_gate))
        .route("/admin/shadow", get(shadow_windows))
        .route(
            "/admin/shadow/{domain}",
            put(start_shadow).delete(stop_shadow),
        )
        .route("/admin/follows", get(follows))
        .route(
            "/admin/follows/{domain}",
            post(start_follow).delete(stop_follow),
        )
        .route("/admin/follows/{domain}/handover", post(hand_over))
        .route("/admin/consistency", get(consistency))
        .route("/admin/consistency/latest", get(latest_consistency))
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::UnknownProjection(_) | AdminError::UnknownDomain(_) => {
                Self::NotFound(e.to_string())
            }
            AdminError::Refused(reason) => Self::Conflict(reason),
            AdminError::NotFound(what) => Self::NotFound(what),
            AdminError::Invalid(why) => Self::Unprocessable {
                detail: why,
                field: None,
            },
            AdminError::Projection(ProjectionError::LegacyIdTaken { detail, .. }) => {
                Self::Conflict(detail)
            }
            AdminError::Database(db) => db.into(),
            other => Self::Internal(other.into()),
        }
    }
}

#[utoipa::path(
    get,
    path = "/admin/projections",
    operation_id = "listProjections",
    summary = "List the projections",
    tag = "admin",
    description = "Every projection with its status, as `GET /admin/projections/{name}` gives it.",
    params(crate::schemas::ReadHeaders),
    responses(
        (status = 200, description = "the projections", body = Vec<Status>),
        crate::schemas::NotModified,
        crate::schemas::Errors
    )
)]
async fn list(State(state): State<AppState>) -> Result<axum::Json<Vec<Status>>, ApiError> {
    let pool = &state.session;
    let mut all = Vec::new();
    for projection in registry::projections(pool).await? {
        all.push(registry::status(pool, state.store.projectors(), &projection.name).await?);
    }
    Ok(axum::Json(all))
}

#[utoipa::path(
    get,
    path = "/admin/projections/{name}",
    operation_id = "getProjection",
    summary = "Get a projection",
    tag = "admin",
    description = "One projection: its registry row (`state`: `live`, `rebuilding` or `retired`; \
                   `shape`: `legacy` or `new`), its row counts, `last_position`, `lag`, \
                   `rebuild_running` (its latest rebuild job is `running`) and `latest_job`, its \
                   latest rebuild job as `GET /admin/jobs/{id}` gives it.",
    params(("name" = inline(bounds::Projection), Path, description = "the projection"), crate::schemas::ReadHeaders),
    responses(
        (status = 200, description = "the projection", body = Status),
        crate::schemas::NotModified,
        crate::schemas::Errors
    )
)]
async fn status(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<Status>, ApiError> {
    Ok(axum::Json(
        registry::status(&state.session, state.store.projectors(), &name).await?,
    ))
}

/// A rebuild started.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Started {
    job_id: Uuid,
    /// The projections it rebuilds.
    projections: Vec<String>,
    /// Where the job's progress is.
    job: String,
}

/// 202: the rebuild runs in the background on this instance; its progress is in
/// `GET /admin/projections/{name}` and `GET /admin/jobs/{id}` on every instance.
#[utoipa::path(
    post,
    path = "/admin/projections/{name}/rebuild",
    operation_id = "startRebuild",
    summary = "Start a rebuild",
    tag = "admin",
    description = "Starts a rebuild of a projection, or of every one (`all`); 409 while one of them is being rebuilt.",
    params(("name" = inline(bounds::Rebuildable), Path, description = "the projection, or `all`")),
    responses(
        (status = 202, description = "started: `job_id`, `projections` and `job`, the job's path", body = Started, headers(
            ("Location" = String, description = "the projection's path")
        )),
        crate::schemas::Errors, crate::schemas::CommandErrors
    )
)]
async fn start_rebuild(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let selected = rebuild::select(state.store.projectors(), std::slice::from_ref(&name))?;
    let job = rebuild::Job::start(&state.session, selected, Purpose::Rebuild).await?;
    let started = Started {
        job_id: job.id(),
        projections: job
            .projectors()
            .iter()
            .map(|p| p.name().to_owned())
            .collect(),
        job: format!("/admin/jobs/{}", job.id()),
    };
    tokio::spawn(async move {
        match job.run(state.swap, |_| {}).await {
            Ok(outcome) => tracing::info!(
                job = %outcome.job_id,
                events = outcome.events,
                swap_hold_ms = outcome.swap_hold.as_secs_f64() * 1000.0,
                "rebuild finished"
            ),
            Err(AdminError::Cancelled(job)) => tracing::info!(%job, "rebuild cancelled"),
            Err(e) => tracing::error!(error = %e, "rebuild failed"),
        }
    });
    let mut response = (StatusCode::ACCEPTED, axum::Json(started)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/admin/projections/{name}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

#[utoipa::path(
    post,
    path = "/admin/projections/{name}/retire",
    operation_id = "retireProjection",
    summary = "Retire a projection",
    tag = "admin",
    description = "Retires a projection: commands stop updating it and its tables are dropped; 409 while it is its domain's read source or being rebuilt.",
    params(("name" = inline(bounds::Projection), Path, description = "the projection")),
    responses(
        (status = 200, description = "retired", body = registry::Projection),
        crate::schemas::Errors, crate::schemas::CommandErrors
    )
)]
async fn retire(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<registry::Projection>, ApiError> {
    Ok(axum::Json(registry::retire(&state.session, &name).await?))
}

/// Body of `POST /admin/projections/{name}/repair`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RepairBody {
    /// The aggregates whose rows to rebuild in place: collection uuids, batch ids, or subskill
    /// stream ids (`{student_id}_{subject}_{skill_id}_{subskill_id}`, `%`/`_` in a part as
    /// `%25`/`%5F`), as verify's repair commands name them.
    #[schema(value_type = bounds::RepairAggregates)]
    aggregates: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/admin/projections/{name}/repair",
    operation_id = "repairProjection",
    summary = "Repair some aggregates' rows",
    tag = "admin",
    description = "Rebuilds, in place, the rows of some aggregates in a live projection (after \
                   verify found a drift), in one transaction that holds off commands on those \
                   aggregates only; closes the domain's switch gate until the next verify. 404 \
                   for an aggregate without events, 409 for a projection that is not live.",
    params(("name" = inline(bounds::Projection), Path, description = "the projection")),
    request_body = RepairBody,
    responses(
        (status = 200, description = "repaired: the projection, the aggregates and the events \
                                      replayed", body = repair::Repaired),
        crate::schemas::Errors, crate::schemas::CommandErrors
    )
)]
async fn repair_aggregates(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<RepairBody>,
) -> Result<axum::Json<repair::Repaired>, ApiError> {
    let projectors = state.store.projectors();
    let repaired = repair::repair(&state.session, projectors, &[name], &body.aggregates).await?;
    Ok(axum::Json(repaired))
}

#[utoipa::path(
    get,
    path = "/admin/jobs/{id}",
    operation_id = "getJob",
    summary = "Get a job",
    tag = "admin",
    description = "A job (`purpose`: `rebuild` or `verify`) and its progress. `status`: \
                   `running`; `interrupted`, recorded running but run by no process any more \
                   (killed, its server restarted: a rebuild of the same projections resumes it \
                   from its checkpoint, or cancel it), with no `eta_seconds`; or how it ended: \
                   `succeeded`, `failed` (with `error`), `cancelled`. `interrupted` is not \
                   stored: every answer (and the CLI, `/metrics`, the console) derives it alike. \
                   `swap_stopped`: the sessions a rebuild's swap stopped because they held it \
                   up by reading a live table (`--swap-blocked readers-cancel`), each with \
                   `pid`, `user`, `application`, `query_start`, `state`, `query` (its first \
                   200 characters) and `signal` (`cancel`: its query was cancelled; \
                   `terminate`: the session, idle in a transaction, was ended); empty when none.",
    params(("id" = Uuid, Path, description = "the job: a rebuild's `job_id`"), crate::schemas::ReadHeaders),
    responses(
        (status = 200, description = "the job", body = Job),
        crate::schemas::NotModified,
        crate::schemas::Errors
    )
)]
async fn job(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Job>, ApiError> {
    found(registry::job(&state.session, id).await?, "no such job")
}

#[utoipa::path(
    delete,
    path = "/admin/jobs/{id}",
    operation_id = "cancelJob",
    summary = "Cancel a rebuild",
    tag = "admin",
    description = "Cancels a running (or interrupted) rebuild: it stops at its next batch and its \
                   tables are dropped; the live tables stay as they are. 404 for an unknown \
                   job, 409 for one that is not running.",
    params(("id" = Uuid, Path, description = "the job: a rebuild's `job_id`")),
    responses(
        (status = 200, description = "cancelled: the job as it is now", body = Job),
        crate::schemas::Errors, crate::schemas::CommandErrors
    )
)]
async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Job>, ApiError> {
    let pool = &state.session;
    rebuild::cancel(pool, id).await?;
    found(registry::job(pool, id).await?, "no such job")
}

/// Each domain's read source, by domain.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(value_type = BTreeMap<String, crate::schemas::ReadSourceName>)]
struct ReadSources(BTreeMap<String, ReadSource>);

#[utoipa::path(
    get,
    path = "/admin/read-sources",
    operation_id = "listReadSources",
    summary = "List the read sources",
    tag = "admin",
    description = "Each domain's read source.",
    params(crate::schemas::ReadHeaders),
    responses(
        (status = 200, description = "the read sources", body = ReadSources),
        crate::schemas::NotModified,
        crate::schemas::Errors
    )
)]
async fn read_sources(State(state): State<AppState>) -> Result<axum::Json<ReadSources>, ApiError> {
    let sources = registry::read_sources(&state.session).await?;
    Ok(axum::Json(ReadSources(sources.into_iter().collect())))
}

/// A domain's read source switched: to what, whether the gate was forced, and the gate.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Switched {
    domain: String,
    #[schema(value_type = crate::schemas::ReadSourceName)]
    source: ReadSource,
    /// Whether the switch went through a closed gate (`force`).
    forced: bool,
    gate: registry::Gate,
}

/// Body of `PUT /admin/read-sources/{domain}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReadSourceBody {
    /// The shape the domain's GET routes read from now on (409 if its projection is retired,
    /// or while the switch gate is closed).
    #[schema(value_type = bounds::ReadSourceChoice)]
    source: ReadSource,
    /// Switch even though the gate is closed: no clean consistency report of the domain since
    /// the last rebuild, repair or retirement of its projections, or too few shadow reads since
    /// then, or a mismatch among them. Recorded with who and when.
    #[serde(default)]
    force: bool,
}

#[utoipa::path(
    put,
    path = "/admin/read-sources/{domain}",
    operation_id = "setReadSource",
    summary = "Switch a domain's read source",
    tag = "admin",
    description = "Switches a domain's read source.",
    params(("domain" = inline(bounds::DomainName), Path, description = "the domain")),
    request_body = ReadSourceBody,
    responses(
        (status = 200, description = "switched", body = Switched),
        crate::schemas::Errors, crate::schemas::CommandErrors
    )
)]
async fn set_read_source(
    State(state): State<AppState>,
    Path(domain): Path<String>,
    Extension(actor): Extension<Actor>,
    Json(body): Json<ReadSourceBody>,
) -> Result<axum::Json<Switched>, ApiError> {
    let pool = &state.session;
    let gate = registry::set_read_source(pool, &domain, body.source, body.force, &actor).await?;
    Ok(axum::Json(Switched {
        domain,
        source: body.source,
        forced: !gate.open,
        gate,
    }))
}

/// Body of `PUT /admin/shadow/{domain}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ShadowBody {
    /// The share of the domain's GETs also computed from the other model and compared, above 0
    /// and at most 1 (1: all of them).
    #[serde(default = "default_fraction")]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0, default = default_fraction)]
    fraction: f64,
    /// How many shadow reads with no mismatch, since the last rebuild, repair or retirement of
    /// the domain's projections, the switch gate wants (0 or more).
    #[serde(default = "default_min_reads")]
    #[schema(minimum = 0, default = default_min_reads)]
    min_reads: i64,
}

fn default_fraction() -> f64 {
    shadow::DEFAULT_FRACTION
}

fn default_min_reads() -> i64 {
    shadow::DEFAULT_MIN_READS
}

#[utoipa::path(
    get,
    path = "/admin/follows",
    operation_id = "listFollows",
    summary = "List the domains followed from the old system",
    tag = "admin",
    description = "Each domain followed from the old system's database (`cutover follow`): where \
                   its old log stands, the changes applied and refused, how far behind it is \
                   (WAL bytes, and within how long 99% of the streamed changes were applied), \
                   and whether its follower stopped; and each domain handed over to Cutover \
                   (`cutover handover`). A server started with `--legacy-url` applies the changes \
                   of every followed domain, in turns with any other follower of it.",
    params(crate::schemas::ReadHeaders),
    responses(
        (status = 200, description = "the followed and handed-over domains", body = cutover_projections::follow::Following),
        crate::schemas::NotModified,
        crate::schemas::Errors
    )
)]
async fn follows(
    State(state): State<AppState>,
) -> Result<axum::Json<cutover_projections::follow::Following>, ApiError> {
    Ok(axum::Json(
        cutover_projections::follow::following(&state.session).await?,
    ))
}

impl From<FollowError> for ApiError {
    fn from(e: FollowError) -> Self {
        match e {
            FollowError::Setup(reason) => Self::Conflict(reason),
            FollowError::NotFollowed(_) => Self::NotFound(e.to_string()),
            FollowError::Database(db) => db.into(),
            e if e.is_transient() => Self::Unavailable,
            e => Self::Internal(e.into()),
        }
    }
}

/// The old system this server follows, or why it follows none.
fn old_system(state: &AppState) -> Result<&follow::OldSystem, ApiError> {
    state.old_system.as_ref().ok_or_else(|| {
        ApiError::Conflict(
            "this server follows no old database: start it with --legacy-url \
             (CUTOVER_LEGACY_URL), or run `cutover follow`"
                .to_owned(),
        )
    })
}

/// A domain that can be followed, or 404.
fn followable(domain: &str) -> Result<(), ApiError> {
    if follow::FOLLOWED.contains(&domain) {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "no followable domain {domain:?}: the domains are {}",
            follow::FOLLOWED.join(", ")
        )))
    }
}

/// The followed `domain` as `GET /admin/follows` shows it, or 404.
async fn followed(state: &AppState, domain: &str) -> Result<follow::FollowState, ApiError> {
    follow::following(&state.session)
        .await?
        .follows
        .into_iter()
        .find(|f| f.follow.domain == domain)
        .ok_or_else(|| ApiError::NotFound(format!("{domain} is not followed")))
}

#[utoipa::path(
    post,
    path = "/admin/follows/{domain}",
    operation_id = "startFollow",
    summary = "Follow a domain from the old system",
    tag = "admin",
    description = "Starts following a domain (`collections`, `batches`, `competencies`) from the \
                   old system's database this server was started with (`--legacy-url`), through \
                   the publication `cutover_follow`: its replication slot is made on the old \
                   database, Cutover's own commands on the domain are refused from then on, and \
                   the server's followers copy the old rows, then apply every change. Taking up \
                   a domain already followed changes nothing. 409 when this server follows no \
                   old database, the old database is not ready (said with what to do), or the \
                   domain was handed over.",
    params(("domain" = String, Path, description = "the domain")),
    responses(
        (status = 202, description = "followed: the domain as `GET /admin/follows` shows it; the copy and the stream run in the background", body = follow::FollowState),
        crate::schemas::Errors, crate::schemas::CommandErrors
    )
)]
async fn start_follow(
    State(state): State<AppState>,
    Path(domain): Path<String>,
) -> Result<Response, ApiError> {
    followable(&domain)?;
    let old_system = old_system(&state)?;
    follow::Follower::start(
        old_system.store.clone(),
        old_system.old.clone(),
        &domain,
        follow::DEFAULT_PUBLICATION,
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(followed(&state, &domain).await?),
    )
        .into_response())
}

/// The end of a domain's following.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Unfollowed {
    domain: String,
}

#[utoipa::path(
    delete,
    path = "/admin/follows/{domain}",
    operation_id = "stopFollow",
    summary = "Stop following a domain",
    tag = "admin",
    description = "Stops following a domain (as `cutover follow --drop`): once a follower's round \
                   ends, the slot is removed from the old database, which keeps no more WAL for \
                   it, and Cutover's commands on the domain are accepted again. 404 when it is \
                   not followed.",
    params(("domain" = String, Path, description = "the domain")),
    responses(
        (status = 200, description = "no longer followed", body = Unfollowed),
        crate::schemas::Errors, crate::schemas::CommandErrors
    )
)]
async fn stop_follow(
    State(state): State<AppState>,
    Path(domain): Path<String>,
) -> Result<axum::Json<Unfollowed>, ApiError> {
    followable(&domain)?;
    followed(&state, &domain).await?;
    let old_system = old_system(&state)?;
    follow::drop_follow(&old_system.store, &old_system.old, &domain).await?;
    Ok(axum::Json(Unfollowed { domain }))
}

/// What a handover found and did, said in a sentence too.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct HandoverAnswer {
    /// What happened, in words.
    detail: String,
    #[serde(flatten)]
    report: follow::handover::Handover,
}

#[utoipa::path(
    post,
    path = "/admin/follows/{domain}/handover",
    operation_id = "handOver",
    summary = "Hand a followed domain over to Cutover",
    tag = "admin",
    description = "Moves a followed domain's writes from the old system to Cutover (as `cutover \
                   handover`): the old tables refuse writes (the old database's role of \
                   `--legacy-url` must own them), everything the old database committed is \
                   applied, and every old row is compared with both of Cutover's models. With \
                   no difference, 200: Cutover's commands write the domain from then on. With \
                   differences, 409 with the same report (the first 100 listed): the old tables \
                   take writes again and following goes on. The answer comes when it is done \
                   (waiting up to a minute for the old application's writes in flight).",
    params(("domain" = String, Path, description = "the domain")),
    responses(
        (status = 200, description = "handed over", body = HandoverAnswer),
        (status = 409, description = "not handed over: the differences (or, as a problem, why it could not start)", body = HandoverAnswer),
        crate::schemas::Errors
    )
)]
async fn hand_over(
    State(state): State<AppState>,
    Path(domain): Path<String>,
) -> Result<Response, ApiError> {
    followable(&domain)?;
    followed(&state, &domain).await?;
    let old_system = old_system(&state)?;
    let report =
        follow::Follower::take_up(old_system.store.clone(), old_system.old.clone(), &domain)
            .await?
            .handover()
            .await?;
    let (status, detail) = if report.handed_over {
        (
            StatusCode::OK,
            format!(
                "{domain} is handed over: {} old rows compared, no difference; Cutover writes it",
                report.rows_compared
            ),
        )
    } else {
        (
            StatusCode::CONFLICT,
            format!(
                "{domain} is not handed over: {} differences in {} old rows compared; the old \
                 tables take writes again and following goes on",
                report.difference_count, report.rows_compared
            ),
        )
    };
    Ok((status, axum::Json(HandoverAnswer { detail, report })).into_response())
}

#[utoipa::path(
    get,
    path = "/admin/shadow",
    operation_id = "listShadowWindows",
    summary = "List the shadow reads",
    tag = "admin",
    description = "Each domain's shadow reads: whether it is in shadow (its fraction and the reads \
                   its switch gate wants), the reads and mismatches counted since the last \
                   rebuild, repair or retirement of its projections, and the latest mismatches \
                   with both answers.",
    params(crate::schemas::ReadHeaders),
    responses(
        (status = 200, description = "the domains' shadow windows", body = Vec<shadow::Window>),
        crate::schemas::NotModified,
        crate::schemas::Errors
    )
)]
async fn shadow_windows(
    State(state): State<AppState>,
) -> Result<axum::Json<Vec<shadow::Window>>, ApiError> {
    Ok(axum::Json(shadow::windows(&state.session).await?))
}

#[utoipa::path(
    put,
    path = "/admin/shadow/{domain}",
    operation_id = "startShadowReads",
    summary = "Start shadow reads",
    tag = "admin",
    description = "Puts a domain in shadow (or changes its fraction and minimum): its GETs are \
                   answered from the read source as before and, for the fraction given, also \
                   computed from the other model and compared. Recorded with who and when.",
    params(("domain" = String, Path, description = "the domain")),
    request_body = ShadowBody,
    responses(
        (status = 200, description = "in shadow", body = InShadow),
        crate::schemas::Errors, crate::schemas::CommandErrors
    )
)]
async fn start_shadow(
    State(state): State<AppState>,
    Path(domain): Path<String>,
    Extension(actor): Extension<Actor>,
    Json(body): Json<ShadowBody>,
) -> Result<axum::Json<InShadow>, ApiError> {
    let settings = shadow::start(
        &state.session,
        &domain,
        body.fraction,
        body.min_reads,
        &actor,
    )
    .await?;
    Ok(axum::Json(InShadow {
        domain,
        shadow: Some(settings),
    }))
}

#[utoipa::path(
    delete,
    path = "/admin/shadow/{domain}",
    operation_id = "stopShadowReads",
    summary = "Stop shadow reads",
    tag = "admin",
    description = "Takes a domain out of shadow; the reads it counted stay. Recorded with who and \
                   when.",
    params(("domain" = String, Path, description = "the domain")),
    responses(
        (status = 200, description = "out of shadow", body = InShadow),
        crate::schemas::Errors, crate::schemas::CommandErrors
    )
)]
async fn stop_shadow(
    State(state): State<AppState>,
    Path(domain): Path<String>,
    Extension(actor): Extension<Actor>,
) -> Result<axum::Json<InShadow>, ApiError> {
    shadow::stop(&state.session, &domain, &actor).await?;
    Ok(axum::Json(InShadow {
        domain,
        shadow: None,
    }))
}

/// A domain's shadow settings after a change: `null` once out of shadow.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct InShadow {
    domain: String,
    shadow: Option<shadow::Settings>,
}

/// A domain's switch gate, its read source and its last switch.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct SwitchGate {
    domain: String,
    #[schema(value_type = crate::schemas::ReadSourceName)]
    source: ReadSource,
    gate: registry::Gate,
    /// The domain's last switch of read source (who, when, whether forced), if any.
    last_switch: Option<registry::Action>,
}

#[utoipa::path(
    get,
    path = "/admin/read-sources/{domain}/gate",
    operation_id = "getSwitchGate",
    summary = "Get a domain's switch gate",
    tag = "admin",
    description = "Whether the domain's read source may be switched: open after a clean \
                   consistency report of the domain taken since the last rebuild, repair or \
                   retirement of its projections, and enough shadow reads since then with no \
                   mismatch; with the domain's last switch (who, when, whether it was forced).",
    params(("domain" = inline(bounds::DomainName), Path, description = "the domain"), crate::schemas::ReadHeaders),
    responses(
        (status = 200, description = "the gate", body = SwitchGate),
        crate::schemas::NotModified,
        crate::schemas::Errors
    )
)]
async fn switch_gate(
    State(state): State<AppState>,
    Path(domain): Path<String>,
) -> Result<axum::Json<SwitchGate>, ApiError> {
    let pool = &state.session;
    let source = registry::read_sources(pool)
        .await?
        .into_iter()
        .find(|(d, _)| *d == domain)
        .map(|(_, source)| source)
        .ok_or_else(|| ApiError::from(AdminError::UnknownDomain(domain.clone())))?;
    let mut conn = pool.acquire().await?;
    let gate = registry::gate(&mut conn, &domain).await?;
    let last_switch = registry::last_switch(pool, &domain).await?;
    Ok(axum::Json(SwitchGate {
        domain,
        source,
        gate,
        last_switch,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyQuery {
    domain: Option<String>,
}

/// A verification's report, and whether it found no difference.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Consistency {
    consistent: bool,
    #[serde(flatten)]
    report: Report,
}

#[utoipa::path(
    get,
    path = "/admin/consistency",
    operation_id = "verifyConsistency",
    summary = "Verify consistency",
    tag = "admin",
    description = "Verifies legacy against new and live against a fresh rebuild (an admin token).",
    params(("domain" = inline(Option<bounds::DomainName>), Query, nullable = false, description = "only this domain (all of them by default)"), crate::schemas::ReadHeaders),
    responses(
        (status = 200, description = "the report", body = Consistency),
        crate::schemas::NotModified,
        crate::schemas::Errors,
        (status = 409, description = "the fresh rebuild could not replay the log: two subskills \
                                      share an old store id, which the legacy shape cannot hold",
         body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
async fn consistency(
    State(state): State<AppState>,
    Query(query): Query<ConsistencyQuery>,
) -> Result<axum::Json<Consistency>, ApiError> {
    let report = verify::verify(
        &state.session,
        state.store.projectors(),
        query.domain.as_deref(),
    )
    .await?;
    Ok(axum::Json(Consistency {
        consistent: report.consistent(),
        report,
    }))
}

#[utoipa::path(
    get,
    path = "/admin/consistency/latest",
    operation_id = "getLatestConsistency",
    summary = "Get the latest consistency report",
    tag = "admin",
    description = "The newest consistency report (from the CLI or the API), without running one; 404 before the first.",
    params(crate::schemas::ReadHeaders),
    responses(
        (status = 200, description = "the report and when it was made", body = verify::Recorded),
        crate::schemas::NotModified,
        crate::schemas::Errors
    )
)]
async fn latest_consistency(
    State(state): State<AppState>,
) -> Result<axum::Json<verify::Recorded>, ApiError> {
    found(
        verify::latest(&state.session).await?,
        "no verification has run yet",
    )
}

/// The thing, or a 404 that says what is missing.
fn found<T>(thing: Option<T>, missing: &str) -> Result<axum::Json<T>, ApiError> {
    thing
        .map(axum::Json)
        .ok_or_else(|| ApiError::NotFound(missing.to_owned()))
}
