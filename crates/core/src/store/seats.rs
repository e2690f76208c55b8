//! The commands waiting for a transaction shared with commands of other aggregates (group
//! commit, run by [`super::shared`]), and what they are told along the way.

use std::mem;
use std::sync::Mutex;

use sqlx::{Postgres, Transaction};
use tokio::sync::{oneshot, watch};

use super::error::{GroupFailure, Written};
use super::stream::StreamRow;
use cutover_engine::event::StoredEvent;
use cutover_engine::read_source::ReadSources;

/// Most shared transactions in flight at once; commands arriving meanwhile wait for the next.
/// A second one starts only for at least [`MIN_SECOND`] waiting commands: a transaction of one
/// command costs more than running it alone.
/// Two keep Postgres busy while this process hands a transaction from one command's read-back
/// to the next (measured on two cores: one in flight ran half as fast, four or eight ran a
/// quarter slower, in smaller groups).
const MAX_IN_FLIGHT: usize = 2;

/// The fewest waiting commands that start a shared transaction while another is in flight.
const MIN_SECOND: usize = 4;

/// Most commands in one shared transaction.
const MAX_SEATS: usize = 64;

/// The commands waiting for a shared transaction, and how many are in flight.
#[derive(Default)]
pub(super) struct Seats {
    pub(super) queue: Mutex<Queue>,
}

#[derive(Default)]
pub(super) struct Queue {
    pub(super) waiting: Vec<Seat>,
    pub(super) in_flight: usize,
}

/// A command waiting for a shared transaction.
pub(super) struct Seat {
    /// Its aggregate's advisory-lock key.
    pub(super) lock: i64,
    pub(super) wants: Wants,
}

/// What a seated command needs of the transaction.
pub(super) enum Wants {
    /// Its events appended: it decided on its aggregate as the cache had it, or on a new one.
    /// Its turn to read back comes on `lent`.
    Append {
        events: Vec<StoredEvent>,
        lent: oneshot::Sender<Lent>,
    },
    /// Its stream (type, id) read first, under the locks; then it decides.
    Read {
        stream: (&'static str, String),
        ready: oneshot::Sender<Locked>,
    },
}

/// What a seated command is told once the transaction holds every lock.
pub(super) enum Locked {
    /// The events of its stream: decide, and answer.
    Decide {
        rows: Vec<StreamRow>,
        decided: oneshot::Sender<Decided>,
    },
    /// The transaction failed: run alone.
    Alone,
}

/// A seated command's decision.
pub(super) enum Decided {
    /// Its events, to be appended; its turn to read back comes on `lent`.
    Append {
        events: Vec<StoredEvent>,
        lent: oneshot::Sender<Lent>,
    },
    /// It appends nothing here (refused, no change, a version to check): it runs alone.
    Abstain,
}

/// A seated command's turn to read its answer back.
pub(super) enum Lent {
    Yours(Box<Share>),
    /// The transaction failed before this command's turn: run alone; `lost_race` when its
    /// append lost the race for a sequence number (another writer appended to its stream).
    Alone {
        lost_race: bool,
    },
}

/// The shared transaction, lent to one command, with what the command appended.
pub(super) struct Share {
    pub(super) tx: Transaction<'static, Postgres>,
    pub(super) events: Vec<StoredEvent>,
    pub(super) read_sources: ReadSources,
    /// The rows the shared statement wrote (every command's).
    pub(super) written: Option<Written>,
    pub(super) back: oneshot::Sender<Transaction<'static, Postgres>>,
    pub(super) outcome: watch::Receiver<Option<Outcome>>,
}

/// How a shared transaction ended, as its commands are told.
#[derive(Debug, Clone)]
pub(super) enum Outcome {
    Committed,
    /// It was rolled back before its commit: every command of it runs again alone.
    Alone,
    /// Its commit failed.
    Failed(GroupFailure),
}

impl Queue {
    /// The seats of a shared transaction to start now, if one is to start (counted in flight).
    pub(super) fn start(&mut self) -> Option<Vec<Seat>> {
        let enough = match self.in_flight {
            0 => !self.waiting.is_empty(),
            n => n < MAX_IN_FLIGHT && self.waiting.len() >= MIN_SECOND,
        };
        if !enough {
            return None;
        }
        self.in_flight += 1;
        Some(if self.waiting.len() <= MAX_SEATS {
            mem::take(&mut self.waiting)
        } else {
            self.waiting.drain(..MAX_SEATS).collect()
        })
    }
}
