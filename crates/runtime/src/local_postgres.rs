//! A private Postgres cluster in a project-local folder, for when no `DATABASE_URL` is given.
//!
//! It uses the machine's own Postgres binaries (Debian's `/usr/lib/postgresql/<v>/bin`, or
//! `initdb` on the `PATH`, or `CUTOVER_PG_BINDIR`). The cluster listens only on a Unix socket
//! inside its folder, so it never clashes with another server's port. Postgres refuses to run
//! as root: when this process is root, the cluster's files belong to the `postgres` system user
//! and its programs run as that user through `runuser`.
//!
//! When that user cannot reach the requested folder (a checkout under `/root`, mode 700), the
//! cluster lives in a folder of [`FALLBACK_PARENT`] instead, named after the requested folder's
//! canonical path ([`ClusterLocation::resolve`]): every process that asks for the same folder
//! (the server, the CLI, a second run) finds the same cluster, with nothing to configure.
//!
//! Several processes may share one folder (the test suite runs many): a file lock serialises
//! initialisation and start, and a cluster found running is reused, not restarted.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Name of the database used in the private cluster.
pub const LOCAL_DATABASE: &str = "cutover";

use sha2::{Digest as _, Sha256};

/// Where the cluster goes when this process is root and the `postgres` user cannot reach the
/// requested folder: `/var/lib/cutover/<folder name>-<hash of its canonical path>`.
pub const FALLBACK_PARENT: &str = "/var/lib/cutover";

/// The cluster could not be set up or started; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LocalPostgresError {
    #[error(
        "no Postgres server binaries found (looked in CUTOVER_PG_BINDIR, /usr/lib/postgresql/*/bin \
         and PATH); install them with `apt-get install postgresql` or set DATABASE_URL"
    )]
    NoBinaries,
    #[error(
        "running as root, and Postgres refuses to run as root, but there is no `postgres` system \
         user to run it as; `apt-get install postgresql` creates one"
    )]
    NoPostgresUser,
    #[error(
        "the postgres user cannot reach {requested} ({blocked} is not searchable by other users), \
         nor the fallback folder {fallback} ({fallback_blocked} is not searchable by other \
         users); choose a data folder elsewhere (CUTOVER_DATA_DIR) or make it searchable \
         (chmod o+x)"
    )]
    FallbackUnreachable {
        requested: PathBuf,
        blocked: PathBuf,
        fallback: PathBuf,
        fallback_blocked: PathBuf,
    },
    #[error("socket path {0} is longer than Unix sockets allow; use a shorter CUTOVER_DATA_DIR")]
    SocketPathTooLong(PathBuf),
    #[error("{action} failed: {detail}")]
    Command { action: String, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalPostgresError {
    let context = context.into();
    move |source| LocalPostgresError::Io { context, source }
}

/// Where a private cluster lives: the folder asked for, or the fallback folder when the
/// `postgres` user cannot reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterLocation {
    /// The requested folder, canonical.
    pub requested: PathBuf,
    /// The folder the cluster is in: `requested`, or its fallback.
    pub root: PathBuf,
    /// Set when `root` is the fallback: the folder above `requested` that the `postgres` user
    /// cannot search.
    pub blocked_by: Option<PathBuf>,
}

impl ClusterLocation {
    /// Resolves where the cluster asked for in `requested` lives, without starting anything:
    /// the canonical `requested` folder (created if missing), unless this process is root and
    /// the `postgres` user cannot reach it; then `FALLBACK_PARENT/<name>-<hash>`, derived from
    /// the canonical path alone.
    ///
    /// # Errors
    /// The folder cannot be created or resolved, or (as root) there is no `postgres` user.
    pub fn resolve(requested: &Path) -> Result<Self, LocalPostgresError> {
        let requested = canonical(requested)?;
        let blocked_by = match cluster_owner()? {
            Some(user) => first_unsearchable(&requested, &user)?,
            None => None,
        };
        let root = match &blocked_by {
            Some(_) => fallback_root(Path::new(FALLBACK_PARENT), &requested),
            None => requested.clone(),
        };
        Ok(Self {
            requested,
            root,
            blocked_by,
        })
    }

    /// The folder of the cluster's Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// A connection URL for database `dbname` as the superuser `postgres`, over the socket.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgres://postgres@localhost/{dbname}?host={}",
            self.socket_dir().display()
        )
    }
}

/// A running private cluster.
#[derive(Debug)]
pub struct LocalPostgres {
    location: ClusterLocation,
    root: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<nix::unistd::User>,
    started_here: bool,
}

/// Longest socket file path (`sun_path` is 108 bytes including the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

