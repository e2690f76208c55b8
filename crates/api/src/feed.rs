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
    appended: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
}

impl FeedSignals {
    /// Starts following `store`'s commits and listening on its database. The streams end
    /// when `shutdown` turns true.
    pub fn start(store: &EventStore, shutdown: watch::Receiver<bool>) -> Self {
        let (tx, appended) = watch::channel(0_u64);
        let tx = std::sync::Arc::new(tx);
        tokio::spawn(listen(
            store.pool().clone(),
            std::sync::Arc::clone(&tx),
            shutdown.clone(),
        ));
        tokio::spawn(pass_on(
            store.pool().clone(),
            store.appended(),
            tx,
            shutdown.clone(),
        ));
        Self { appended, shutdown }
    }

    /// A receiver that changes whenever events may have been appended.
    pub fn appended(&self) -> watch::Receiver<u64> {
        self.appended.clone()
    }

    /// A receiver that turns true when the server shuts down.
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }
}

/// Wakes the streams after each of this server's commits, and tells the other instances.
/// Commits that happen while a notification is being sent are told in the next one.
async fn pass_on(
    pool: PgPool,
    mut committed: watch::Receiver<u64>,
    tx: std::sync::Arc<watch::Sender<u64>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            changed = committed.changed() => if changed.is_err() { return },
            stopped = shutdown.changed() => if stopped.is_err() || *shutdown.borrow() { return },
        }
        committed.borrow_and_update();
        tx.send_modify(|n| *n = n.wrapping_add(1));
        let told = sqlx::query("SELECT pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&pool)
            .await;
        if let Err(e) = told {
            tracing::debug!(error = %e, "event feed: cannot notify the other instances");
        }
    }
}

async fn listen(
    pool: PgPool,
    tx: std::sync::Arc<watch::Sender<u64>>,
    mut shutdown: watch::Receiver<bool>,
) {
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
