//! The test harness: a real Postgres and the real router on a real socket.
//!
//! With `DATABASE_URL` set, tests use that server; otherwise a private cluster is started (once,
//! shared by every test process) in `CUTOVER_TEST_PG_DIR`, by default `target/test-postgres`. Each test gets a database of its
//! own, copied from a template database that holds the migrated schema, so tests never see each
//! other's rows.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::OnceLock;

use cutover_api::reads::Reads;
use cutover_api::{app, AppState};
use cutover_core::store::EventStore;
use cutover_runtime::database::{self, DatabaseArgs, MIGRATOR};
use cutover_runtime::local_postgres::LocalPostgres;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor as _, PgPool};

/// Where the test databases are created, and the template they are copied from.
struct Server {
    admin: PgConnectOptions,
    /// `admin` as a URL.
    url: String,
    template: String,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to prepare the test server")
                .block_on(prepare_server())
        })
        .join()
        .expect("preparing the test Postgres server")
    })
}

async fn prepare_server() -> Server {
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) => url,
        Err(_) => {
            let local = LocalPostgres::ensure_running(&test_pg_base())
                .unwrap_or_else(|e| panic!("starting the test Postgres: {e}"));
            local.url("postgres")
        }
    };
    let admin = PgConnectOptions::from_str(&url).expect("a Postgres URL");
    let template = format!("cutover_tpl_{}", schema_fingerprint());
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(admin.clone())
        .await
        .expect("connecting to the test Postgres");
    let mut conn = pool.acquire().await.expect("an admin connection");
    // Other test processes build the same template: one at a time.
    conn.execute("SELECT pg_advisory_lock(8675309)")
        .await
        .expect("the template lock");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&template)
            .fetch_one(&mut *conn)
            .await
            .expect("looking up the template");
    if !exists {
        let building = format!("{template}_building");
        conn.execute(format!("DROP DATABASE IF EXISTS {building}").as_str())
            .await
            .expect("dropping a half-built template");
        conn.execute(format!("CREATE DATABASE {building}").as_str())
            .await
            .expect("creating the template");
        let schema_pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(admin.clone().database(&building))
            .await
            .expect("connecting to the template");
        MIGRATOR
            .run(&schema_pool)
            .await
            .expect("migrating the template");
        schema_pool.close().await;
        conn.execute(format!("ALTER DATABASE {building} RENAME TO {template}").as_str())
            .await
            .expect("naming the template");
    }
    conn.execute("SELECT pg_advisory_unlock(8675309)")
        .await
        .expect("releasing the template lock");
    drop(conn);
    pool.close().await;
    Server {
        admin,
        url,
        template,
    }
}

/// Changes whenever a migration is added or edited, so a stale template is never reused.
fn schema_fingerprint() -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for migration in MIGRATOR.iter() {
        migration.version.hash(&mut hasher);
        migration.checksum.hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

/// A database of one test's own, with the schema applied.
pub struct TestDb {
    pub pool: PgPool,
    pub options: PgConnectOptions,
    pub name: String,
    /// Whether it lives on the shared test server (which the test pgbouncer is in front of),
    /// rather than on a test's own cluster.
    pub shared: bool,
}

impl TestDb {
    pub async fn new() -> Self {
        let server = server();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(server.admin.clone())
            .await
            .expect("connecting to the test Postgres");
        admin
            .execute(format!("CREATE DATABASE {name} TEMPLATE {}", server.template).as_str())
            .await
            .expect("creating the test database");
        // A copy does not take its template's database privileges (which the migrations set,
        // e.g. no TEMPORARY for PUBLIC): give it the template's.
        sqlx::query(
            "UPDATE pg_database SET datacl = (SELECT datacl FROM pg_database WHERE datname = $2)
              WHERE datname = $1",
        )
        .bind(&name)
        .bind(&server.template)
        .execute(&admin)
        .await
        .expect("giving the test database its template's privileges");
        admin.close().await;
        Self::connect(server.admin.clone().database(&name), name, true).await
    }

    /// The database of `options` (named `name`), through a pool of its own.
    async fn connect(options: PgConnectOptions, name: String, shared: bool) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(40)
            .connect_with(options.clone())
            .await
            .expect("connecting to the test database");
        Self {
            pool,
            options,
            name,
            shared,
        }
    }

    /// The database's URL, for a binary to connect to.
    pub fn url(&self) -> String {
        let mut url = reqwest::Url::parse(&server().url).expect("the test server's URL");
        url.set_path(&format!("/{}", self.name));
        url.to_string()
    }

    /// The same database through a pool of its own, as a second server instance has.
    pub async fn same_database(&self) -> Self {
        Self {
            pool: self.another_pool(40).await,
            options: self.options.clone(),
            name: self.name.clone(),
            shared: self.shared,
        }
    }

    /// A second, independent pool on the same database (for sessions a test drives by hand).
    pub async fn another_pool(&self, max_connections: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(self.options.clone())
            .await
            .expect("connecting to the test database")
    }

    /// The event store of a CLI or tool working on this database beside the servers.
    pub fn store(&self) -> EventStore {
        EventStore::new(
            self.pool.clone(),
            cutover_projections::inline_projectors(),
            5,
        )
    }

    /// How many events the log holds.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .expect("counting events")
    }
}

