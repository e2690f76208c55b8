//! Connecting to Postgres and applying the schema.
//!
//! With a `DATABASE_URL` the service uses that server; without one it starts (or reuses) the
//! private cluster of [`crate::local_postgres`] and uses its `cutover` database.

use std::path::PathBuf;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::local_postgres::{ClusterLocation, LocalPostgres, LocalPostgresError};

/// The schema: every table, embedded from `migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Name of the database used in the private cluster.
pub const LOCAL_DATABASE: &str = "cutover";

/// Where the data lives; shared by every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// Postgres connection URL. When unset, a private cluster is started from the machine's
    /// Postgres binaries in `--data-dir` and stopped again on exit.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Folder of the private Postgres cluster used when `DATABASE_URL` is unset.
    #[arg(long, env = "CUTOVER_DATA_DIR", default_value = ".cutover/postgres")]
    pub data_dir: PathBuf,

    /// Most connections the pool opens.
    #[arg(long, env = "CUTOVER_DB_MAX_CONNECTIONS", default_value_t = 20)]
    pub max_connections: u32,

    /// Seconds to wait for a free pooled connection before answering "unavailable".
    #[arg(long, env = "CUTOVER_DB_ACQUIRE_TIMEOUT_SECS", default_value_t = 5)]
    pub acquire_timeout_secs: u64,

    /// Longest a single SQL statement may run, in seconds (Postgres `statement_timeout`).
    #[arg(long, env = "CUTOVER_DB_STATEMENT_TIMEOUT_SECS", default_value_t = 30)]
    pub statement_timeout_secs: u64,
}

/// The URL of the database that `args` designate, without connecting or starting anything:
/// `DATABASE_URL`, or the socket URL of the private cluster's `cutover` database (in its
/// fallback folder when the `postgres` user cannot reach `--data-dir`).
///
/// # Errors
/// The private cluster's folder cannot be resolved.
pub fn database_url(args: &DatabaseArgs) -> Result<String, DatabaseError> {
    match &args.database_url {
        Some(url) => Ok(url.clone()),
        None => Ok(ClusterLocation::resolve(&args.data_dir)?.url(LOCAL_DATABASE)),
    }
}

/// The database could not be reached or prepared.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error(transparent)]
    LocalPostgres(#[from] LocalPostgresError),
    #[error("DATABASE_URL is not a valid Postgres URL")]
    BadUrl(#[source] sqlx::Error),
    #[error("cannot connect to Postgres")]
    Connect(#[source] sqlx::Error),
    #[error("cannot apply the schema migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the private Postgres start was interrupted")]
    Join(#[from] tokio::task::JoinError),
}

/// An open pool, and the private cluster behind it when one was started.
pub struct Database {
    pub pool: PgPool,
    pub local: Option<LocalPostgres>,
}

impl Database {
    /// Connects (starting the private cluster when no URL is set) and applies migrations.
    ///
    /// # Errors
    /// See [`DatabaseError`].
    pub async fn open(args: &DatabaseArgs) -> Result<Self, DatabaseError> {
        let (url, local) = match &args.database_url {
            Some(url) => (url.clone(), None),
            None => {
                let root = args.data_dir.clone();
                let local =
                    tokio::task::spawn_blocking(move || LocalPostgres::ensure_running(&root))
                        .await??;
                ensure_database(&local, LOCAL_DATABASE).await?;
                (local.url(LOCAL_DATABASE), Some(local))
            }
        };
        let pool = pool(&url, args).await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool, local })
    }

    /// Closes the pool and stops the private cluster if this process started it.
    ///
    /// # Errors
    /// Stopping the cluster failed.
    pub async fn close(self) -> Result<(), DatabaseError> {
        self.pool.close().await;
        if let Some(local) = self.local {
            tokio::task::spawn_blocking(move || local.stop_if_started_here()).await??;
        }
        Ok(())
    }
}

/// Opens a pool on `url` with the bounded timeouts of `args`.
///
/// # Errors
/// A malformed URL or a failed first connection.
pub async fn pool(url: &str, args: &DatabaseArgs) -> Result<PgPool, DatabaseError> {
    let options: PgConnectOptions = url.parse().map_err(DatabaseError::BadUrl)?;
    let options = options.options([(
        "statement_timeout",
        format!("{}s", args.statement_timeout_secs),
    )]);
    PgPoolOptions::new()
        .max_connections(args.max_connections)
        .acquire_timeout(Duration::from_secs(args.acquire_timeout_secs))
        // A connection that was idle a while is checked before it is handed out (it may have
        // died with a Postgres restart); one returned a moment ago is not, which saves a round
        // trip per command under load.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for < CHECK_IDLE_AFTER {
                    return Ok(true);
                }
                Ok(sqlx::Connection::ping(conn).await.is_ok())
            })
        })
        .connect_with(options)
        .await
        .map_err(DatabaseError::Connect)
}

/// How long a pooled connection may sit idle before it is checked on its way out.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Creates database `name` in the private cluster unless it exists.
async fn ensure_database(local: &LocalPostgres, name: &str) -> Result<(), DatabaseError> {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&local.url("postgres"))
        .await
        .map_err(DatabaseError::Connect)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&admin)
            .await
            .map_err(DatabaseError::Connect)?;
    if !exists {
        let created = sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&admin)
            .await;
        if let Err(e) = created {
            // Another process may have created it in the meantime.
            let duplicate =
                matches!(&e, sqlx::Error::Database(db) if db.code().as_deref() == Some("42P04"));
            if !duplicate {
                return Err(DatabaseError::Connect(e));
            }
        }
    }
    admin.close().await;
    Ok(())
}

/// Whether `e` means the database cannot be reached right now (down, restarting, out of
/// connections), rather than that something is wrong with the request or the code.
pub fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        // Class 08: connection exceptions; 57P01-57P03: shutting down, crashed, starting up.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}
