//! The event feed for downstream consumers: pages of the log in gap-free order, and a live
//! Server-Sent Events stream woken by LISTEN/NOTIFY. Both resume from a position they gave.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use cutover_core::domain;
use cutover_engine::event::StoredEvent;
use cutover_engine::log::{self, LogCursor};
use cutover_engine::upcast::UpcastError;
use futures_util::stream::{self, Stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use tokio::sync::watch;

use crate::bounds::{self, bounds, PageSize};
use crate::error::ApiError;
use crate::extract::Query;
use crate::reads::{stream_connection, Reading, Reads};
use crate::state::AppState;

/// The page size of `GET /events`.
const PAGE: PageSize = PageSize {
    default: 100,
    max: 1_000,
};
/// Most aggregate types in an `aggregate_type` filter, and the longest one, in characters.
const MAX_AGGREGATE_TYPES: usize = 20;
const MAX_AGGREGATE_TYPE_CHARS: usize = 100;

bounds! {
    /// The page size of the feed.
    Limit = PAGE.schema();
    /// Where the feed's page starts.
    After = serde_json::json!({
        "type": "integer", "format": "int64", "minimum": 0, "maximum": i64::MAX, "default": 0,
    });
    /// The feed's filter by aggregate type.
    AggregateTypes = serde_json::json!({"type": "string", "pattern": format!(
        "^[A-Za-z0-9_]{{1,{chars}}}(,[A-Za-z0-9_]{{1,{chars}}}){{0,{more}}}$",
        chars = MAX_AGGREGATE_TYPE_CHARS,
        more = MAX_AGGREGATE_TYPES - 1,
    )});
}
/// Events a live stream reads per query.
const STREAM_BATCH: i64 = 500;

/// Longest a read of the primary waits for its events to reach a synchronous standby before
/// it gives none (a page answers 503; the stream looks again).
const ON_STANDBY_WAIT: Duration = Duration::from_secs(1);
/// How soon a stream looks again when committed events wait behind an older transaction.
const HELD_BACK_RECHECK: Duration = Duration::from_millis(200);
/// How soon a stream looks again when nothing woke it: appends by writers that do not notify
/// (the CLI, other tools) are seen within this.
const LOOK_AGAIN: Duration = Duration::from_secs(1);
/// How soon a stream looks again after the database failed it.
const ERROR_RETRY: Duration = Duration::from_secs(1);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/events", get(page))
        .route("/events/stream", get(live))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    /// Resume after the event at this position (0, the default, is the start of the log).
    after: Option<i64>,
    limit: Option<i64>,
    /// Only events of these aggregate types (comma-separated).
    aggregate_type: Option<String>,
}

/// One event as the feed serves it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeedEvent {
    /// Its place in the gap-free order of the log.
    position: i64,
    aggregate_type: String,
    aggregate_id: String,
    /// Its place among its aggregate's events, from 1: the aggregate's version after it.
    sequence: i64,
    event_type: String,
    event_version: String,
    /// What happened, as the event type's version says (a JSON object).
    #[schema(value_type = std::collections::BTreeMap<String, Value>)]
    payload: Value,
    /// What its writer recorded with it, such as the `command` that appended it (a JSON
    /// object).
    #[schema(value_type = std::collections::BTreeMap<String, Value>)]
    metadata: Value,
    recorded_at: DateTime<Utc>,
}

impl TryFrom<StoredEvent> for FeedEvent {
    type Error = UpcastError;

    /// The event in the current shape of its type (the log holds it as stored).
    fn try_from(e: StoredEvent) -> Result<Self, UpcastError> {
        let (event_version, payload) = domain::current(&e.event_type, &e.event_version, e.payload)?;
        Ok(Self {
            position: e.position,
            aggregate_type: e.aggregate_type,
            aggregate_id: e.aggregate_id,
            sequence: e.sequence,
            event_type: e.event_type,
            event_version,
            payload,
            metadata: e.metadata,
            recorded_at: e.recorded_at,
        })
    }
}

/// A page of the event log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeedPage {
    /// In gap-free order.
    events: Vec<FeedEvent>,
    /// Pass as `after` to continue: the last event looked at (filtered out or not); the same
    /// `after` when nothing new was safe to serve.
    next: i64,
}

