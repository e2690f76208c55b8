//! The Postgres event store and the command path.
//!
//! A command runs in one transaction: take the aggregate's advisory lock, bring the aggregate
//! up to date, let it decide, then one statement appends the new events (postgres-es's
//! `events` layout plus a global `position`, the committing transaction id and `recorded_at`)
//! and writes every inline projection's rows for them; commit. Either all of that commits or
//! none of it does. cqrs-es's own `CqrsFramework` is not used because it updates views only
//! after its commit.
//!
//! - this file: a command's run from its turn to its answer;
//! - `event_store`: the store (what a process keeps to run commands) and what a command is;
//! - `error`: how a command ends when it does not commit, and what it reached when it does;
//! - `batch`: many commands decided in memory and appended in one statement (the follower's);
//! - `cache`: what the process remembers between commands (aggregates, inline projections);
//! - `lanes`: the queue of commands per aggregate and the transaction consecutive ones share;
//! - `group`: a command's place in that transaction, and its commit;
//! - `idempotency`: idempotency keys and the answers kept under them;
//! - `seats` and `shared`: the transactions commands on different aggregates share (group
//!   commit): who waits for one, and how it runs;
//! - `stream`: the SQL that begins a command's transaction, reads an aggregate's stream and
//!   appends to it.
//!
//! No file imports this one, and no two import each other, directly or through others.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde_json::Value;
use sqlx::PgConnection;

use cutover_engine::locks::aggregate_lock_key;

mod batch;
mod cache;
mod error;
mod event_store;
mod group;
mod idempotency;
mod lanes;
mod seats;
mod shared;
mod single;
mod stream;

pub use batch::Batch;
pub use error::{
    followed_refusal, CommandError, CommitError, Committed, GroupFailure, Written,
    FOLLOWED_SQLSTATE,
};
pub use event_store::{EventStore, Request, StoreMetrics};
pub use idempotency::{Idempotency, StoredResponse};
pub use lanes::MAX_GROUP;

use group::Member;
use idempotency::claim_key;
use lanes::{Group, Tried, Turn};
use shared::SharedMember;
use single::Done;
use stream::{append, begin_locked, read_sources, to_store, AppendError};

