//! The server's configuration: flags, each with an environment variable.

use std::net::SocketAddr;

use clap::Parser;
use cutover_runtime::database::DatabaseArgs;
use cutover_runtime::telemetry::LogFormat;

/// Cutover's HTTP API server.
#[derive(Debug, Clone, Parser)]
#[command(name = "cutover-api", version, about, after_help = AFTER_HELP)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "CUTOVER_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub reads: crate::reads::ReadArgs,

    #[command(flatten)]
    pub swap: cutover_engine::rebuild::SwapArgs,

    #[command(flatten)]
    pub connections: crate::serve::ConnectionArgs,

    /// How many times a command is re-run after losing an optimistic-concurrency race before
    /// the client gets a 409.
    #[arg(long, env = "CUTOVER_COMMAND_RETRIES", default_value_t = 5)]
    pub command_retries: u32,

    /// How long an `Idempotency-Key` and its first response are remembered, in seconds.
    #[arg(long, env = "CUTOVER_IDEMPOTENCY_TTL_SECS", default_value_t = 86_400)]
    pub idempotency_ttl_secs: u64,

    /// Bearer tokens, as comma-separated `scope:token` entries (scopes: read, write, admin).
    /// With no tokens at all, the server accepts every request and only listens on loopback.
    #[arg(long, env = "CUTOVER_TOKENS", hide_env_values = true)]
    pub tokens: Option<String>,

    /// A file of tokens, one `scope sha256-hex-of-token` per line (`#` comments); combined
    /// with `--tokens`.
    #[arg(long, env = "CUTOVER_TOKENS_FILE")]
    pub tokens_file: Option<std::path::PathBuf>,

    /// The old system's database to follow (see docs/adopting-while-the-old-system-writes.md):
    /// the server then applies the changes of every domain followed (`POST
    /// /admin/follows/{domain}` or `cutover follow` starts one), taking turns with any other
    /// follower of the domain.
    #[arg(long, env = "CUTOVER_LEGACY_URL", hide_env_values = true)]
    pub legacy_url: Option<String>,

    /// Log line format; logs go to stderr, one line per request with its `x-request-id`.
    #[arg(long, env = "CUTOVER_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
}

const AFTER_HELP: &str = "\
Environment:
  RUST_LOG        Log filter (default: info,sqlx=warn,tower_http=info), e.g. RUST_LOG=debug
  Every flag above can also be set by the environment variable shown beside it.

Pages and routes beside the API:
  /console        The migration console (watch with a read token, act with an admin token)
  /docs           Interactive API docs (Swagger UI) of /openapi.json
  /metrics        Prometheus metrics (OpenMetrics text; read token)
  /health         Liveness and database reachability (no token)

See README.md, docs/operations.md and docs/architecture.md.";

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::Config;

    /// The connection bounds' flags, their environment variables and defaults, as the flags
    /// table of docs/operations.md lists them.
    #[test]
    fn the_connection_bounds_default_to_what_the_operations_guide_says() {
        let config = Config::try_parse_from(["cutover-api"]).unwrap();
        let limits = &config.connections;
        let guide = include_str!("../../../docs/operations.md");
        for (flag, variable, value) in [
            (
                "--header-read-timeout-ms",
                "CUTOVER_HEADER_READ_TIMEOUT_MS",
                limits.header_read_timeout_ms,
            ),
            (
                "--body-read-timeout-ms",
                "CUTOVER_BODY_READ_TIMEOUT_MS",
                limits.body_read_timeout_ms,
            ),
            (
                "--max-http-connections",
                "CUTOVER_MAX_HTTP_CONNECTIONS",
                u64::from(limits.max_http_connections),
            ),
        ] {
            let row = format!("| `{flag}` | `{variable}` | {value} |");
            assert!(guide.contains(&row), "docs/operations.md has no row {row}");
        }
        assert_eq!(
            (limits.header_read_timeout_ms, limits.body_read_timeout_ms),
            (10_000, 30_000)
        );
        assert_eq!(limits.max_http_connections, 1_024);
    }

    #[test]
    fn the_connection_bounds_are_set_by_flags_and_refuse_zero() {
        let config = Config::try_parse_from([
            "cutover-api",
            "--header-read-timeout-ms",
            "1500",
            "--body-read-timeout-ms",
            "2500",
            "--max-http-connections",
            "64",
        ])
        .unwrap();
        let limits = &config.connections;
        assert_eq!(
            (
                limits.header_read_timeout_ms,
                limits.body_read_timeout_ms,
                limits.max_http_connections
            ),
            (1_500, 2_500, 64)
        );
        for flag in [
            "--header-read-timeout-ms",
            "--body-read-timeout-ms",
            "--max-http-connections",
        ] {
            assert!(
                Config::try_parse_from(["cutover-api", flag, "0"]).is_err(),
                "{flag} 0"
            );
        }
    }
}
