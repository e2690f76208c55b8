//! `cutover-api`: serves the HTTP API. Without `DATABASE_URL` it starts a private Postgres
//! cluster and stops it again on shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use cutover_api::config::Config;
use cutover_api::reads::Reads;
use cutover_api::serve::serve;
use cutover_api::{app, AppState};
use cutover_core::store::EventStore;
use cutover_runtime::auth::Tokens;
use cutover_runtime::database::Database;
use cutover_runtime::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(config.log_format, "info,sqlx=warn,tower_http=info");
    let tokens = Tokens::load(config.tokens.as_deref(), config.tokens_file.as_deref())
        .context("reading the tokens")?;
    if tokens.is_none() && !config.bind.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {}: no tokens are configured, so every request would be \
             accepted. Set CUTOVER_TOKENS or CUTOVER_TOKENS_FILE, or bind a loopback address \
             such as 127.0.0.1",
            config.bind
        );
    }
    let database = Database::open(&config.database)
        .await
        .context("preparing the database")?;
    // (Where the private cluster is, and the psql command that opens it, is logged by
    // LocalPostgres::ensure_running.)
    let store = EventStore::new(
        database.pool.clone(),
        cutover_projections::inline_projectors(),
        config.command_retries,
    )
    .on_route(database.route);
    cutover_engine::declarations::check(&database.session, store.projectors())
        .await
        .context("checking the read models' tables")?;
    let listener = cutover_api::serve::bind(config.bind)
        .with_context(|| format!("binding {}", config.bind))?;
    tracing::info!(address = %config.bind, "listening");
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let reads = Reads::open(
        database.pool.clone(),
        database.route,
        database.session.clone(),
        &config.reads,
        &config.database,
        stopping.clone(),
    )
    .context("opening the replicas")?;
    let mut state = AppState::new(store, database.session.clone(), reads, stopping.clone());
    state.idempotency_ttl = Duration::from_secs(config.idempotency_ttl_secs);
    state.tokens = tokens.map(Arc::new);
    state.swap = config.swap;
    if let Some(url) = &config.legacy_url {
        state
            .follow_old_system(url, stopping.clone())
            .context("--legacy-url")?;
    }
    tokio::spawn(forget_expired_keys(database.session.clone(), stopping));
    let metrics = state.metrics.clone();
    serve(
        listener,
        app(state),
        metrics,
        &config.connections,
        async move {
            shutdown_signal().await;
            // Live event streams end, so that open connections do not hold the shutdown.
            stop.send_replace(true);
        },
    )
    .await;
    database.close().await.context("closing the database")
}

/// Deletes expired idempotency keys every few minutes, a bounded number at a time.
async fn forget_expired_keys(pool: sqlx::PgPool, mut stopping: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(300)) => {}
            _ = stopping.changed() => return,
        }
        let deleted = sqlx::query!(
            "DELETE FROM idempotency_keys WHERE key IN (
                 SELECT key FROM idempotency_keys WHERE expires_at < now() LIMIT 10000)"
        )
        .execute(&pool)
        .await;
        if let Err(e) = deleted {
            tracing::warn!(error = %e, "cannot delete expired idempotency keys");
        }
    }
}

async fn shutdown_signal() {
    cutover_runtime::signals::stop_requested().await;
    tracing::info!("shutting down: finishing in-flight requests");
}
