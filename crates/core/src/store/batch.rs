//! A batch: many commands on aggregates of one type, decided one after another in memory and
//! appended together — one transaction, and one statement for all their events and every
//! inline projection's rows. For a writer that turns a stream of outside changes into commands
//! (`cutover follow`), where a transaction per command would cost its round trips every time.
//!
//! The batch begins by taking the append lock (shared) and every aggregate's lock, as a
//! command does, and reads the aggregates from the log in one query; commands of one aggregate
//! then see each other's events, in the order they were handled. The caller may write rows of
//! its own in the same transaction (where a stream stands) before committing.

use std::collections::HashMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde_json::Value;
use sqlx::{PgConnection, Postgres, Transaction};

use super::error::CommandError;
use super::event_store::EventStore;
use super::stream::{append, begin_locked, fetch, to_store, AppendError, Loaded};
use cutover_engine::event::StoredEvent;
use cutover_engine::locks::aggregate_lock_key;
use cutover_engine::read_source::ReadSources;

/// Commands on aggregates of type `A` decided in memory, not yet appended.
pub struct Batch<A: Aggregate + 'static> {
    store: EventStore,
    tx: Transaction<'static, Postgres>,
    aggregates: HashMap<String, Loaded<A>>,
    read_sources: ReadSources,
    staged: Vec<StoredEvent>,
    /// How many of `staged` are appended.
    appended: usize,
}

impl EventStore {
    /// Begins a batch on aggregates `ids` of type `A`: a transaction that holds the append
    /// lock (shared) and each aggregate's lock, with every aggregate read from the log.
    ///
    /// # Errors
    /// A database error, or a stored event that cannot be read.
    pub async fn batch<A>(&self, ids: &[String]) -> Result<Batch<A>, CommandError<A::Error>>
    where
        A: Aggregate + 'static,
        A::Error: 'static,
    {
        let mut ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut locks: Vec<i64> = ids
            .iter()
            .map(|id| aggregate_lock_key(A::TYPE, id))
            .collect();
        locks.sort_unstable();
        let mut tx = self
            .inner
            .pool
            .begin_with(begin_locked(self.inner.route, &locks))
            .await?;
        let streams: Vec<(&str, &str, i64)> = ids.iter().map(|id| (A::TYPE, *id, 0)).collect();
        let (rows, read_sources) = fetch(&mut tx, &streams).await?;
        let mut aggregates = HashMap::with_capacity(ids.len());
        for (id, rows) in ids.into_iter().zip(rows) {
            let mut loaded = Loaded {
                aggregate: A::default(),
                version: 0,
                position: 0,
                read_sources: ReadSources::default(),
            };
            loaded.apply(id, rows)?;
            aggregates.insert(id.to_owned(), loaded);
        }
        Ok(Batch {
            store: self.clone(),
            tx,
            aggregates,
            read_sources,
            staged: Vec::new(),
            appended: 0,
        })
    }
}

impl<A: Aggregate + 'static> Batch<A>
where
    A::Error: 'static,
{
    /// Every domain's read source, as read under the batch's locks.
    pub fn read_sources(&self) -> &ReadSources {
        &self.read_sources
    }

    /// Aggregate `aggregate_id` (one the batch began on) as the commands handled so far left
    /// it.
    pub fn aggregate(&self, aggregate_id: &str) -> Option<&A> {
        self.aggregates
            .get(aggregate_id)
            .map(|loaded| &loaded.aggregate)
    }

    /// The batch's transaction, to read from or write to.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Lets aggregate `aggregate_id` (one the batch began on) decide `command`, and stages its
    /// events (with `metadata`) to be appended; returns how many. A refused command stages
    /// nothing: `CommandError::Rejected`.
    ///
    /// # Errors
    /// The aggregate's refusal, or an aggregate the batch did not begin on.
    pub async fn handle(
        &mut self,
        aggregate_id: &str,
        command: A::Command,
        services: &A::Services,
        metadata: &Value,
    ) -> Result<usize, CommandError<A::Error>> {
        let loaded = self.aggregates.get_mut(aggregate_id).ok_or_else(|| {
            CommandError::Broken(format!(
                "a batch was asked to run a command on {} {aggregate_id}, which it did not lock",
                A::TYPE
            ))
        })?;
        let sink = EventSink::default();
        let decided = loaded.aggregate.handle(command, services, &sink).await;
        let events = sink.collect().await;
        match decided {
            Ok(()) => {}
            Err(e) if events.is_empty() => return Err(CommandError::Rejected(e)),
            // The aggregate applied events of a command it then refused: its state is no
            // longer the log's, and the batch must not go on from it.
            Err(e) => {
                return Err(CommandError::Broken(format!(
                    "{} {aggregate_id} refused a command after deciding events for it: {e}",
                    A::TYPE
                )))
            }
        }
        let stored = to_store::<A>(aggregate_id, loaded.version, &events, metadata)
            .map_err(CommandError::Serialize)?;
        loaded.version += i64::try_from(stored.len()).unwrap_or(i64::MAX);
        let count = stored.len();
        self.staged.extend(stored);
        Ok(count)
    }

    /// Appends the events staged since the last append and writes every inline projection's
    /// rows for them, in one statement; the transaction stays open for the caller's own
    /// writes. Returns how many events were appended.
    ///
    /// # Errors
    /// `InlineChanged` when a rebuild swapped or a projection was retired since the batch
    /// began (nothing is written: run the batch again), or another failure of the append.
    pub async fn append(&mut self) -> Result<usize, CommandError<A::Error>> {
        let new = &mut self.staged[self.appended..];
        if new.is_empty() {
            return Ok(0);
        }
        let inline = self.store.inner.inline.current(&mut self.tx).await?;
        let appended = append(
            &mut self.tx,
            &self.store.inner.projectors,
            &inline,
            new,
            false,
        )
        .await;
        match appended {
            Ok((sources, _)) => {
                self.read_sources = sources;
                let count = new.len();
                self.appended = self.staged.len();
                Ok(count)
            }
            // Every aggregate of the batch is locked: only a writer that skips the locks
            // could have taken a sequence number.
            Err(AppendError::Conflict(_)) => Err(CommandError::Conflict { attempts: 1 }),
            Err(AppendError::InlineChanged) => {
                self.store.inner.inline.forget();
                Err(CommandError::InlineChanged)
            }
            Err(AppendError::UnknownProjection(name)) => {
                self.store.inner.inline.forget();
                Err(CommandError::Broken(format!(
                    "projection {name} is maintained inline, but this program has no projector \
                     for it"
                )))
            }
            Err(AppendError::Projection(e)) => Err(e.into()),
            Err(AppendError::Database(e)) => Err(CommandError::Database(e)),
            Err(AppendError::NeedsTransaction) => Err(CommandError::Broken(
                "a batch's append in a transaction was refused as needing one".to_owned(),
            )),
        }
    }

    /// Appends what is staged and commits; returns the events appended.
    ///
    /// # Errors
    /// See [`Batch::append`], or a database error: nothing of the batch was committed.
    pub async fn commit(mut self) -> Result<Vec<StoredEvent>, CommandError<A::Error>> {
        self.append().await?;
        self.tx.commit().await?;
        if !self.staged.is_empty() {
            self.store
                .inner
                .metrics
                .events_appended
                .inc_by(self.staged.len() as u64);
            self.store
                .inner
                .appended
                .send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(self.staged)
    }
}