impl LocalPostgres {
    /// Ensures a cluster in `requested` (or, as root, in its fallback folder when the `postgres`
    /// user cannot reach it: see [`ClusterLocation::resolve`]) exists and runs; initialises it
    /// on first use. Logs where the cluster is and the `psql` command that opens it.
    ///
    /// Blocking: call it from `spawn_blocking` in async code.
    ///
    /// # Errors
    /// No binaries, no `postgres` user when root, or `initdb`/`pg_ctl` failing (the message
    /// carries their output and the log file's path).
    pub fn ensure_running(requested: &Path) -> Result<Self, LocalPostgresError> {
        Self::start(requested, None)
    }

    /// Starts a streaming replica (a hot standby) of the running cluster at `primary` in
    /// `requested` (resolved as [`LocalPostgres::ensure_running`] does), made afresh with
    /// `pg_basebackup -R` from it: whatever an earlier replica left there is stopped and removed first.
    ///
    /// Blocking: call it from `spawn_blocking` in async code.
    ///
    /// # Errors
    /// As [`LocalPostgres::ensure_running`], and a failing `pg_basebackup`.
    pub fn start_replica(
        requested: &Path,
        primary: &ClusterLocation,
    ) -> Result<Self, LocalPostgresError> {
        Self::start(requested, Some(&primary.socket_dir()))
    }

    /// Promotes a replica to a primary of its own (`pg_ctl promote`).
    ///
    /// # Errors
    /// `pg_ctl promote` failed.
    pub fn promote(&self) -> Result<(), LocalPostgresError> {
        self.pg_ctl(&["promote", "-w"], "promoting the replica")
    }

    /// Stops the server with a fast shutdown, whoever started it.
    ///
    /// # Errors
    /// `pg_ctl stop` failed.
    pub fn stop(&self) -> Result<(), LocalPostgresError> {
        self.pg_ctl(&["stop", "-m", "fast", "-w"], "stopping Postgres")
    }