impl TestDb {
    /// The database of `url` (a test's own cluster), through a pool of its own.
    pub async fn at(url: &str) -> Self {
        let options = PgConnectOptions::from_str(url).expect("a Postgres URL");
        let name = options
            .get_database()
            .expect("a URL that names its database")
            .to_owned();
        Self::connect(options, name, false).await
    }
}

/// Whether this run's servers reach Postgres through pgbouncer (`CUTOVER_TEST_POOLED=1`, as
/// `scripts/test` sets for its second run of the guarantees' tests).
pub fn through_pgbouncer() -> bool {
    std::env::var("CUTOVER_TEST_POOLED").is_ok_and(|v| v == "1")
}

/// A real pgbouncer in transaction pooling mode in front of the shared test server, started
/// once per test process in `CUTOVER_TEST_PG_DIR` + `-pgbouncer` (a pgbouncer an earlier run
/// left there is stopped first; `scripts/test` stops this one at the end). Its socket folder.
pub fn pgbouncer() -> &'static Path {
    static SOCKET_DIR: OnceLock<PathBuf> = OnceLock::new();
    SOCKET_DIR.get_or_init(start_pgbouncer)
}

/// The port pgbouncer listens on (in its socket folder).
pub const PGBOUNCER_PORT: u16 = 6432;

