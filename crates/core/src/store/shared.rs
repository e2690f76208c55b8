//! Commands on different aggregates that are ready at the same time share one transaction
//! (group commit): one `BEGIN` with every aggregate's lock, one statement reading the streams
//! not in the cache, one statement appending every command's events with every inline
//! projection's rows, each command's read-back in turn, one `COMMIT`.
//!
//! Each command keeps its own all-or-nothing: when anything fails before the commit (the
//! shared append, a read-back, a client that hung up), nothing of the transaction commits and
//! every command of it runs again alone, in a transaction of its own.
//!
//! A command takes a seat here only on its first attempt, without an idempotency key, when no
//! other command of its aggregate is queued or holds its aggregate's transaction open, and none
//! was while its lane existed (a hot aggregate): those go through the aggregate's own queue
//! ([`super::group`]).

use super::cache::Kept;
use std::sync::{Arc, PoisonError};

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::{oneshot, watch};

use super::error::{CommitError, Committed, GroupFailure};
use super::event_store::{EventStore, Request};
use super::lanes::{Held, Tried, Turn};
use super::seats::{Decided, Lent, Locked, Outcome, Seat, Share, Wants};
use super::stream::begin_locked;
use super::stream::{append, conflict_names, fetch, to_store, AppendError, Loaded};
use cutover_engine::event::StoredEvent;
use cutover_engine::locks::aggregate_lock_key;
use cutover_engine::read_source::ReadSources;

impl EventStore {
    /// Whether no command waits for a shared transaction and none is in flight.
    pub(super) fn seats_idle(&self) -> bool {
        let queue = self
            .inner
            .seats
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        queue.waiting.is_empty() && queue.in_flight == 0
    }

    /// Queues `seat` for the next shared transaction, and starts one when none is in flight,
    /// or when fewer than [`MAX_IN_FLIGHT`] are and [`MIN_SECOND`] commands wait.
    pub(super) fn take_seat(&self, seat: Seat) {
        let start = {
            let mut queue = self
                .inner
                .seats
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            queue.waiting.push(seat);
            queue.start()
        };
        if let Some(seats) = start {
            tokio::spawn(self.clone().share_while_waiting(seats));
        }
    }

    /// Runs shared transactions, one after the other, while enough commands wait for one.
    async fn share_while_waiting(self, mut seats: Vec<Seat>) {
        loop {
            self.share(seats).await;
            let mut queue = self
                .inner
                .seats
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            queue.in_flight -= 1;
            match queue.start() {
                Some(next) => seats = next,
                None => return,
            }
        }
    }

    /// One shared transaction of `seats`.
    async fn share(&self, seats: Vec<Seat>) {
        let mut locks: Vec<i64> = seats.iter().map(|s| s.lock).collect();
        // One order for every transaction that takes several, so that two never deadlock.
        locks.sort_unstable();
        locks.dedup();
        // Its statements write a few rows each, found by key; the planner, which expects a
        // hundred rows of each `jsonb_populate_recordset`, would hash-join them with a scan of
        // the whole table instead.
        let begin = format!(
            "{}; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off",
            begin_locked(self.inner.route, &locks)
        );
        let mut events = Vec::new();
        let mut members = Vec::new();
        let mut reads = Vec::new();
        for seat in seats {
            match seat.wants {
                Wants::Append { events: more, lent } => {
                    members.push((more.len(), lent));
                    events.extend(more);
                }
                Wants::Read { stream, ready } => reads.push((stream, ready)),
            }
        }
        let Ok(mut tx) = self.inner.pool.begin_with(begin).await else {
            // Each command meets the failure again alone, and answers it.
            alone(reads);
            return lend_none(members);
        };
        if !reads.is_empty() {
            let wanted: Vec<(&str, &str, i64)> = reads
                .iter()
                .map(|((t, id), _)| (*t, id.as_str(), 0))
                .collect();
            let Ok((streams, _)) = fetch(&mut tx, &wanted).await else {
                alone(reads);
                return lend_none(members);
            };
            let mut decisions = Vec::with_capacity(reads.len());
            for ((_, ready), rows) in reads.into_iter().zip(streams) {
                let (decided, decision) = oneshot::channel();
                if ready.send(Locked::Decide { rows, decided }).is_ok() {
                    decisions.push(decision);
                }
            }
            for decision in decisions {
                if let Ok(Decided::Append { events: more, lent }) = decision.await {
                    members.push((more.len(), lent));
                    events.extend(more);
                }
            }
        }
        if members.is_empty() {
            return;
        }
        let appended = match self.inner.inline.current(&mut tx).await {
            Ok(inline) => {
                append(&mut tx, &self.inner.projectors, &inline, &mut events, false).await
            }
            Err(e) => Err(AppendError::Database(e)),
        };
        let (read_sources, written) = match appended {
            Ok(appended) => appended,
            Err(AppendError::Conflict(Some(detail))) => {
                self.inner.metrics.shared_rollbacks.inc();
                let mut from = 0;
                for (count, lent) in members {
                    let mine = events.get(from..from + count).unwrap_or_default();
                    from += count;
                    let lost_race = conflict_names(&detail, mine);
                    let _ = lent.send(Lent::Alone { lost_race });
                }
                return;
            }
            Err(e) => {
                if matches!(
                    e,
                    AppendError::InlineChanged | AppendError::UnknownProjection(_)
                ) {
                    self.inner.inline.forget();
                }
                self.inner.metrics.shared_rollbacks.inc();
                return lend_none(members);
            }
        };
        let outcome = Arc::new(watch::channel(None).0);
        let appended = events.len() as u64;
        let commands = members.len() as u64;
        let mut events = events.into_iter();
        let mut members = members.into_iter();
        while let Some((count, lent)) = members.next() {
            let (back, returned) = oneshot::channel();
            let share = Share {
                tx,
                events: events.by_ref().take(count).collect(),
                read_sources: read_sources.clone(),
                written: written.clone(),
                back,
                outcome: outcome.subscribe(),
            };
            if lent.send(Lent::Yours(Box::new(share))).is_err() {
                // Its command is gone, its events with the others': none commits.
                outcome.send_replace(Some(Outcome::Alone));
                self.inner.metrics.shared_rollbacks.inc();
                return lend_none(members.collect());
            }
            match returned.await {
                Ok(returned) => tx = returned,
                Err(_) => {
                    // A read-back failed or its client hung up.
                    outcome.send_replace(Some(Outcome::Alone));
                    self.inner.metrics.shared_rollbacks.inc();
                    return lend_none(members.collect());
                }
            }
        }
        match tx.commit().await {
            Ok(()) => {
                self.inner.metrics.events_appended.inc_by(appended);
                self.inner.metrics.shared_transactions.inc();
                self.inner.metrics.shared_commands.inc_by(commands);
                self.inner.appended.send_modify(|n| *n = n.wrapping_add(1));
                outcome.send_replace(Some(Outcome::Committed));
            }
            Err(e) => {
                outcome.send_replace(Some(Outcome::Failed(GroupFailure::of(&e))));
            }
        }
    }
}

