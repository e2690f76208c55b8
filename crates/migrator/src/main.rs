//! `cutover`: the operator's command line.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use cutover_core::database::{Database, DatabaseArgs};
use cutover_core::telemetry::{self, LogFormat};

/// Cutover's operator CLI.
#[derive(Debug, Parser)]
#[command(name = "cutover", version, about)]
struct Cli {
    #[command(flatten)]
    database: DatabaseArgs,

    /// Log line format.
    #[arg(
        long,
        env = "CUTOVER_LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the schema migrations (the server also applies them at start).
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, "warn");
    match cli.command {
        Command::Migrate => {
            let database = Database::open(&cli.database)
                .await
                .context("applying the schema")?;
            let applied = cutover_core::database::MIGRATOR.iter().count();
            database.close().await.context("closing the database")?;
            println!("schema is up to date ({applied} migrations)");
        }
    }
    Ok(())
}