fn start_pgbouncer() -> PathBuf {
    let server = server();
    let dir = PathBuf::from(format!("{}-pgbouncer", test_pg_base().display()));
    std::fs::create_dir_all(&dir).expect("creating pgbouncer's folder");
    let pidfile = dir.join("pgbouncer.pid");
    if let Ok(pid) = std::fs::read_to_string(&pidfile) {
        // An earlier run's: stopped, so that this run's configuration is the one served.
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        for _ in 0..100 {
            if !pidfile.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(&pidfile);
    }
    let host = server.admin.get_socket().map_or_else(
        || server.admin.get_host().to_owned(),
        |socket| socket.display().to_string(),
    );
    let port = server.admin.get_port();
    let users = dir.join("users.txt");
    std::fs::write(&users, "\"postgres\" \"\"\n").expect("writing pgbouncer's users");
    let config = dir.join("pgbouncer.ini");
    std::fs::write(
        &config,
        format!(
            "[databases]\n* = host={host} port={port}\n\n[pgbouncer]\nlisten_addr =\n\
             listen_port = {PGBOUNCER_PORT}\nunix_socket_dir = {dir}\nauth_type = trust\n\
             auth_file = {users}\npool_mode = transaction\nserver_reset_query_always = 1\n\
             max_client_conn = 2000\ndefault_pool_size = 20\nlogfile = {log}\n\
             pidfile = {pid}\n",
            dir = dir.display(),
            users = users.display(),
            log = dir.join("pgbouncer.log").display(),
            pid = pidfile.display(),
        ),
    )
    .expect("writing pgbouncer's configuration");
    let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("pgbouncer");
    // pgbouncer, like Postgres, refuses to run as root.
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0");
    let mut command = if root {
        for path in [&dir, &users, &config] {
            let _ = std::process::Command::new("chown")
                .arg("postgres")
                .arg(path)
                .status();
        }
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", binary]);
        c
    } else {
        std::process::Command::new(binary)
    };
    let status = command
        .arg("-d")
        .arg(&config)
        .current_dir("/")
        .status()
        .expect("running pgbouncer (scripts/test installs it)");
    assert!(
        status.success(),
        "pgbouncer did not start: see {}",
        dir.display()
    );
    let socket = dir.join(format!(".s.PGSQL.{PGBOUNCER_PORT}"));
    for _ in 0..200 {
        if socket.exists() {
            return dir;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("pgbouncer did not listen on {}", socket.display());
}

/// Where this run's test clusters live: `CUTOVER_TEST_PG_DIR`, by default
/// `target/test-postgres`.
fn test_pg_base() -> PathBuf {
    std::env::var_os("CUTOVER_TEST_PG_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-postgres"),
        PathBuf::from,
    )
}

/// The real router served on a loopback port, over a test database.
pub struct TestApp {
    pub db: TestDb,
    pub address: SocketAddr,
    pub client: reqwest::Client,
    /// Set to true to shut the server's live streams down.
    pub shutdown: tokio::sync::watch::Sender<bool>,
}

/// Options of [`TestApp::spawn_with`].
pub struct AppOptions {
    pub command_retries: u32,
    /// `CUTOVER_TOKENS` of the server; `None` for none.
    pub tokens: Option<&'static str>,
    /// `--read-database-url`, `--replica-max-lag-ms` and `--replica-wait-ms`.
    pub reads: cutover_api::reads::ReadArgs,
    /// `--legacy-url`: the old system's database the server follows.
    pub legacy_url: Option<String>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            command_retries: 5,
            tokens: None,
            reads: cutover_api::reads::ReadArgs {
                urls: Vec::new(),
                replica_max_lag_ms: 5_000,
                replica_wait_ms: 1_000,
            },
            legacy_url: None,
        }
    }
}

