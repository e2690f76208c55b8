//! `cutover-bench`: the peers Cutover is measured against, as small HTTP servers on Cutover's
//! own routes and request bodies. `scripts/bench/run` starts them beside Cutover, each on its
//! own database of the same Postgres cluster, and drives all three with wrk.
//!
//! - `dual-write-server`: one sqlx transaction per request that writes the legacy and the new
//!   read-model tables directly, no events (what teams do today);
//! - `cqrs-server`: stock cqrs-es + postgres-es (`postgres_cqrs`), with `GenericQuery` views
//!   that the framework updates after the events have committed (its default).

mod dual_write;
mod shared;
mod stock_cqrs;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use axum::routing::get;
use axum::Router;
use clap::{Args, Parser, Subcommand};
use cutover_runtime::telemetry::{self, LogFormat};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// Cutover's benchmark peers.
#[derive(Debug, Parser)]
#[command(name = "cutover-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the hand-written dual-write peer (applies Cutover's schema to its database).
    DualWriteServer(ServerArgs),
    /// Serve the stock cqrs-es + postgres-es peer (creates its event and view tables).
    CqrsServer(ServerArgs),
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Address to listen on.
    #[arg(long, env = "BENCH_BIND")]
    bind: SocketAddr,

    /// Postgres connection URL of the peer's own database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,

    /// Most pooled connections (Cutover's default is 20).
    #[arg(long, env = "BENCH_DB_MAX_CONNECTIONS", default_value_t = 20)]
    max_connections: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(LogFormat::Pretty, "warn");
    let (args, routes) = match cli.command {
        Command::DualWriteServer(args) => {
            let pool = connect(&args).await?;
            (args, dual_write::router(pool).await?)
        }
        Command::CqrsServer(args) => {
            let pool = connect(&args).await?;
            (args, stock_cqrs::router(pool).await?)
        }
    };
    let app: Router = routes.route("/health", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    axum::serve(listener, app).await.context("serving HTTP")
}

/// A pool with Cutover's defaults: the given size, 5 s to acquire a connection.
async fn connect(args: &ServerArgs) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(args.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&args.database_url)
        .await
        .context("connecting to Postgres")
}