impl EventStore {
    /// Runs `command` against aggregate `aggregate_id` of type `A` and commits.
    ///
    /// With `expected_version`, the command runs only if the aggregate is at that version.
    ///
    /// # Errors
    /// See [`CommandError`]; on any error nothing was appended or projected.
    pub async fn execute<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        services: &A::Services,
        expected_version: Option<i64>,
        metadata: &Value,
    ) -> Result<Committed, CommandError<A::Error>>
    where
        A: Aggregate + 'static,
        A::Command: Clone,
        A::Error: 'static,
    {
        let request = Request {
            aggregate_id,
            command,
            services,
            expected_version,
            metadata,
            new_aggregate: false,
            answered_from_rows: false,
        };
        let mut may_share = true;
        loop {
            match self.begin::<A>(request.clone(), None, may_share).await? {
                Begun::Open(pending) => match (*pending).commit(None).await {
                    Err(CommitError::RunAgain) => may_share = false,
                    committed => return Ok(committed?),
                },
                // Only a command sent with an idempotency key can be replayed; this one has none.
                Begun::Replayed(_) => {
                    return Err(CommandError::Broken(
                        "a command without an idempotency key was answered as a replay".to_owned(),
                    ))
                }
            }
        }
    }

    /// Runs a command up to, not including, its commit: its events are appended and projected
    /// in a transaction the caller can read back from (write-then-read) before
    /// [`Pending::commit`]. With an idempotency key seen before for the same request, nothing
    /// runs and the stored response comes back instead.
    ///
    /// Commands of one aggregate queue in this process (first come, first served) and run one
    /// at a time; while others wait, consecutive ones share a transaction (a group, at most
    /// [`MAX_GROUP`] commands, each after a savepoint of its own), so that a hot aggregate
    /// pays for one lock, one load and one commit per group instead of per command. A command
    /// of a group is acknowledged only after the group commits.
    ///
    /// With `may_share`, a command whose aggregate has no other command queued may instead
    /// share a transaction with commands of other aggregates ready at the same time (see
    /// `shared`); should that transaction be rolled back after this command's read-back,
    /// [`Pending::commit`] says [`CommitError::RunAgain`], and the command is to begin again
    /// without `may_share`.
    ///
    /// # Errors
    /// See [`CommandError`]; on any error nothing of this command was appended or projected.
    #[tracing::instrument(skip_all, fields(aggregate_type = A::TYPE, aggregate_id = %request.aggregate_id), err(level = "debug"))]
    pub async fn begin<A>(
        &self,
        request: Request<'_, A>,
        idempotency: Option<&Idempotency>,
        mut may_share: bool,
    ) -> Result<Begun<A>, CommandError<A::Error>>
    where
        A: Aggregate + 'static,
        A::Command: Clone,
        A::Error: 'static,
    {
        let attempts = self.inner.max_retries + 1;
        let (mut attempt, mut refreshes) = (1, 0);
        while attempt <= attempts {
            let mut turn = self.inner.lanes.enter(A::TYPE, request.aggregate_id).await;
            let quiet = attempt == 1
                && idempotency.is_none()
                && turn.open.is_none()
                && turn.lane.waiting.load(Ordering::SeqCst) == 0
                && !turn.lane.contended.load(Ordering::Relaxed);
            if quiet && request.answered_from_rows {
                // Boxed: its state would otherwise grow every command's future.
                match Box::pin(self.run_single(&request, turn)).await? {
                    Tried::Ran(ran) => return Ok(Pending::opened(Run::Single, *ran)),
                    Tried::Usual {
                        turn: usual,
                        lost_race,
                    } => {
                        let next = self.usual(usual, lost_race, &mut attempt, attempts).await;
                        let Some(usual) = next else {
                            may_share = false;
                            continue;
                        };
                        turn = usual;
                    }
                }
            }
            if may_share && quiet {
                match self.run_shared(&request, turn).await {
                    Tried::Ran(ran) => return Ok(Pending::opened(Run::Shared, *ran)),
                    Tried::Usual {
                        turn: alone,
                        lost_race,
                    } => {
                        may_share = false;
                        let next = self.usual(alone, lost_race, &mut attempt, attempts).await;
                        let Some(alone) = next else {
                            continue;
                        };
                        turn = alone;
                    }
                }
            }
            let mut member = match turn.open.take() {
                Some(group) => Member {
                    store: self.clone(),
                    turn: Some(turn),
                    before: (group.version, group.position),
                    group: Some(group),
                    joined: true,
                    kept_state: false,
                },
                None => {
                    // In a task of its own: a `BEGIN` cancelled while it waits for the locks
                    // (the client hung up) would leave sqlx believing the connection is not
                    // in a transaction, and return it to the pool holding the locks.
                    let pool = self.inner.pool.clone();
                    let statement = begin_locked(
                        self.inner.route,
                        &[aggregate_lock_key(A::TYPE, request.aggregate_id)],
                    );
                    let tx = tokio::spawn(async move { pool.begin_with(statement).await })
                        .await
                        .map_err(|e| {
                            CommandError::Broken(format!(
                                "the task beginning the command's transaction ended: {e}"
                            ))
                        })??;
                    Member {
                        store: self.clone(),
                        turn: Some(turn),
                        group: Some(Box::new(Group::new(tx))),
                        before: (0, 0),
                        joined: false,
                        kept_state: false,
                    }
                }
            };
            if member.joined {
                let savepoint = sqlx::query!("SAVEPOINT member")
                    .execute(&mut *member.group_mut().tx)
                    .await;
                if let Err(e) = savepoint {
                    if let Err(left) = member.leave(true).await {
                        tracing::debug!(error = %left, "a group failed");
                    }
                    return Err(CommandError::Database(e));
                }
            }
            match self
                .run_member(&mut member, &request, idempotency, attempt)
                .await
            {
                Ok(Ran::Appended(committed, key)) => {
                    return Ok(Begun::Open(Box::new(Pending {
                        run: Run::Alone(member),
                        key,
                        committed,
                        _aggregate: PhantomData,
                    })));
                }
                Ok(Ran::Replayed(stored)) => {
                    // Answered before; but an answer stored by an earlier command of this very
                    // group is true only once the group commits.
                    member.leave(false).await?;
                    self.inner.metrics.replays.inc();
                    return Ok(Begun::Replayed(stored));
                }
                Err(Failed::Retry) => {
                    if let Err(e) = member.leave(true).await {
                        tracing::debug!(error = %e, "the group of a command to be retried failed");
                    }
                    self.lost_race(attempt, attempts).await;
                    attempt += 1;
                }
                Err(Failed::InlineChanged) => {
                    if let Err(e) = member.leave(true).await {
                        tracing::debug!(error = %e, "the group of a command to be re-run failed");
                    }
                    refreshes += 1;
                    if refreshes > MAX_INLINE_REFRESHES {
                        return Err(CommandError::Broken(
                            "the projections maintained inline kept changing, or a table of one \
                             of them is missing"
                                .to_owned(),
                        ));
                    }
                }
                Err(Failed::Error(e)) => {
                    if let Err(left) = member.leave(true).await {
                        tracing::debug!(error = %left, "the group of a failed command failed");
                    }
                    return Err(e);
                }
            }
        }
        self.inner.metrics.conflicts.inc();
        Err(CommandError::Conflict { attempts })
    }

    /// After attempt `attempt` of `attempts` lost the race for a sequence number: counts the
    /// retry, if one is left, and waits a little before it.
    /// After a quicker way gave the command back: the turn to go on with, or, when it lost
    /// the race for a sequence number, none (the turn left, the loss counted and waited out).
    async fn usual(
        &self,
        turn: Turn,
        lost_race: bool,
        attempt: &mut u32,
        attempts: u32,
    ) -> Option<Turn> {
        if !lost_race {
            return Some(turn);
        }
        self.inner.lanes.leave(turn);
        self.lost_race(*attempt, attempts).await;
        *attempt += 1;
        None
    }

    async fn lost_race(&self, attempt: u32, attempts: u32) {
        tracing::debug!(attempt, "append conflict; retrying");
        if attempt < attempts {
            self.inner.metrics.retries.inc();
        }
        tokio::time::sleep(Duration::from_millis(u64::from(attempt))).await;
    }

    /// Runs one command in `member`'s group: claims its key, brings the aggregate up to date
    /// (from the group, the cache or the log), lets it decide, appends and projects. On a
    /// failure the group's aggregate is kept only when the command left it untouched.
    ///
    /// On its first attempt, a command starts from this process's cache, or from nothing when
    /// its aggregate was made for it, without reading the stream: the append's unique key
    /// catches a stale start (another instance appended), and the command is run again from
    /// the log. A start that is refused or changes nothing is read again from the log before it
    /// is believed.
    async fn run_member<A>(
        &self,
        member: &mut Member,
        request: &Request<'_, A>,
        idempotency: Option<&Idempotency>,
        attempt: u32,
    ) -> Result<Ran, Failed<A::Error>>
    where
        A: Aggregate + 'static,
        A::Command: Clone,
        A::Error: 'static,
    {
        let aggregate_id = request.aggregate_id;
        let joined = member.joined;
        member.kept_state = false;
        let group = member.group_mut();
        if let Some(key) = idempotency {
            if let Some(stored) = claim_key(&mut group.tx, key).await? {
                return Ok(Ran::Replayed(stored));
            }
        }
        let kept = group
            .state
            .take()
            .and_then(|state| state.into_any().downcast::<A>().ok());
        // Whether the aggregate is known to be as the log has it (else it is a guess).
        let (mut aggregate, mut confirmed) = match kept {
            Some(aggregate) => (*aggregate, true),
            None => {
                // The group's first command starts from the cache; a later one whose group
                // lost its aggregate reads the whole stream again, in the group's transaction.
                let cached = if joined {
                    None
                } else {
                    self.inner.cache.take::<A>(aggregate_id)
                };
                match cached {
                    Some((aggregate, version, position)) if attempt == 1 => {
                        (group.version, group.position) = (version, position);
                        (aggregate, false)
                    }
                    None if attempt == 1 && !joined && request.new_aggregate => {
                        (group.version, group.position) = (0, 0);
                        (A::default(), false)
                    }
                    cached => (group.reload::<A>(aggregate_id, cached).await?, true),
                }
            }
        };
        let new_events = loop {
            if let Some(expected) = request.expected_version {
                if expected != group.version {
                    if !confirmed {
                        let start = Some((aggregate, group.version, group.position));
                        aggregate = group.reload::<A>(aggregate_id, start).await?;
                        confirmed = true;
                        continue;
                    }
                    let actual = group.version;
                    group.state = Some(Box::new(aggregate));
                    member.kept_state = true;
                    return Err(Failed::Error(CommandError::VersionMismatch {
                        expected,
                        actual,
                    }));
                }
            }
            let sink = EventSink::default();
            let decided = aggregate
                .handle(request.command.clone(), request.services, &sink)
                .await;
            let new_events = sink.collect().await;
            match decided {
                Ok(()) if !new_events.is_empty() => break new_events,
                _ if !confirmed => {
                    // Events the refused command wrote changed the aggregate: read it all.
                    let start =
                        new_events
                            .is_empty()
                            .then_some((aggregate, group.version, group.position));
                    aggregate = group.reload::<A>(aggregate_id, start).await?;
                    confirmed = true;
                }
                Ok(()) => break new_events,
                Err(e) => {
                    if new_events.is_empty() {
                        group.state = Some(Box::new(aggregate));
                        member.kept_state = true;
                    }
                    return Err(Failed::Error(CommandError::Rejected(e)));
                }
            }
        };
        let (stored, written) = if new_events.is_empty() {
            if group.read_sources.stored.is_empty() {
                group.read_sources = read_sources(&mut group.tx).await?;
            }
            (Vec::new(), None)
        } else {
            let mut stored =
                to_store::<A>(aggregate_id, group.version, &new_events, request.metadata)
                    .map_err(CommandError::Serialize)?;
            let inline = self.inner.inline.current(&mut group.tx).await?;
            let appended = append(
                &mut group.tx,
                &self.inner.projectors,
                &inline,
                &mut stored,
                false,
            )
            .await;
            match appended {
                Ok((sources, written)) => {
                    group.read_sources = sources;
                    (stored, written)
                }
                Err(AppendError::Conflict(_)) => return Err(Failed::Retry),
                Err(AppendError::InlineChanged) => {
                    self.inner.inline.forget();
                    return Err(Failed::InlineChanged);
                }
                Err(AppendError::UnknownProjection(name)) => {
                    self.inner.inline.forget();
                    return Err(Failed::Error(CommandError::Broken(format!(
                        "projection {name} is maintained inline, but this server has no \
                         projector for it: deploy the server that has it to every instance"
                    ))));
                }
                Err(AppendError::Projection(e)) => return Err(Failed::Error(e.into())),
                Err(AppendError::NeedsTransaction) => {
                    return Err(Failed::Error(CommandError::Broken(
                        "an append in a transaction was refused as needing one".to_owned(),
                    )))
                }
                Err(AppendError::Database(e)) => {
                    return Err(Failed::Error(CommandError::Database(e)))
                }
            }
        };
        if let Some(last) = stored.last() {
            group.version = last.sequence;
            group.position = last.position;
        }
        group.state = Some(Box::new(aggregate));
        let committed = Committed {
            version: group.version,
            position: group.position,
            events: stored,
            read_sources: group.read_sources.clone(),
            written,
        };
        Ok(Ran::Appended(committed, idempotency.map(|k| k.key.clone())))
    }
}

