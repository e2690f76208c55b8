//! Connecting to Postgres and applying the schema.
//!
//! With a `DATABASE_URL` the service uses that server; without one it starts (or reuses) the
//! private cluster of [`crate::local_postgres`] and uses its `cutover` database.

use std::path::PathBuf;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::local_postgres::{ClusterLocation, LocalPostgres, LocalPostgresError, LOCAL_DATABASE};
use crate::servers;

/// The schema: every table, embedded from `migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Where the data lives; shared by every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// Postgres connection URL. Several servers in libpq's multi-host form
    /// (`postgres://u@h1:p1,h2:p2/db?target_session_attrs=read-write`) are followed to the
    /// primary. When unset, a private cluster is started from the machine's Postgres binaries
    /// in `--data-dir` and stopped again on exit.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// `DATABASE_URL` goes through a connection pooler in transaction mode (pgbouncer with
    /// `pool_mode = transaction` and `server_reset_query_always = 1`). Every statement then runs
    /// inside a transaction, no statement stays prepared across transactions, and what needs a
    /// session of its own uses `--session-database-url`, which is then required.
    #[arg(long, env = "CUTOVER_DATABASE_POOLED")]
    pub database_pooled: bool,

    /// A direct connection to the primary, for what needs a session of its own: LISTEN, the
    /// locks a rebuild holds for its whole run, schema migrations, and the admin and metrics
    /// queries. Defaults to `DATABASE_URL`.
    #[arg(long, env = "CUTOVER_SESSION_DATABASE_URL", hide_env_values = true)]
    pub session_database_url: Option<String>,

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
    #[error(
        "none of the {servers} servers of the URL {}",
        if *read_write { "takes writes (target_session_attrs=read-write)" } else { "answers" }
    )]
    NoServer { servers: usize, read_write: bool },
    #[error("cannot apply the schema migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the private Postgres start was interrupted")]
    Join(#[from] tokio::task::JoinError),
    #[error(
        "CUTOVER_DATABASE_POOLED is set but CUTOVER_SESSION_DATABASE_URL is not: through a \
         transaction pooler, LISTEN, rebuild locks and migrations need a direct connection to the \
         primary; set CUTOVER_SESSION_DATABASE_URL to one"
    )]
    PooledWithoutSession,
}

/// How a pool reaches Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A connection of its own to the server: sessions, prepared statements kept.
    Direct,
    /// Through a pooler in transaction mode: each transaction may run on another server
    /// connection, so nothing may outlive a transaction.
    Pooled {
        /// `statement_timeout`, set in each transaction (a pooler refuses it at connect).
        statement_timeout_secs: u64,
    },
}

impl Route {
    /// What a transaction on this route runs right after `BEGIN` (and in the same round trip):
    /// nothing directly, the statement timeout through a pooler.
    pub fn transaction_settings(self) -> String {
        match self {
            Self::Direct => String::new(),
            Self::Pooled {
                statement_timeout_secs,
            } => format!("; SET LOCAL statement_timeout = '{statement_timeout_secs}s'"),
        }
    }
}

/// The open pools, and the private cluster behind them when one was started.
pub struct Database {
    /// Commands and reads (through the pooler when `route` says so).
    pub pool: PgPool,
    /// How `pool` reaches Postgres.
    pub route: Route,
    /// A direct connection to the primary, for sessions (`pool` itself when no
    /// `--session-database-url` was given).
    pub session: PgPool,
    pub local: Option<LocalPostgres>,
}

impl Database {
    /// Connects (starting the private cluster when no URL is set) and applies migrations.
    ///
    /// # Errors
    /// See [`DatabaseError`].
    pub async fn open(args: &DatabaseArgs) -> Result<Self, DatabaseError> {
        if args.database_pooled && args.session_database_url.is_none() {
            return Err(DatabaseError::PooledWithoutSession);
        }
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
        let route = args.route();
        let (pool, session) = match &args.session_database_url {
            Some(session_url) => (
                pool(&url, route, args).await?,
                pool(session_url, Route::Direct, args).await?,
            ),
            None => {
                let pool = pool(&url, Route::Direct, args).await?;
                (pool.clone(), pool)
            }
        };
        MIGRATOR.run(&session).await?;
        Ok(Self {
            pool,
            route,
            session,
            local,
        })
    }

    /// Closes the pool and stops the private cluster if this process started it.
    ///
    /// # Errors
    /// Stopping the cluster failed.
    pub async fn close(self) -> Result<(), DatabaseError> {
        self.pool.close().await;
        self.session.close().await;
        if let Some(local) = self.local {
            tokio::task::spawn_blocking(move || local.stop_if_started_here()).await??;
        }
        Ok(())
    }
}