/// The `DatabaseArgs` of a test server (only whether it is pooled, and the pool's sizes and
/// timeouts, are read).
fn database_args() -> DatabaseArgs {
    DatabaseArgs {
        database_url: None,
        database_pooled: through_pgbouncer(),
        session_database_url: None,
        data_dir: PathBuf::new(),
        max_connections: 40,
        acquire_timeout_secs: 5,
        statement_timeout_secs: 30,
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(AppOptions::default()).await
    }

    pub async fn spawn_with(options: AppOptions) -> Self {
        Self::spawn_on(TestDb::new().await, options).await
    }

    /// Another server instance on the database of `self`.
    pub async fn second_instance(&self) -> Self {
        Self::spawn_on(self.db.same_database().await, AppOptions::default()).await
    }

    /// A server on `db` (its pool is the session connection), reading as `options` say;
    /// through pgbouncer when [`through_pgbouncer`] and `db` is on the shared server.
    pub async fn spawn_on(db: TestDb, options: AppOptions) -> Self {
        let mut args = database_args();
        args.database_pooled &= db.shared;
        let route = args.route();
        let pool = if args.database_pooled {
            let url = format!(
                "postgres://postgres@localhost:{PGBOUNCER_PORT}/{}?host={}",
                db.name,
                pgbouncer().display()
            );
            database::pool(&url, route, &args)
                .await
                .expect("connecting through pgbouncer")
        } else {
            db.pool.clone()
        };
        let store = EventStore::new(
            pool.clone(),
            cutover_projections::inline_projectors(),
            options.command_retries,
        )
        .on_route(route);
        let listener =
            cutover_api::serve::bind(([127, 0, 0, 1], 0).into()).expect("a loopback port");
        let address = listener.local_addr().expect("the bound address");
        let (shutdown, stopping) = tokio::sync::watch::channel(false);
        let reads = Reads::open(
            pool,
            route,
            db.pool.clone(),
            &options.reads,
            &args,
            stopping.clone(),
        )
        .expect("the replicas' URLs");
        let mut state = AppState::new(store, db.pool.clone(), reads, stopping.clone());
        if let Some(url) = &options.legacy_url {
            state
                .follow_old_system(url, stopping)
                .expect("a valid --legacy-url");
        }
        state.tokens = cutover_runtime::auth::Tokens::load(options.tokens, None)
            .expect("valid test tokens")
            .map(std::sync::Arc::new);
        let limits = cutover_api::serve::ConnectionArgs::default();
        let metrics = state.metrics.clone();
        tokio::spawn(async move {
            let app = app(state);
            cutover_api::serve::serve(listener, app, metrics, &limits, std::future::pending())
                .await;
        });
        Self {
            db,
            address,
            client: reqwest::Client::new(),
            shutdown,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path))
    }

    pub fn put(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.put(self.url(path))
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.delete(self.url(path))
    }

    /// The value of one sample of `/metrics` (see [`sample_in`]), named with its labels as the exposition writes
    /// them (`cutover_events_appended_total`, `name{label="value"}`); panics when absent, so a
    /// metric that disappears fails the test that reads it.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self
            .get("/metrics")
            .send()
            .await
            .expect("scraping /metrics")
            .text()
            .await
            .expect("reading /metrics");
        sample_in(&text, sample)
            .unwrap_or_else(|| panic!("no sample {sample} in /metrics:\n{text}"))
    }

    /// Puts `domain` in shadow wanting `reads` reads, sends that many GETs of `path` (a route of
    /// the domain, with `token` if the server wants one), and waits until the server has
    /// counted them in the database (it adds its counts every second).
    pub async fn shadow_reads(&self, domain: &str, path: &str, reads: i64, token: Option<&str>) {
        let authorized = |request: reqwest::RequestBuilder| match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let started = authorized(self.put(&format!("/admin/shadow/{domain}")))
            .json(&serde_json::json!({ "min_reads": reads }))
            .send()
            .await
            .expect("putting the domain in shadow");
        assert_eq!(started.status(), reqwest::StatusCode::OK, "shadow {domain}");
        for _ in 0..reads {
            authorized(self.get(path))
                .send()
                .await
                .expect("a shadowed GET");
        }
        for _ in 0..100 {
            let windows: serde_json::Value = authorized(self.get("/admin/shadow"))
                .send()
                .await
                .expect("the shadow windows")
                .json()
                .await
                .expect("the shadow windows' JSON");
            let counted = windows
                .as_array()
                .into_iter()
                .flatten()
                .find(|w| w["domain"] == domain)
                .and_then(|w| w["reads"].as_i64())
                .unwrap_or(0);
            if counted >= reads {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the server did not count {reads} shadow reads of {domain}");
    }

    /// Sends `request` while the appends are held back (as a rebuild's swap holds them) and
    /// returns the first lock it waits for there: its type and, for a relation, the table's
    /// name (a command alone in one statement waits at `events`; one in a transaction at the
    /// append lock, `advisory`). Then lets the appends go and returns the answer.
    pub async fn lock_awaited_by(
        &self,
        request: reqwest::RequestBuilder,
    ) -> (Option<(String, String)>, reqwest::Response) {
        let mut holder = self.db.pool.begin().await.expect("a transaction");
        sqlx::Executor::execute(&mut *holder, cutover_engine::locks::HOLD_APPENDS)
            .await
            .expect("holding the appends back");
        let sent = tokio::spawn(request.send());
        let mut waiting = None;
        for _ in 0..100 {
            waiting = sqlx::query_as::<_, (String, String)>(
                "SELECT l.locktype, coalesce(c.relname::text, '')
                   FROM pg_locks AS l LEFT JOIN pg_class AS c ON c.oid = l.relation
                  WHERE NOT l.granted AND l.pid <> pg_backend_pid() LIMIT 1",
            )
            .fetch_optional(&self.db.pool)
            .await
            .expect("reading pg_locks");
            if waiting.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        holder.commit().await.expect("letting the appends go");
        let response = sent.await.expect("the request's task").expect("an answer");
        (waiting, response)
    }

    /// Switches a domain's read source directly in the database.
    pub async fn set_read_source(&self, domain: &str, source: &str) {
        sqlx::query("UPDATE read_sources SET source = $2, changed_at = now() WHERE domain = $1")
            .bind(domain)
            .bind(source)
            .execute(&self.db.pool)
            .await
            .expect("switching the read source");
    }
}

/// The path of a binary of this workspace, built by `cargo test` (the binary's own package
/// has an integration test, which makes cargo build it before any test runs), in the profile
/// and target folder this test was built in: beside the folder of the test's own executable
/// (`target/<profile>/deps/…`).
pub fn binary(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test's own path");
    let profile = test
        .parent()
        .and_then(Path::parent)
        .expect("a test executable in target/<profile>/deps");
    let path = profile.join(name);
    assert!(
        path.exists(),
        "{} is not built: run the suite with `cargo test --workspace` (scripts/test)",
        path.display()
    );
    path
}

/// A Postgres cluster of one test's own, which the test may restart: started in
/// `CUTOVER_TEST_PG_DIR` + `-<name>` (default `target/test-postgres-<name>`), with one
/// migrated database. Stopped when dropped.
pub struct OwnCluster {
    pub cluster: LocalPostgres,
    pub url: String,
}

impl OwnCluster {
    pub async fn start(name: &str) -> Self {
        let root = PathBuf::from(format!("{}-{name}", test_pg_base().display()));
        let cluster = tokio::task::spawn_blocking(move || LocalPostgres::ensure_running(&root))
            .await
            .expect("starting the cluster")
            .unwrap_or_else(|e| panic!("starting the test's own Postgres: {e}"));
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&cluster.url("postgres"))
            .await
            .expect("connecting to the test's own Postgres");
        admin
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await
            .expect("dropping the previous run's database");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("creating the database");
        admin.close().await;
        let url = cluster.url(name);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("connecting to the database");
        MIGRATOR.run(&pool).await.expect("migrating");
        pool.close().await;
        Self { cluster, url }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        if let Err(e) = self.cluster.stop_if_started_here() {
            eprintln!("stopping the test's own Postgres: {e}");
        }
    }
}

/// A streaming replica (hot standby) of a test's own cluster, made with `pg_basebackup -R` in
/// `CUTOVER_TEST_PG_DIR` + `-<name>-replica`. Stopped when dropped.
pub struct Replica {
    pub cluster: LocalPostgres,
    /// The URL of the primary's database on the replica.
    pub url: String,
    root: PathBuf,
}

impl Replica {
    /// A replica of `primary`, serving its database once it has caught up.
    pub async fn of(primary: &OwnCluster) -> Self {
        let options = PgConnectOptions::from_str(&primary.url).expect("the primary's URL");
        let name = options
            .get_database()
            .expect("a URL that names its database")
            .to_owned();
        let root = PathBuf::from(format!("{}-{name}-replica", test_pg_base().display()));
        let location = primary.cluster.location().clone();
        let cluster =
            tokio::task::spawn_blocking(move || LocalPostgres::start_replica(&root, &location))
                .await
                .expect("starting the replica")
                .unwrap_or_else(|e| panic!("starting the replica: {e}"));
        let url = cluster.url(&name);
        Self {
            cluster,
            url,
            root: PathBuf::from(format!("{}-{name}-replica", test_pg_base().display())),
        }
    }

    /// Stops the replica's server (fast shutdown).
    pub async fn stop(&self) {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            LocalPostgres::ensure_running(&root).and_then(|cluster| cluster.stop())
        })
        .await
        .expect("stopping the replica")
        .unwrap_or_else(|e| panic!("stopping the replica: {e}"));
    }

    /// Starts the stopped replica again; it goes on following the primary.
    pub async fn start(&mut self) {
        let root = self.root.clone();
        self.cluster = tokio::task::spawn_blocking(move || LocalPostgres::ensure_running(&root))
            .await
            .expect("starting the replica")
            .unwrap_or_else(|e| panic!("starting the replica: {e}"));
    }

    /// Promotes the replica to a primary of its own.
    pub async fn promote(&self) {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            LocalPostgres::ensure_running(&root).and_then(|cluster| cluster.promote())
        })
        .await
        .expect("promoting the replica")
        .unwrap_or_else(|e| panic!("promoting the replica: {e}"));
    }

    /// A connection to the replica's copy of the database.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await
            .expect("connecting to the replica")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Err(e) = self.cluster.stop_if_started_here() {
            eprintln!("stopping the test's replica: {e}");
        }
    }
}