/// Most times one command reads the registry's inline projections again.
const MAX_INLINE_REFRESHES: u32 = 3;

/// How a command of a group ran.
enum Ran {
    Appended(Committed, Option<String>),
    Replayed(StoredResponse),
}

/// How a command of a group failed.
enum Failed<E: std::error::Error + 'static> {
    /// Another writer took the next sequence number: run the command again.
    Retry,
    /// The projections maintained inline changed: run the command again with the new ones.
    InlineChanged,
    Error(CommandError<E>),
}

impl<E: std::error::Error + 'static> From<sqlx::Error> for Failed<E> {
    fn from(e: sqlx::Error) -> Self {
        Self::Error(CommandError::Database(e))
    }
}

impl<E: std::error::Error + 'static> From<CommandError<E>> for Failed<E> {
    fn from(e: CommandError<E>) -> Self {
        Self::Error(e)
    }
}

/// How [`EventStore::begin`] went.
pub enum Begun<A: Aggregate + 'static> {
    /// The command ran; commit it.
    Open(Box<Pending<A>>),
    /// The same request came with this key before: its response, nothing ran.
    Replayed(StoredResponse),
}

/// A command that ran and awaits its commit. Dropping it undoes this command (and, if it was
/// the only one of its group, the group; if it shared a transaction with commands of other
/// aggregates, that transaction, whose commands then run again alone).
pub struct Pending<A: Aggregate + 'static> {
    run: Run,
    key: Option<String>,
    committed: Committed,
    _aggregate: PhantomData<fn() -> A>,
}