#[utoipa::path(
    get,
    path = "/events",
    operation_id = "listEvents",
    summary = "List events",
    tag = "events",
    description = "A page of the event log in gap-free order.",
    params(("after" = inline(Option<After>), Query, nullable = false, description = "0 (the start of the log) or a position the feed gave, as `next` or an event's `position` (another is a 404)"), ("limit" = inline(Option<Limit>), Query, nullable = false, description = "the most events in the page"), ("aggregate_type" = inline(Option<AggregateTypes>), Query, nullable = false, description = "only events of these aggregate types, comma-separated (letters, digits, `_`)"), crate::schemas::ReadHeaders, crate::schemas::PositionHeaders),
    responses(
        (status = 200, description = "events and next", body = FeedPage),
        crate::schemas::NotModified,
        crate::schemas::Errors, crate::schemas::UnknownPosition
    )
)]
async fn page(reading: Reading, Query(query): Query<FeedQuery>) -> Result<Response, ApiError> {
    let limit = PAGE.of(query.limit)?;
    let after = query.after.unwrap_or(0);
    let types = aggregate_types(query.aggregate_type.as_deref())?;
    let mut snapshot = reading.open(None).await?;
    // A position a replica does not show yet may have been given by another server: the
    // primary says whether it exists.
    let (mut snapshot, cursor) = match resolve(&mut snapshot, after).await {
        Err(ApiError::NotFound(_)) if snapshot.on_replica() => {
            drop(snapshot);
            let mut primary = reading.open_on_primary(None).await?;
            let cursor = resolve(&mut primary, after).await?;
            (primary, cursor)
        }
        resolved => (snapshot, resolved?),
    };
    let read = log::read_safe(&mut *snapshot, cursor, limit, types.as_deref()).await?;
    if !snapshot.on_replica() && !log::on_standby(&mut snapshot, ON_STANDBY_WAIT).await? {
        return Err(ApiError::Unavailable);
    }
    let next = read.scanned_to.map_or(after, |c| c.position);
    let events = read.events.into_iter().map(FeedEvent::try_from);
    Ok(IntoResponse::into_response(axum::Json(FeedPage {
        events: events
            .collect::<Result<_, _>>()
            .map_err(|e| ApiError::Internal(e.into()))?,
        next,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    after: Option<i64>,
    aggregate_type: Option<String>,
}

/// `GET /events/stream`: every event after `after` (or after `Last-Event-ID`, which a
/// reconnecting browser sends), then new events as they commit. Each SSE message has the
/// event's position as its id and the event as JSON data.
#[utoipa::path(
    get,
    path = "/events/stream",
    operation_id = "streamEvents",
    summary = "Stream events",
    tag = "events",
    description = "The event feed as Server-Sent Events: every event after `after`, then each new one as it commits; the stream does not end.",
    params(("after" = inline(Option<bounds::Position>), Query, nullable = false, description = "0 (the start of the log, the default) or a position the feed gave (another is a 404)"), ("aggregate_type" = inline(Option<AggregateTypes>), Query, nullable = false, description = "only events of these aggregate types, comma-separated (letters, digits, `_`)"), ("Last-Event-ID" = inline(Option<bounds::Position>), Header, nullable = false, description = "what a reconnecting browser sends: the last event's position, which then takes the place of `after`")),
    responses(
        (status = 200, description = "a stream of events, each an event as JSON data", content_type = "text/event-stream", body = crate::schemas::StreamEvent),
        crate::schemas::Errors
    )
)]
async fn live(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    if query.after.is_some_and(|after| after < 0) {
        return Err(ApiError::BadRequest(
            "after must be a position, 0 or more".into(),
        ));
    }
    let after = match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .ok_or_else(|| ApiError::BadRequest("Last-Event-ID must be a position".into()))?,
        None => query.after.unwrap_or(0),
    };
    let types = aggregate_types(query.aggregate_type.as_deref())?;
    // Resolved on the primary, which shows every position a server gave.
    let cursor = resolve(&mut *state.reads.primary_connection().await?, after).await?;
    let (local, remote) = state.feed.appended();
    let tail = Tail {
        reads: state.reads.clone(),
        cursor,
        types,
        local,
        remote,
        shutdown: state.feed.shutdown(),
        woken: false,
    };
    let events = stream::unfold(tail, Tail::next_batch)
        .flat_map(stream::iter)
        .map(|event| Ok(sse_event(event)));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// The state of one live stream.
struct Tail {
    /// Each batch is read on the next replica in rotation, or the primary: any server's safe
    /// horizon is correct, and one further behind only serves less.
    reads: Reads,
    cursor: LogCursor,
    types: Option<Vec<String>>,
    /// This server's commits, and the other instances'.
    local: watch::Receiver<u64>,
    remote: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    /// Whether a commit woke the last wait: a replica may not have replayed it yet.
    woken: bool,
}

impl Tail {
    /// The next events, waiting until there are some; `None` ends the stream (shutdown).
    async fn next_batch(mut self) -> Option<(Vec<StoredEvent>, Self)> {
        loop {
            if *self.shutdown.borrow() {
                return None;
            }
            // Mark the current wake-up as seen before reading, so a commit during the read
            // wakes the next wait.
            self.local.borrow_and_update();
            self.remote.borrow_and_update();
            let wait = match self.look().await {
                Ok(Look::Read(read)) => {
                    if let Some(cursor) = read.scanned_to {
                        self.cursor = cursor;
                    }
                    if read.events.is_empty() {
                        continue;
                    }
                    return Some((read.events, self));
                }
                Ok(Look::HeldBack) => HELD_BACK_RECHECK,
                Ok(Look::Nothing) => LOOK_AGAIN,
                Err(e) => {
                    tracing::warn!(error = %e, "event stream: cannot read the log");
                    ERROR_RETRY
                }
            };
            let recheck = tokio::time::sleep(wait);
            tokio::select! {
                changed = self.local.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    self.woken = true;
                }
                changed = self.remote.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    self.woken = true;
                }
                stopped = self.shutdown.changed() => {
                    if stopped.is_err() {
                        return None;
                    }
                }
                () = recheck => self.woken = false,
            }
        }
    }
}