    /// Ensures a cluster in `requested` runs: a new one made by `initdb`, or, with `primary`
    /// (the socket folder of a running cluster), a replica of it.
    fn start(requested: &Path, primary: Option<&Path>) -> Result<Self, LocalPostgresError> {
        let bin_dir = find_bin_dir()?;
        let run_as = cluster_owner()?;
        let location = ClusterLocation::resolve(requested)?;
        let root = location.root.clone();
        if let (Some(blocked), Some(user)) = (&location.blocked_by, &run_as) {
            let unused = location.requested.join("data").join("PG_VERSION").exists();
            tracing::warn!(
                "the postgres user cannot reach {} ({} is not searchable by other users): the \
                 private cluster is in {} instead{}",
                location.requested.display(),
                blocked.display(),
                root.display(),
                if unused {
                    " (the cluster already in the requested folder is not used)"
                } else {
                    ""
                }
            );
            make_fallback_folder(&root)?;
            if let Some(fallback_blocked) = first_unsearchable(&root, user)? {
                return Err(LocalPostgresError::FallbackUnreachable {
                    requested: location.requested.clone(),
                    blocked: blocked.clone(),
                    fallback: root,
                    fallback_blocked,
                });
            }
        }
        let lock = lock_file(&root)?;
        let cluster = Self {
            location,
            root: root.clone(),
            data: root.join("data"),
            socket_dir: root.join("run"),
            bin_dir,
            run_as,
            started_here: false,
        };
        let socket = cluster.socket_dir.join(".s.PGSQL.5432");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(LocalPostgresError::SocketPathTooLong(socket));
        }
        if let Some(primary) = primary {
            cluster.replace_with_base_backup(&root, primary)?;
        }
        cluster.prepare_folder(&root)?;
        let started = cluster.start_if_stopped()?;
        drop(lock);
        tracing::info!(
            "private Postgres cluster in {} ({}); open it with: psql \"{}\"",
            root.display(),
            if started {
                "started"
            } else {
                "already running"
            },
            cluster.url(LOCAL_DATABASE)
        );
        Ok(Self {
            started_here: started,
            ..cluster
        })
    }

    /// Where the cluster is, and where it was asked for.
    pub fn location(&self) -> &ClusterLocation {
        &self.location
    }

    /// A connection URL for database `dbname` as the superuser `postgres`, over the socket.
    pub fn url(&self, dbname: &str) -> String {
        self.location.url(dbname)
    }

    /// Whether this call started the server (rather than finding it running).
    pub fn started_here(&self) -> bool {
        self.started_here
    }

    /// Stops the server with a fast shutdown, if this process started it.
    ///
    /// # Errors
    /// `pg_ctl stop` failed.
    pub fn stop_if_started_here(&self) -> Result<(), LocalPostgresError> {
        if !self.started_here {
            return Ok(());
        }
        self.stop()
    }

    /// Restarts the server with a fast shutdown (every connection is cut), as an operator's
    /// `pg_ctl restart -m fast` would.
    ///
    /// # Errors
    /// `pg_ctl restart` failed.
    pub fn restart(&self) -> Result<(), LocalPostgresError> {
        let log = self.log_path();
        self.pg_ctl(
            &["restart", "-m", "fast", "-w", "-t", "120", "-l", &log],
            "restarting the private Postgres",
        )
    }

    /// The server's log file. (`pg_ctl` must always be given it: a server started without one
    /// keeps pg_ctl's output pipes open for ever.)
    fn log_path(&self) -> String {
        self.root.join("postgres.log").display().to_string()
    }

    /// Stops what runs in the folder, removes its data, and copies the primary's there with
    /// `pg_basebackup -R` (which also makes it follow the primary).
    fn replace_with_base_backup(
        &self,
        root: &Path,
        primary: &Path,
    ) -> Result<(), LocalPostgresError> {
        if self.is_running() {
            self.stop()?;
        }
        if self.data.exists() {
            fs::remove_dir_all(&self.data)
                .map_err(io(format!("removing {}", self.data.display())))?;
        }
        if let Some(user) = &self.run_as {
            std::os::unix::fs::chown(root, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .map_err(io(format!("giving {} to postgres", root.display())))?;
        }
        let data = self.data.display().to_string();
        let host = primary.display().to_string();
        self.run(
            "pg_basebackup",
            &[
                "-D", &data, "-R", "-X", "stream", "-c", "fast", "-h", &host, "-U", "postgres",
            ],
            "copying the primary for a replica (pg_basebackup)",
        )
    }

    fn prepare_folder(&self, root: &Path) -> Result<(), LocalPostgresError> {
        fs::create_dir_all(&self.socket_dir)
            .map_err(io(format!("creating {}", self.socket_dir.display())))?;
        // The cluster trusts every connection on its socket: only its owner (and root) may
        // reach the socket.
        fs::set_permissions(&self.socket_dir, fs::Permissions::from_mode(0o700))
            .map_err(io(format!("restricting {}", self.socket_dir.display())))?;
        if let Some(user) = &self.run_as {
            for path in [root, self.socket_dir.as_path()] {
                std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                    .map_err(io(format!("giving {} to postgres", path.display())))?;
            }
        }
        if self.data.join("PG_VERSION").exists() {
            return Ok(());
        }
        if self.data.exists() {
            // A half-made cluster from an interrupted initdb: start again.
            fs::remove_dir_all(&self.data)
                .map_err(io(format!("removing {}", self.data.display())))?;
        }
        let data = self.data.display().to_string();
        self.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ],
            "initialising the private Postgres cluster",
        )?;
        let mut conf = OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .map_err(io("opening postgresql.conf"))?;
        writeln!(
            conf,
            "\n# Cutover's private cluster: socket only, set at each start.\ninclude_if_exists = 'cutover.conf'"
        )
        .map_err(io("writing postgresql.conf"))?;
        Ok(())
    }

    fn start_if_stopped(&self) -> Result<bool, LocalPostgresError> {
        if self.is_running() {
            return Ok(false);
        }
        let settings = format!(
            "listen_addresses = ''\nunix_socket_directories = '{}'\nmax_connections = 300\n\
             shared_buffers = '256MB'\n",
            self.socket_dir.display().to_string().replace('\'', "''")
        );
        let conf_path = self.data.join("cutover.conf");
        fs::write(&conf_path, settings).map_err(io("writing cutover.conf"))?;
        if let Some(user) = &self.run_as {
            std::os::unix::fs::chown(&conf_path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .map_err(io("giving cutover.conf to postgres"))?;
        }
        let log = self.log_path();
        self.pg_ctl(
            &["start", "-w", "-t", "120", "-l", &log],
            &format!("starting the private Postgres (its log: {log})"),
        )?;
        Ok(true)
    }

    fn is_running(&self) -> bool {
        self.command(
            "pg_ctl",
            &["status", "-D", &self.data.display().to_string()],
        )
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false)
    }

    fn pg_ctl(&self, args: &[&str], action: &str) -> Result<(), LocalPostgresError> {
        let data = self.data.display().to_string();
        let mut full = vec!["-D", data.as_str()];
        full.extend_from_slice(args);
        self.run("pg_ctl", &full, action)
    }

    fn run(&self, program: &str, args: &[&str], action: &str) -> Result<(), LocalPostgresError> {
        let output = self
            .command(program, args)
            .output()
            .map_err(io(format!("{action}: running {program}")))?;
        if output.status.success() {
            return Ok(());
        }
        Err(LocalPostgresError::Command {
            action: action.to_owned(),
            detail: format!(
                "{program} exited with {}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bin_dir.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(&user.name).arg("--").arg(program);
                c
            }
            None => Command::new(program),
        };
        // pg_ctl's children must not inherit a working directory postgres cannot enter.
        cmd.args(args).current_dir("/");
        cmd
    }
}