/// Where a pending command ran.
enum Run {
    /// In its aggregate's group.
    Alone(Member),
    /// In a transaction shared with commands of other aggregates.
    Shared(SharedMember),
    /// Alone in one statement, already committed.
    Single(Done),
}

impl Run {
    fn conn(&mut self) -> &mut PgConnection {
        match self {
            Run::Alone(member) => &mut member.group_mut().tx,
            Run::Shared(member) => member.conn(),
            Run::Single(done) => done.conn(),
        }
    }
}

impl<A: Aggregate + 'static> Pending<A> {
    /// A command that ran in `run` (made by `how`) and reached `committed`, with no key.
    fn opened<M>(how: fn(M) -> Run, (run, committed): (M, Committed)) -> Begun<A> {
        Begun::Open(Box::new(Self {
            run: how(run),
            key: None,
            committed,
            _aggregate: PhantomData,
        }))
    }

    /// What the command reached (its events are not committed yet).
    pub fn committed(&self) -> &Committed {
        &self.committed
    }

    /// The command's transaction, to read the read models back from.
    pub fn conn(&mut self) -> &mut PgConnection {
        self.run.conn()
    }

    /// Commits (or, while other commands of the aggregate wait, hands the transaction on and
    /// waits for its commit); with an idempotency key, `response` is stored under it in the
    /// same transaction.
    ///
    /// # Errors
    /// A database error, or [`CommitError::RunAgain`]: nothing of this command was committed.
    pub async fn commit(
        mut self,
        response: Option<&StoredResponse>,
    ) -> Result<Committed, CommitError> {
        if let (Some(key), Some(response)) = (&self.key, response) {
            let stored = sqlx::query!(
                "UPDATE idempotency_keys SET response = $2 WHERE key = $1",
                key,
                sqlx::types::Json(response) as _
            )
            .execute(self.run.conn())
            .await;
            if let Err(e) = stored {
                if let Run::Alone(member) = self.run {
                    if let Err(left) = member.leave(true).await {
                        tracing::debug!(error = %left, "the group of a failed command failed");
                    }
                }
                return Err(e.into());
            }
        }
        match self.run {
            Run::Alone(mut member) => {
                member.group_mut().events += self.committed.events.len() as u64;
                member.leave(false).await?;
            }
            Run::Shared(member) => member.leave().await?,
            Run::Single(done) => done.leave(),
        }
        Ok(self.committed)
    }
}