/// Reads a response as JSON, asserting its status first (with the body in the message).
pub async fn json_with_status(
    response: reqwest::Response,
    expected: reqwest::StatusCode,
) -> serde_json::Value {
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.expect("a response body");
    assert_eq!(status, expected, "unexpected status; body: {text}");
    if !status.is_success() {
        assert_eq!(
            content_type, "application/problem+json",
            "error bodies are problem+json; body: {text}"
        );
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("invalid JSON ({e}): {text}"))
}

/// `promtool check metrics` (Prometheus's linter, through `scripts/promtool`, which fetches it
/// on first use) run on `exposition`.
pub fn promtool_check_metrics(exposition: &str) -> std::process::Output {
    use std::io::Write as _;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/promtool");
    // Fetched first, so that what the check prints is promtool's verdict alone.
    let fetched = std::process::Command::new(&script)
        .arg("--version")
        .output()
        .expect("running scripts/promtool");
    assert!(fetched.status.success(), "scripts/promtool: {fetched:?}");
    let mut child = std::process::Command::new(script)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running scripts/promtool");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(exposition.as_bytes())
        .expect("writing to promtool");
    child.wait_with_output().expect("promtool's output")
}

/// Longest a swap may hold appends back in a test under writers. The faults this catches cost
/// seconds (an autovacuum in the way of each table's move, tables dropped inside the hold);
/// under the whole suite's load on two cores a clean swap has taken 199 ms.
pub const SWAP_HOLD_BOUND: std::time::Duration = std::time::Duration::from_millis(500);

