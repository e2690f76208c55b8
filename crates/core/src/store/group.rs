//! A command's place in its aggregate's group ([`super::lanes`]): how it leaves it (committing,
//! or handing the transaction to the next command), and a group left behind.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::error::{CommitError, GroupFailure};
use super::event_store::EventStore;
use super::lanes::{Group, Lane, Turn, MAX_GROUP};

/// A command's place in a group, until the group is handed on or committed. Dropped without
/// [`Member::leave`] (a cancelled request), it still undoes this command alone and hands the
/// group on, from a task of its own.
pub(super) struct Member {
    pub(super) store: EventStore,
    pub(super) turn: Option<Turn>,
    pub(super) group: Option<Box<Group>>,
    /// Whether the group had commands before this one (which then took a savepoint).
    pub(super) joined: bool,
    /// The group's version and position before this command.
    pub(super) before: (i64, i64),
    /// Whether the group's aggregate is still as before this command, after a failure.
    pub(super) kept_state: bool,
}

impl Member {
    pub(super) fn group_mut(&mut self) -> &mut Group {
        self.group
            .as_mut()
            .unwrap_or_else(|| unreachable!("a member's group is taken only when it leaves"))
    }

    /// Leaves the group: with `undo`, this command's work is undone first (to its savepoint; a
    /// group of this command alone is rolled back). Then the group is handed to the next
    /// command waiting, if any and if not full, and this one waits for its commit; or it is
    /// committed now.
    ///
    /// # Errors
    /// The group failed to commit: nothing of it, this command included, was committed.
    pub(super) async fn leave(mut self, undo: bool) -> Result<(), CommitError> {
        let (Some(mut turn), Some(mut group)) = (self.turn.take(), self.group.take()) else {
            return Ok(());
        };
        let store = self.store.clone();
        if undo {
            if self.joined {
                let undone = sqlx::query!("ROLLBACK TO SAVEPOINT member")
                    .execute(&mut *group.tx)
                    .await;
                if let Err(e) = undone {
                    group.fail(GroupFailure::of(&e));
                    store.inner.lanes.leave(turn);
                    return Err(e.into());
                }
                (group.version, group.position) = self.before;
                if !self.kept_state {
                    // Read again by the next command.
                    group.state = None;
                }
            } else {
                // Nothing but this command in it: roll it all back.
                group.fail(GroupFailure::fault("rolled back"));
                store.inner.lanes.leave(turn);
                return Ok(());
            }
        } else {
            group.members += 1;
        }
        if group.members == 0 {
            // Only undone commands in it.
            group.fail(GroupFailure::fault("rolled back"));
            store.inner.lanes.leave(turn);
            return Ok(());
        }
        let has_waiters = turn.lane.waiting.load(Ordering::SeqCst) > 0;
        if has_waiters && group.members < MAX_GROUP {
            let mut outcome = group.outcome.subscribe();
            let watched = Arc::downgrade(&group.outcome);
            let (lane, key) = (Arc::clone(&turn.lane), turn.key.clone());
            turn.open = Some(group);
            store.inner.lanes.leave(turn);
            tokio::spawn(store.clone().adopt_if_orphaned(lane, key, watched));
            let outcome = outcome.wait_for(Option::is_some).await.map(|o| o.clone());
            return match outcome {
                Ok(Some(Ok(()))) => Ok(()),
                Ok(Some(Err(failure))) => Err(CommitError::SharedTransaction(failure)),
                Ok(None) | Err(_) => Err(CommitError::SharedTransaction(GroupFailure::fault(
                    "the group was abandoned",
                ))),
            };
        }
        let committed = store.commit_group(&turn.key, group).await;
        store.inner.lanes.leave(turn);
        Ok(committed?)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.turn.is_none() {
            return;
        }
        // Cancelled before it left: leave from a task (the undo needs the database).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime any more: the group rolls back with its connection.
            self.group.take();
            self.turn.take();
            return;
        };
        let member = Member {
            store: self.store.clone(),
            turn: self.turn.take(),
            group: self.group.take(),
            joined: self.joined,
            before: self.before,
            kept_state: self.kept_state,
        };
        runtime.spawn(async move {
            if let Err(e) = member.leave(true).await {
                tracing::debug!(error = %e, "a cancelled command's group failed");
            }
        });
    }
}

/// How often a group handed to a waiting command is checked for having been left behind.
pub(super) const ORPHAN_CHECK: Duration = Duration::from_millis(100);

impl EventStore {
    /// Commits the group handed on to the lane's next command if that command never took it
    /// (it was cancelled while it waited): otherwise the group's transaction, with its locks,
    /// would stay open until the aggregate's next command.
    pub(super) async fn adopt_if_orphaned(
        self,
        lane: Arc<Lane>,
        key: (&'static str, String),
        watched: std::sync::Weak<watch::Sender<Option<Result<(), GroupFailure>>>>,
    ) {
        tokio::time::sleep(ORPHAN_CHECK).await;
        match watched.upgrade() {
            Some(outcome) if outcome.borrow().is_none() => {}
            // Ended, one way or the other.
            _ => return,
        }
        // Commands queued before this one take the lane first; if the group still waits in
        // the lane after them, nobody is coming for it, and committing it now is safe (every
        // command in it has finished its part).
        let mut open = Arc::clone(&lane.open).lock_owned().await;
        match open.open.take() {
            Some(group) if std::ptr::eq(Arc::as_ptr(&group.outcome), watched.as_ptr()) => {
                if let Err(e) = self.commit_group(&key, group).await {
                    tracing::warn!(error = %e, "a group left behind failed to commit");
                }
            }
            // Taken by the next command, which finishes it (or hands it on again, and that
            // hand-over is watched in turn).
            other => open.open = other,
        }
    }

    /// Commits a group and tells its commands.
    pub(super) async fn commit_group(
        &self,
        key: &(&'static str, String),
        group: Box<Group>,
    ) -> Result<(), sqlx::Error> {
        let Group {
            tx,
            state,
            version,
            position,
            events,
            outcome,
            ..
        } = *group;
        match tx.commit().await {
            Ok(()) => {
                outcome.send_replace(Some(Ok(())));
                if events > 0 {
                    self.inner.metrics.events_appended.inc_by(events);
                    self.inner.appended.send_modify(|n| *n = n.wrapping_add(1));
                }
                if let Some(state) = state {
                    self.inner.cache.put(key, state, version, position);
                }
                Ok(())
            }
            Err(e) => {
                outcome.send_replace(Some(Err(GroupFailure::of(&e))));
                Err(e)
            }
        }
    }
}