/// Tells every command that waits to read its stream to run alone.
fn alone(reads: Vec<((&'static str, String), oneshot::Sender<Locked>)>) {
    for (_, ready) in reads {
        // One that is gone needs no telling.
        let _ = ready.send(Locked::Alone);
    }
}

/// Tells every command that decided to append but was not lent the transaction to run alone.
fn lend_none(members: Vec<(usize, oneshot::Sender<Lent>)>) {
    for (_, lent) in members {
        let _ = lent.send(Lent::Alone { lost_race: false });
    }
}

/// A command of a shared transaction from its read-back to the transaction's end. Dropped
/// before [`SharedMember::leave`] (its read-back failed, or its client hung up), it rolls the
/// transaction back, and every other command of it runs again alone.
pub(super) struct SharedMember {
    pub(super) store: EventStore,
    pub(super) turn: Option<Turn>,
    pub(super) tx: Option<Transaction<'static, Postgres>>,
    pub(super) back: Option<oneshot::Sender<Transaction<'static, Postgres>>>,
    pub(super) outcome: watch::Receiver<Option<Outcome>>,
    /// The aggregate after this command, for the cache once committed.
    pub(super) state: Option<Box<dyn Kept>>,
    pub(super) version: i64,
    pub(super) position: i64,
}

impl SharedMember {
    pub(super) fn conn(&mut self) -> &mut PgConnection {
        self.tx.as_mut().unwrap_or_else(|| {
            unreachable!("a member's transaction is given back only as it leaves")
        })
    }

    /// Gives the transaction back and waits for its end.
    ///
    /// # Errors
    /// It did not commit: [`CommitError::RunAgain`] when it was rolled back before its commit.
    pub(super) async fn leave(mut self) -> Result<(), CommitError> {
        if let (Some(tx), Some(back)) = (self.tx.take(), self.back.take()) {
            // If the runner is gone, so is the transaction.
            let _ = back.send(tx);
        }
        let outcome = self
            .outcome
            .wait_for(Option::is_some)
            .await
            .map(|o| o.clone())
            .ok()
            .flatten();
        let turn = self.turn.take();
        let result = match outcome {
            Some(Outcome::Committed) => {
                if let (Some(turn), Some(state)) = (&turn, self.state.take()) {
                    self.store
                        .inner
                        .cache
                        .put(&turn.key, state, self.version, self.position);
                }
                Ok(())
            }
            Some(Outcome::Alone) => Err(CommitError::RunAgain),
            Some(Outcome::Failed(failure)) => Err(CommitError::SharedTransaction(failure)),
            None => Err(CommitError::SharedTransaction(GroupFailure::fault(
                "the shared transaction was abandoned",
            ))),
        };
        if let Some(turn) = turn {
            self.store.inner.lanes.leave(turn);
        }
        result
    }
}

impl Drop for SharedMember {
    fn drop(&mut self) {
        // The transaction, not given back, rolls back as the runner sees it gone.
        self.back.take();
        self.tx.take();
        if let Some(turn) = self.turn.take() {
            self.store.inner.lanes.leave(turn);
        }
    }
}

impl EventStore {
    /// Lets `aggregate` (at `version`) decide on `request`: the aggregate after it and its
    /// events, ready to append; `None` when it is refused, changes nothing or expects another
    /// version (the command then runs alone, where it meets the same and answers it). An
    /// aggregate the decision left untouched goes back into the cache.
    pub(super) async fn decide<A>(
        &self,
        request: &Request<'_, A>,
        key: &(&'static str, String),
        mut aggregate: A,
        version: i64,
        position: i64,
    ) -> Option<(A, Vec<StoredEvent>)>
    where
        A: Aggregate + 'static,
        A::Command: Clone,
    {
        let mut new_events = Vec::new();
        let mut accepted = false;
        if request
            .expected_version
            .is_none_or(|expected| expected == version)
        {
            let sink = EventSink::default();
            accepted = aggregate
                .handle(request.command.clone(), request.services, &sink)
                .await
                .is_ok();
            new_events = sink.collect().await;
        }
        match to_store::<A>(request.aggregate_id, version, &new_events, request.metadata) {
            Ok(stored) if accepted && !stored.is_empty() => Some((aggregate, stored)),
            _ => {
                if new_events.is_empty() {
                    // Untouched: as the log has it at `version`.
                    self.inner
                        .cache
                        .put(key, Box::new(aggregate), version, position);
                }
                None
            }
        }
    }
}

impl EventStore {
    /// Runs `request` in a shared transaction, up to its read-back. Whatever keeps it from
    /// appending there (it is refused or changes nothing, a version to check, the transaction
    /// failed) has it run alone instead, where it meets the same again and answers it.
    pub(super) async fn run_shared<A>(
        &self,
        request: &Request<'_, A>,
        turn: Turn,
    ) -> Tried<SharedMember>
    where
        A: Aggregate + 'static,
        A::Command: Clone,
        A::Error: 'static,
    {
        let id = request.aggregate_id;
        let key = turn.key.clone();
        // Left if this command is cancelled while it waits (its client hung up).
        let mut held = Held::new(&self.inner.lanes, turn);
        let lock = aggregate_lock_key(A::TYPE, id);
        let start = self
            .inner
            .cache
            .take::<A>(id)
            .or_else(|| request.new_aggregate.then(|| (A::default(), 0, 0)));
        let (lent, lending) = oneshot::channel();
        let (aggregate, version, position) = match start {
            Some((aggregate, version, position)) => {
                let Some((aggregate, events)) = self
                    .decide(request, &key, aggregate, version, position)
                    .await
                else {
                    return held.usual(false);
                };
                self.take_seat(Seat {
                    lock,
                    wants: Wants::Append { events, lent },
                });
                (aggregate, version, position)
            }
            None => {
                let (ready, locked) = oneshot::channel();
                self.take_seat(Seat {
                    lock,
                    wants: Wants::Read {
                        stream: (A::TYPE, id.to_owned()),
                        ready,
                    },
                });
                let Ok(Locked::Decide { rows, decided }) = locked.await else {
                    return held.usual(false);
                };
                let mut loaded = Loaded {
                    aggregate: A::default(),
                    version: 0,
                    position: 0,
                    read_sources: ReadSources::default(),
                };
                let decision = match loaded.apply(id, rows) {
                    Ok(()) => {
                        let Loaded {
                            aggregate,
                            version,
                            position,
                            ..
                        } = loaded;
                        self.decide(request, &key, aggregate, version, position)
                            .await
                            .map(|decided| (decided, version, position))
                    }
                    Err(_) => None,
                };
                let Some(((aggregate, events), version, position)) = decision else {
                    let _ = decided.send(Decided::Abstain);
                    return held.usual(false);
                };
                if decided.send(Decided::Append { events, lent }).is_err() {
                    return held.usual(false);
                }
                (aggregate, version, position)
            }
        };
        let share = match lending.await {
            Ok(Lent::Yours(share)) => share,
            Ok(Lent::Alone { lost_race }) => return held.usual(lost_race),
            Err(_) => return held.usual(false),
        };
        let Share {
            tx,
            events,
            read_sources,
            written,
            back,
            outcome,
        } = *share;
        let (version, position) = events
            .last()
            .map_or((version, position), |e| (e.sequence, e.position));
        let member = SharedMember {
            store: self.clone(),
            turn: Some(held.take()),
            tx: Some(tx),
            back: Some(back),
            outcome,
            state: Some(Box::new(aggregate)),
            version,
            position,
        };
        let committed = Committed {
            version,
            position,
            events,
            read_sources,
            written,
        };
        Tried::Ran(Box::new((member, committed)))
    }
}