/// What one look at the log after a stream's cursor found.
enum Look {
    /// Events to scan (wanted or not).
    Read(log::Read),
    /// None yet, but committed events wait behind an older transaction, or the commit that
    /// woke the stream may not be replayed yet on the replica read: look again soon.
    HeldBack,
    Nothing,
}

impl Tail {
    async fn look(&self) -> Result<Look, sqlx::Error> {
        let (mut conn, on_replica) = stream_connection(&self.reads).await?;
        let read =
            log::read_safe(&mut *conn, self.cursor, STREAM_BATCH, self.types.as_deref()).await?;
        if read.scanned > 0 {
            if !on_replica && !log::on_standby(&mut conn, ON_STANDBY_WAIT).await? {
                return Ok(Look::HeldBack);
            }
            return Ok(Look::Read(read));
        }
        Ok(
            if (on_replica && self.woken) || log::held_back(&mut *conn, self.cursor).await? {
                Look::HeldBack
            } else {
                Look::Nothing
            },
        )
    }
}

fn sse_event(event: StoredEvent) -> Event {
    let id = event.position.to_string();
    let data = FeedEvent::try_from(event)
        .map_err(|e| e.to_string())
        .and_then(|e| serde_json::to_string(&e).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| serde_json::json!({ "error": e }).to_string());
    Event::default().id(id).data(data)
}

/// The cursor of a position a client gave; unknown positions are a 404.
async fn resolve(conn: &mut PgConnection, after: i64) -> Result<LogCursor, ApiError> {
    if after < 0 {
        return Err(ApiError::BadRequest(
            "after must be a position, 0 or more".into(),
        ));
    }
    log::cursor_at(conn, after).await?.ok_or_else(|| {
        ApiError::NotFound(format!(
            "no event has position {after}; resume from a position the feed gave"
        ))
    })
}

fn aggregate_types(raw: Option<&str>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let types: Vec<String> = raw.split(',').map(str::to_owned).collect();
    let well_formed = |t: &String| {
        (1..=MAX_AGGREGATE_TYPE_CHARS).contains(&t.len())
            && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if types.len() > MAX_AGGREGATE_TYPES || !types.iter().all(well_formed) {
        return Err(ApiError::BadRequest(format!(
            "aggregate_type is a comma-separated list of 1–{MAX_AGGREGATE_TYPES} aggregate types \
             (letters, digits, _)"
        )));
    }
    Ok(Some(types))
}