impl DatabaseArgs {
    /// How `DATABASE_URL` (and the read URLs) reach Postgres.
    pub fn route(&self) -> Route {
        if self.database_pooled {
            Route::Pooled {
                statement_timeout_secs: self.statement_timeout_secs,
            }
        } else {
            Route::Direct
        }
    }
}

/// Opens a pool on `url`, reached by `route`, with the bounded timeouts of `args`. A URL of
/// several servers (libpq's multi-host form) opens it on the first usable one, and the pool
/// follows the primary from then on (see [`crate::servers`]).
///
/// # Errors
/// A malformed URL, a failed first connection, or no usable server among several.
pub async fn pool(url: &str, route: Route, args: &DatabaseArgs) -> Result<PgPool, DatabaseError> {
    let options = pool_options(
        args.max_connections,
        Duration::from_secs(args.acquire_timeout_secs),
    );
    let servers = servers::parse(url)
        .map_err(|e| DatabaseError::BadUrl(sqlx::Error::Configuration(e.into())))?;
    if !servers.need_following() {
        return options
            .connect_with(connect_options(url, route, args.statement_timeout_secs)?)
            .await
            .map_err(DatabaseError::Connect);
    }
    let candidates = servers
        .urls
        .iter()
        .map(|url| connect_options(url, route, args.statement_timeout_secs))
        .collect::<Result<Vec<_>, _>>()?;
    let read_write = servers.read_write;
    // A failover under way: ask again until the acquire timeout, as a single server would.
    let deadline = std::time::Instant::now() + Duration::from_secs(args.acquire_timeout_secs);
    let first = loop {
        match servers::find(&candidates, read_write).await {
            Some(first) => break first,
            None if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None => {
                return Err(DatabaseError::NoServer {
                    servers: candidates.len(),
                    read_write,
                })
            }
        }
    };
    let options = if read_write {
        // A connection opened while a failover demotes its server is refused, and the pool
        // opens another (on the server `follow` has moved it to by then).
        options.after_connect(|conn, _| {
            Box::pin(async move {
                match servers::takes_writes(conn).await? {
                    true => Ok(()),
                    false => Err(sqlx::Error::Protocol(
                        "the database server is read-only (a standby, or a primary not yet \
                         writable)"
                            .into(),
                    )),
                }
            })
        })
    } else {
        options
    };
    let pool = options
        .connect_with(candidates[first].clone())
        .await
        .map_err(DatabaseError::Connect)?;
    servers::follow(pool.clone(), candidates, read_write, first);
    Ok(pool)
}

/// The connection options of `url` on `route`. A transaction pooler refuses the startup
/// parameters `options` and `extra_float_digits` (the statement timeout is then set in each
/// transaction: [`Route::transaction_settings`]), and statements are not kept prepared: the
/// next transaction may run on another server connection.
///
/// # Errors
/// A malformed URL.
pub fn connect_options(
    url: &str,
    route: Route,
    statement_timeout_secs: u64,
) -> Result<PgConnectOptions, DatabaseError> {
    let options: PgConnectOptions = url.parse().map_err(DatabaseError::BadUrl)?;
    Ok(match route {
        Route::Direct => {
            options.options([("statement_timeout", format!("{statement_timeout_secs}s"))])
        }
        Route::Pooled { .. } => options.statement_cache_capacity(0).extra_float_digits(None),
    })
}

/// A pool's options: at most `max_connections`, waiting `acquire_timeout` for one, and checking
/// only connections that sat idle a while.
pub fn pool_options(max_connections: u32, acquire_timeout: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
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
    let exists: bool = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS "exists!""#,
        name
    )
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
        // Class 08: connection exceptions; 57P01-57P03: shutting down, crashed, starting up;
        // 25006: a server that no longer takes writes (a primary demoted by a failover).
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|code| {
                code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
            }) || is_read_only(e)
        }
        _ => false,
    }
}

/// Whether `e` is a server refusing a write because it is read-only (SQLSTATE 25006): a standby,
/// or a primary a failover demoted.
pub fn is_read_only(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("25006"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pooled_database_without_a_session_url_is_refused_before_anything_starts() {
        let args = DatabaseArgs {
            database_url: Some("postgres://cutover@127.0.0.1:6432/cutover".to_owned()),
            database_pooled: true,
            session_database_url: None,
            data_dir: PathBuf::from("/nonexistent"),
            max_connections: 1,
            acquire_timeout_secs: 1,
            statement_timeout_secs: 1,
        };
        let refused = Database::open(&args).await.err();
        assert!(
            matches!(refused, Some(DatabaseError::PooledWithoutSession)),
            "{refused:?}"
        );
    }
}
