//! Wake-ups for the event feed's live streams, as a counter that each stream watches: this
//! server's own commits bump it at once; they are passed on to the other instances with a
//! `NOTIFY cutover_events`, sent after the commit and outside the command's transaction (a
//! transaction that notifies serialises commits); and one `LISTEN cutover_events` connection
//! per server bumps it for the other instances' commits. Appends by anything else (the CLI,
//! other tools) are seen by the streams' own periodic look. A shutdown signal ends the streams
//! so the server can stop.

use std::time::Duration;

use cutover_core::store::EventStore;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

/// The notification channel of appends.
const CHANNEL: &str = "cutover_events";

/// Cheap to clone; handed to every stream.
#[derive(Clone)]
pub struct FeedSignals {
    /// This server's commits.
    local: watch::Receiver<u64>,
    /// The other instances' commits, as notified.
    remote: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
}

impl FeedSignals {
    /// Starts following `store`'s commits and listening on `session`, a direct connection to
    /// the primary. The streams end when `shutdown` turns true.
    pub fn start(store: &EventStore, session: &PgPool, shutdown: watch::Receiver<bool>) -> Self {
        let (tx, remote) = watch::channel(0_u64);
        tokio::spawn(listen(session.clone(), tx, shutdown.clone()));
        tokio::spawn(notify_others(
            session.clone(),
            store.appended(),
            shutdown.clone(),
        ));
        Self {
            local: store.appended(),
            remote,
            shutdown,
        }
    }

    /// Receivers that change whenever events may have been appended: by this server, and by
    /// the other instances.
    pub fn appended(&self) -> (watch::Receiver<u64>, watch::Receiver<u64>) {
        (self.local.clone(), self.remote.clone())
    }

    /// A receiver that turns true when the server shuts down.
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }
}

/// How often, at most, this server tells the other instances about its commits: commits in
/// between are told together, so that a busy server sends tens of notifications a second, not
/// one per commit.
const NOTIFY_EVERY: Duration = Duration::from_millis(25);

/// Tells the other instances about this server's commits (commits within [`NOTIFY_EVERY`] of
/// each other in one notification).
async fn notify_others(
    pool: PgPool,
    mut committed: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            changed = committed.changed() => if changed.is_err() { return },
            stopped = shutdown.changed() => if stopped.is_err() || *shutdown.borrow() { return },
        }
        committed.borrow_and_update();
        let told = sqlx::query!("SELECT pg_notify($1, '')", CHANNEL)
            .execute(&pool)
            .await;
        if let Err(e) = told {
            tracing::debug!(error = %e, "event feed: cannot notify the other instances");
        }
        tokio::time::sleep(NOTIFY_EVERY).await;
    }
}

async fn listen(pool: PgPool, tx: watch::Sender<u64>, mut shutdown: watch::Receiver<bool>) {
    let mut listener: Option<PgListener> = None;
    loop {
        if *shutdown.borrow() || tx.is_closed() {
            return;
        }
        let active = match listener.as_mut() {
            Some(active) => active,
            None => match connect(&pool).await {
                Ok(fresh) => {
                    // Notifications sent while not listening are lost: look again.
                    tx.send_modify(|n| *n = n.wrapping_add(1));
                    listener.insert(fresh)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event feed: cannot listen; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        stopped = shutdown.changed() => if stopped.is_err() { return },
                    }
                    continue;
                }
            },
        };
        tokio::select! {
            received = active.recv() => match received {
                Ok(_) => tx.send_modify(|n| *n = n.wrapping_add(1)),
                Err(e) => {
                    tracing::warn!(error = %e, "event feed: listener connection lost");
                    listener = None;
                }
            },
            stopped = shutdown.changed() => if stopped.is_err() { return },
        }
    }
}

async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}