/// Rebuilds the projections `names` (or `all`) of `pool`'s database, as `cutover rebuild` does.
///
/// # Errors
/// The rebuild's own error.
pub async fn rebuild(
    pool: &PgPool,
    names: &[&str],
) -> Result<cutover_engine::rebuild::Outcome, cutover_engine::admin::AdminError> {
    rebuild_with(pool, names, cutover_engine::rebuild::SwapArgs::default()).await
}

/// [`rebuild`], with `swap` as `--swap-wait-secs` and `--swap-blocked`.
///
/// # Errors
/// The rebuild's own error.
pub async fn rebuild_with(
    pool: &PgPool,
    names: &[&str],
    swap: cutover_engine::rebuild::SwapArgs,
) -> Result<cutover_engine::rebuild::Outcome, cutover_engine::admin::AdminError> {
    use cutover_engine::rebuild::{select, Job};
    use cutover_engine::registry::Purpose;
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let selected = select(&cutover_projections::inline_projectors(), &names)?;
    Job::start(pool, selected, Purpose::Rebuild)
        .await?
        .run(swap, |_| {})
        .await
}

/// The value of one sample of a `/metrics` text, named with its labels as the exposition
/// writes them (`cutover_events_appended_total`, `name{label="value"}`), if it is there.
pub fn sample_in(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .map(|value| value.trim().parse().expect("a metric's value"))
}