/// The first folder above `root` that `user` cannot search, if any.
fn first_unsearchable(
    root: &Path,
    user: &nix::unistd::User,
) -> Result<Option<PathBuf>, LocalPostgresError> {
    use std::os::unix::fs::MetadataExt as _;
    for ancestor in root.ancestors().skip(1) {
        let meta = fs::metadata(ancestor).map_err(io(format!("reading {}", ancestor.display())))?;
        let searchable = meta.mode() & 0o001 != 0
            || (meta.uid() == user.uid.as_raw() && meta.mode() & 0o100 != 0)
            || (meta.gid() == user.gid.as_raw() && meta.mode() & 0o010 != 0);
        if !searchable {
            return Ok(Some(ancestor.to_owned()));
        }
    }
    Ok(None)
}

/// The `postgres` user when this process is root (the cluster runs as that user), else none.
fn cluster_owner() -> Result<Option<nix::unistd::User>, LocalPostgresError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .map(Some)
        .ok_or(LocalPostgresError::NoPostgresUser)
}

/// `path` made canonical, creating it first if it does not exist.
fn canonical(path: &Path) -> Result<PathBuf, LocalPostgresError> {
    fs::create_dir_all(path).map_err(io(format!("creating {}", path.display())))?;
    path.canonicalize()
        .map_err(io(format!("resolving {}", path.display())))
}

/// The fallback folder for the canonical `requested` folder: in `parent`, named after the
/// requested folder's name (letters, digits, `.`, `_` and `-` only, at most 32 of them) and the
/// first 12 hex digits of the SHA-256 of its path, so that different checkouts never share a
/// cluster and the socket path stays short.
/// (`printf %s "$path" | sha256sum | cut -c1-12` gives the same digits.)
fn fallback_root(parent: &Path, requested: &Path) -> PathBuf {
    let name: String = requested
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    let name = name.trim_start_matches('.');
    let name = if name.is_empty() { "cluster" } else { name };
    parent.join(format!("{name}-{}", short_hash(requested)))
}

/// The first 12 hex digits of the SHA-256 of `path`'s bytes.
fn short_hash(path: &Path) -> String {
    Sha256::digest(path.as_os_str().as_bytes())
        .iter()
        .take(6)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Creates `FALLBACK_PARENT` (mode 755, so that the `postgres` user can pass) and the
/// fallback folder `root` in it, which only its owner may enter (`prepare_folder` gives it to
/// the `postgres` user).
fn make_fallback_folder(root: &Path) -> Result<(), LocalPostgresError> {
    if let Some(parent) = root.parent() {
        if !parent.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(io(format!("creating {}", root.display())))?;
    fs::set_permissions(root, fs::Permissions::from_mode(0o700))
        .map_err(io(format!("restricting {}", root.display())))
}

fn lock_file(root: &Path) -> Result<File, LocalPostgresError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(root.join("cluster.lock"))
        .map_err(io("opening the cluster lock file"))?;
    file.lock().map_err(io("locking the cluster lock file"))?;
    Ok(file)
}

fn find_bin_dir() -> Result<PathBuf, LocalPostgresError> {
    if let Some(dir) = std::env::var_os("CUTOVER_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let debian = Path::new("/usr/lib/postgresql");
    if let Ok(entries) = fs::read_dir(debian) {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((version, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return Ok(bin);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
        .ok_or(LocalPostgresError::NoBinaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_folder_is_named_after_the_requested_path() {
        let parent = Path::new("/var/lib/cutover");
        let checkout = Path::new("/root/cutover/.cutover/postgres");
        let a = fallback_root(parent, checkout);
        // `printf %s /root/cutover/.cutover/postgres | sha256sum | cut -c1-12`
        assert_eq!(a, parent.join("postgres-95dbf657066a"));
        assert_eq!(
            a,
            fallback_root(parent, checkout),
            "always the same cluster"
        );
        assert_ne!(
            a,
            fallback_root(parent, Path::new("/root/other/.cutover/postgres")),
            "two checkouts never share a cluster"
        );
        let odd = fallback_root(parent, Path::new("/root/x/.my data\u{e9}"));
        let name = odd.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert!(name.starts_with("my_data_-"), "{name}");
        let long = fallback_root(parent, &Path::new("/root").join("x".repeat(200)));
        let socket = long.join("run").join(".s.PGSQL.5432");
        assert!(
            socket.as_os_str().len() <= MAX_SOCKET_PATH,
            "{}",
            socket.display()
        );
    }
}
