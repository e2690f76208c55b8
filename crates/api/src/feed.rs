//! Wake-ups for the event feed's live streams: one `LISTEN cutover_events` connection per
//! server turns Postgres notifications (sent at the commit of every append) into a counter that
//! each stream watches, and a shutdown signal ends the streams so the server can stop.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

/// The notification channel the `events_appended` trigger notifies.
const CHANNEL: &str = "cutover_events";

/// Cheap to clone; handed to every stream.
#[derive(Clone)]
pub struct FeedSignals {
    appended: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
}

impl FeedSignals {
    /// Starts listening on `pool`'s database. The streams end when `shutdown` turns true.
    pub fn start(pool: PgPool, shutdown: watch::Receiver<bool>) -> Self {
        let (tx, appended) = watch::channel(0_u64);
        tokio::spawn(listen(pool, tx, shutdown.clone()));
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
                    tx.send_modify(|n| *n += 1);
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
                Ok(_) => tx.send_modify(|n| *n += 1),
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