/// A pg_auto_failover formation of one test's own (`scripts/ha-demo`): a monitor and two nodes
/// with synchronous replication on loopback ports, in `CUTOVER_TEST_PG_DIR` + `-<name>`, with
/// the monitor's short health-check timeouts. Stopped and removed when dropped.
pub struct Formation {
    dir: PathBuf,
    ports: [u16; 3],
    /// When the monitor started: it fails nothing over in its first 10 seconds.
    pub started: std::time::Instant,
}

impl Formation {
    /// Starts the formation (installing pg_auto_failover when missing) and waits until it has
    /// a primary and a synchronous secondary.
    pub async fn start(name: &str) -> Self {
        let dir = PathBuf::from(format!("{}-{name}", test_pg_base().display()));
        let ports = [free_port(), free_port(), free_port()];
        let formation = Self {
            dir,
            ports,
            started: std::time::Instant::now(),
        };
        // What a killed earlier run left there.
        formation.run_blocking(&["down"]);
        let up = formation.run(&["up", "--fast"]).await;
        assert!(up.status.success(), "scripts/ha-demo up: {}", up.stderr);
        formation
    }

    /// The libpq multi-host URL of the formation's `cutover` database.
    pub async fn url(&self) -> String {
        self.expect(&["url"]).await
    }

    /// Each node's URL of the `cutover` database, `node1` first.
    pub fn node_urls(&self) -> [String; 2] {
        [self.ports[1], self.ports[2]]
            .map(|port| format!("postgres://postgres@127.0.0.1:{port}/cutover"))
    }

    /// The node the monitor names primary now (`node1` or `node2`).
    pub async fn primary(&self) -> String {
        self.expect(&["primary"]).await
    }

    /// Runs `scripts/ha-demo <args>` on this formation; its stdout, trimmed.
    ///
    /// # Panics
    /// When the command fails.
    pub async fn expect(&self, args: &[&str]) -> String {
        let ran = self.run(args).await;
        assert!(
            ran.status.success(),
            "scripts/ha-demo {}: {}",
            args.join(" "),
            ran.stderr
        );
        ran.stdout.trim().to_owned()
    }

    /// Runs `scripts/ha-demo <args>` on this formation.
    pub async fn run(&self, args: &[&str]) -> Ran {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let command = self.command(&args);
        tokio::task::spawn_blocking(move || ran(command))
            .await
            .expect("running scripts/ha-demo")
    }

    fn run_blocking(&self, args: &[&str]) -> Ran {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        ran(self.command(&args))
    }

    fn command(&self, args: &[String]) -> std::process::Command {
        let mut command = std::process::Command::new(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/ha-demo"),
        );
        command
            .args(args)
            .env("HA_DIR", &self.dir)
            .env("HA_MONITOR_PORT", self.ports[0].to_string())
            .env("HA_NODE1_PORT", self.ports[1].to_string())
            .env("HA_NODE2_PORT", self.ports[2].to_string());
        command
    }
}

impl Drop for Formation {
    fn drop(&mut self) {
        let down = self.run_blocking(&["down"]);
        if !down.status.success() {
            eprintln!("stopping the formation: {}", down.stderr);
        }
    }
}

/// What a command printed, and how it ended.
pub struct Ran {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

fn ran(mut command: std::process::Command) -> Ran {
    let output = command.output().expect("starting scripts/ha-demo");
    Ran {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

impl TestDb {
    /// The database a URL of several servers names, through a pool that follows the primary
    /// among them (as a server's does), migrated.
    pub async fn following(url: &str) -> Self {
        let pool = database::pool(url, database::Route::Direct, &database_args())
            .await
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        MIGRATOR.run(&pool).await.expect("migrating");
        let options = (*pool.connect_options()).clone();
        let name = options
            .get_database()
            .expect("a URL that names its database")
            .to_owned();
        Self {
            pool,
            options,
            name,
            shared: false,
        }
    }
}
