#!/usr/bin/env python3
"""Cutover's benchmark, side by side with the physical limit and the peers (issue 7).

One run, on one private Postgres cluster (started by Cutover's own server):

1. the physical limit: pgbench running the SQL transaction each command needs (the event
   insert plus the inline read-model writes), in a database of its own with a copy of the
   schema Cutover's server made;
2. Cutover through its real HTTP API, and the two peers of `cutover-bench` (a hand-written
   dual-write and stock cqrs-es), each on its own database, driven by wrk on the same routes
   and bodies: create collection, completion on distinct batches, completion on one hot
   batch, record an attempt;
3. the rebuild of every projection from a seeded log, beside a COPY floor measured on the
   same data;
4. peak memory of the servers and of the rebuilding CLI;
5. GET throughput at 16 connections: Cutover's server on the primary alone, and a second one
   reading from a streaming replica of the same cluster (pg_basebackup -R), in turns.

It writes target/bench/results.json, results.md and chart.png and prints the table and the
targets of the issue. Started by scripts/bench/run, which installs what it needs.
"""

import argparse
import concurrent.futures
import datetime
import glob
import json
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "scripts" / "bench"
OUT = ROOT / "target" / "bench"

SCENARIOS = ["create", "distinct", "hot", "attempt"]
SCENARIO_TITLES = {
    "event-insert": "single event insert",
    "create": "create collection",
    "distinct": "completion, distinct batches",
    "hot": "completion, one hot batch",
    "attempt": "record an attempt",
}
SYSTEMS = ["cutover", "dual-write", "cqrs-es"]
# Measured in turns, round by round, so that a slow spell of the machine falls on both: the
# pair the targets compare. The stock cqrs-es server runs after them (its view updates go on
# after its load, and would run beside the others' rounds).
TURNS = ["cutover", "dual-write"]
ROUNDS = 3
HOT_PLAYERS = 10_000


@dataclass
class Profile:
    name: str
    seconds: int  # each measured load run
    warmup: int  # seconds of load before a scenario's runs, not measured
    connections: list
    pgbench_clients: list
    distinct_batches: int  # per server; players per batch below
    distinct_players: int
    hot_batches: int  # per server, of HOT_PLAYERS players each
    pgbench_batches: int  # per pgbench client
    seeds: list  # cumulative history sizes at which the rebuild is measured
    cargo_profile: str
    follow_rows: int  # rows of the old system's table the follower copies, then changes twice
    follow_seconds: int  # of the old system writing 1,000 changes/s with the follower running


# distinct: 4,000 batches of 50 players per server, enough for the 64-connection runs (2,000 ran
# out there once Cutover passed 4,000 completions a second)
FULL = Profile("full", 10, 2, [1, 16, 64], [1, 16], 4000, 50, 12, 100,
               [100_000, 1_000_000], "release", 50_000, 30)
SMOKE = Profile("smoke", 1, 0, [1, 16], [1, 16], 100, 40, 2, 10, [2_000, 10_000], "dev",
                2_000, 3)


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(cmd, **kwargs):
    """Runs a command; its output is returned, and shown when it fails."""
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited with {result.returncode}")
    return result.stdout


def postgres_bin():
    if os.environ.get("CUTOVER_PG_BINDIR"):
        return Path(os.environ["CUTOVER_PG_BINDIR"])
    versions = sorted(
        (int(p.parent.name), p.parent)
        for p in Path("/usr/lib/postgresql").glob("*/bin")
        if p.parent.name.isdigit() and (p / "pgbench").exists()
    )
    if versions:
        return versions[-1][1] / "bin"
    found = shutil.which("pgbench")
    if not found:
        raise RuntimeError("pgbench not found: install postgresql-contrib or set CUTOVER_PG_BINDIR")
    return Path(found).parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids, reaped=()):
    """User + system CPU seconds used so far by the processes `pids` (those still running),
    and for those in `reaped` also by their children that have ended."""
    total = 0
    for pid in [*pids, *reaped]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])
        if pid in reaped:
            total += int(fields[13]) + int(fields[14])
    return total / TICKS


def machine():
    model = "unknown"
    for line in run(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    commit = run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).strip()
    dirty = run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"]).strip()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cores": os.cpu_count(),
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "load_average_at_start": os.getloadavg()[0],
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
    }


class Cluster:
    """psql and pgbench on the private cluster's socket, as the superuser `postgres`."""

    def __init__(self, bin_dir, folder):
        self.bin = bin_dir
        self.data = folder / "data"
        self.socket = folder / "run"

    def url(self, db):
        return f"postgres://postgres@localhost/{db}?host={self.socket}"

    def psql(self, db, *args, stdin=None):
        return run([self.bin / "psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                    "-h", self.socket, "-U", "postgres", "-d", db, *args], input=stdin)

    def sql(self, db, statement):
        return self.psql(db, "-c", statement).strip()

    def checkpoint(self):
        self.sql("postgres", "CHECKPOINT")

    def vacuum(self):
        """VACUUM ANALYZE every database and wait (up to 60 s) until no autovacuum worker runs,
        so that background work on another database does not land in a measured run."""
        run([self.bin / "vacuumdb", "-h", self.socket, "-U", "postgres", "--all", "--analyze",
             "--quiet"])
        for _ in range(120):
            busy = self.sql("postgres", "SELECT count(*) FROM pg_stat_activity "
                                        "WHERE backend_type = 'autovacuum worker'")
            if busy == "0":
                return
            time.sleep(0.5)

    def cpu_seconds(self):
        """CPU seconds used so far by the postmaster and its children, running or ended."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    children.append(int(stat.parent.name))
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
        return cpu_seconds(children, reaped=[postmaster])


class Server:
    """A server process, its log, and its peak memory."""

    def __init__(self, name, cmd, env, port, logs):
        self.name = name
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = logs / f"{name}.log"
        self.log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=self.log_file,
                                     stderr=subprocess.STDOUT)

    def wait_healthy(self, seconds=180):
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.base + "/health", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become healthy")

    def memory_mb(self):
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                fields[key] = round(int(value.split()[0]) / 1024, 1)
        return {"peak_rss_mb": fields.get("VmHWM"), "rss_mb": fields.get("VmRSS")}

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


def post(base, path, body, method="POST"):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def post_ok(base, path, body, method="POST"):
    status, text = post(base, path, body, method)
    if not 200 <= status < 300:
        raise RuntimeError(f"{method} {base}{path} answered {status}: {text[:500]}")


def start_batches(base, prefix, count, players):
    """Starts batches prefix-0 .. prefix-(count-1), each expecting players p00000 ...."""
    expected = [f"p{i:05d}" for i in range(players)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post_ok, base, "/batches",
                               {"batch_id": f"{prefix}-{k}", "expected_players": expected})
                   for k in range(count)]
        for future in futures:
            future.result()


def probe(base, scenario, tag):
    """One request of the scenario's shape on its own aggregate: fails loudly if the server
    refuses the bodies the wrk script sends."""
    if scenario == "create":
        path, body = f"/projects/00000000-0000-4000-8000-{tag:012d}/collections", \
            {"collection_name": "probe", "description": "probe"}
    elif scenario in ("distinct", "hot"):
        post_ok(base, "/batches", {"batch_id": f"probe-{tag}",
                                   "expected_players": ["p00000", "p00001", "p00002"]})
        path, body = f"/batches/probe-{tag}/completions", \
            {"player_lookup": "p00000", "predictions_count": 0}
    else:
        path, body = f"/students/{900_000 + tag}/attempts", \
            {"subject": "math", "skill_id": "skill-1", "subskill_id": "sub-1", "score": 7,
             "analysis": "made by wrk", "feedback": "keep going"}
    post_ok(base, path, body)


def wrk(server, cluster, scenario, first, connections, seconds, extra):
    """One wrk run; with the CPU the server and Postgres spent per successful command."""
    threads = min(2, connections)
    app_before, pg_before = cpu_seconds([server.proc.pid]), cluster.cpu_seconds()
    out = run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
               "-s", str(HERE / "load.lua"), server.base, "--", scenario, str(first),
               str(threads), *map(str, extra)])
    app_cpu, pg_cpu = cpu_seconds([server.proc.pid]) - app_before, cluster.cpu_seconds() - pg_before
    line = next(l for l in out.splitlines() if l.startswith('{"requests"'))
    raw = json.loads(line)
    if raw["requests"] == 0:
        log(f"wrk completed no request: {out.strip()}")
    seconds_taken = raw["duration_us"] / 1e6
    ok = raw["requests"] - raw["status_errors"]
    return {
        "requests": raw["requests"],
        "ok": ok,
        "seconds": seconds_taken,
        "ok_per_s": round(ok / seconds_taken, 1),
        "errors": raw["status_errors"] + raw["socket_errors"],
        "status_errors": raw["status_errors"],
        "socket_errors": raw["socket_errors"],
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "p999_ms": raw["p999_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "app_cpu_ms": round(1000 * app_cpu / ok, 3) if ok else None,
        "pg_cpu_ms": round(1000 * pg_cpu / ok, 3) if ok else None,
    }


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def pgbench(cluster, script, clients, seconds, defines, logs, name):
    prefix = logs / f"pgbench-{name}-{clients}"
    for old in glob.glob(f"{prefix}.*"):
        os.remove(old)
    cmd = [cluster.bin / "pgbench", "-h", cluster.socket, "-U", "postgres", "-n",
           "-M", "prepared", "-c", str(clients), "-j", str(min(2, clients)), "-T", str(seconds),
           "-l", f"--log-prefix={prefix}", "-f", HERE / "pgbench" / script]
    for key, value in defines.items():
        cmd += ["-D", f"{key}={value}"]
    pg_before = cluster.cpu_seconds()
    out = run(cmd + ["bench_pgbench"], cwd=logs)
    pg_cpu = cluster.cpu_seconds() - pg_before
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", out)
    latencies = []
    for path in glob.glob(f"{prefix}.*"):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2].isdigit():
                    latencies.append(int(parts[2]))
        os.remove(path)
    latencies.sort()
    return {
        "tps": round(tps, 1),
        "transactions": len(latencies),
        "failed": int(failed.group(1)) if failed else 0,
        "p50_ms": percentile(latencies, 50) / 1000,
        "p99_ms": percentile(latencies, 99) / 1000,
        "p999_ms": percentile(latencies, 99.9) / 1000,
        "pg_cpu_ms": round(1000 * pg_cpu / len(latencies), 3) if latencies else None,
    }


PGBENCH_RUNS = [
    # (name, script, defines for a given client count)
    ("event-insert", "event-insert.sql", lambda c, p: {}),
    ("create", "create-collection.sql", lambda c, p: {}),
    ("distinct", "completion.sql",
     lambda c, p: {"prefix": "pgb", "partitioned": 1, "batches": p.pgbench_batches}),
    ("hot", "completion.sql", lambda c, p: {"prefix": f"pgh{c}", "partitioned": 0, "batches": 1}),
    ("attempt", "attempt.sql", lambda c, p: {}),
]


def as_postgres(cmd):
    """`cmd` run as the postgres user when this process is root (Postgres refuses root)."""
    return ["runuser", "-u", "postgres", "--", *map(str, cmd)] if os.getuid() == 0 else cmd


def cluster_folder(folder):
    """Makes `folder` and its socket folder `run`, the postgres user's when this is root."""
    folder.mkdir()
    (folder / "run").mkdir(mode=0o700)
    if os.getuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in (folder, folder / "run"):
            os.chown(path, user.pw_uid, user.pw_gid)


def start_replica(cluster, folder, logs):
    """A hot standby of `cluster` in `folder`, made with pg_basebackup -R: its Cluster."""
    cluster_folder(folder)
    replica = Cluster(cluster.bin, folder)
    run(as_postgres([cluster.bin / "pg_basebackup", "-D", replica.data, "-R", "-X", "stream",
                     "-c", "fast", "-h", cluster.socket, "-U", "postgres"]))
    # The copied settings name the primary's socket folder: the replica listens in its own.
    conf = replica.data / "cutover.conf"
    conf.write_text(re.sub(r"unix_socket_directories = '[^']*'",
                           f"unix_socket_directories = '{replica.socket}'", conf.read_text()))
    # Its log in its own folder, which the postgres user can write; copied to logs/ when done.
    run(as_postgres([cluster.bin / "pg_ctl", "-D", replica.data, "-l", folder / "postgres.log",
                     "-w", "-t", "120", "start"]), cwd="/")
    return replica


def metric(base, sample):
    """One sample of a server's /metrics, or None."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[1])
    return None


def replica_reads(servers, cluster, profile, bins, work, logs):
    """GETs at 16 connections, in turns: the server on the primary alone, and one reading from
    a streaming replica; with how many reads the replica answered."""
    replica = start_replica(cluster, work / "replica", logs)
    port = free_port()
    reader = Server("cutover-replica", [bins / "cutover-api"], {
        "DATABASE_URL": cluster.url("cutover"), "CUTOVER_READ_DATABASE_URL": replica.url("cutover"),
        "CUTOVER_BIND": f"127.0.0.1:{port}", "RUST_LOG": "warn"}, port, logs)
    try:
        reader.wait_healthy()
        deadline = time.time() + 60
        while metric(reader.base, 'cutover_replica_in_rotation{replica="0"}') != 1:
            if time.time() > deadline:
                raise RuntimeError("the replica did not come into rotation")
            time.sleep(0.2)
        systems = {"primary alone": servers["cutover"], "with a replica": reader}
        runs = {name: [] for name in systems}
        seconds = max(1, profile.seconds // ROUNDS)
        for _ in range(ROUNDS):
            for name, server in systems.items():
                runs[name].append(wrk(server, cluster, "read", 0, 16, seconds, []))
        results = {name: combined(r) for name, r in runs.items()}
        served = metric(reader.base, 'cutover_reads_total{served_by="replica"}')
        results["with a replica"]["served_by_replica"] = served
        for name, result in results.items():
            log(f"read     {name:<15} 16 conns: {result['ok_per_s']:>8.1f} ok/s, "
                f"p99 {result['p99_ms']:.2f} ms, errors {result['errors']}")
        return results
    finally:
        reader.stop()
        run(as_postgres([cluster.bin / "pg_ctl", "-D", replica.data, "-m", "fast", "-w", "stop"]),
            cwd="/")
        shutil.copy(work / "replica" / "postgres.log", logs / "replica.log")


def shadow_reads(servers, cluster, profile):
    """GETs at 16 connections, in turns: the collections domain out of shadow, and in shadow
    with every GET also computed from the other model and compared; with the reads compared
    and the mismatches found."""
    server = servers["cutover"]
    runs = {"shadow off": [], "shadow on": []}
    seconds = max(1, profile.seconds // ROUNDS)
    try:
        for _ in range(ROUNDS):
            for name in runs:
                if name == "shadow on":
                    post_ok(server.base, "/admin/shadow/collections", {"fraction": 1.0}, "PUT")
                else:
                    post_ok(server.base, "/admin/shadow/collections", None, "DELETE")
                runs[name].append(wrk(server, cluster, "read", 0, 16, seconds, []))
    finally:
        post_ok(server.base, "/admin/shadow/collections", None, "DELETE")
    results = {name: combined(r) for name, r in runs.items()}
    route = 'domain="collections",route="/projects/{project_id}/collections"'
    results["shadow on"]["compared"] = metric(server.base, f"cutover_shadow_reads_total{{{route}}}")
    results["shadow on"]["mismatches"] = metric(server.base,
                                                f"cutover_shadow_mismatches_total{{{route}}}")
    for name, result in results.items():
        log(f"read     {name:<15} 16 conns: {result['ok_per_s']:>8.1f} ok/s, "
            f"p99 {result['p99_ms']:.2f} ms, errors {result['errors']}")
    return results


# The old system's table (the follow tests' too), and a number per row for pgbench to pick
# rows by (the follower reads the columns it knows, by name).
OLD_SCHEMA = (ROOT / "tests" / "old_system.sql").read_text() + """
ALTER TABLE collections ADD COLUMN n integer UNIQUE;
"""

# Upper bounds (s) of the follower's lag histogram buckets, as `cutover follow` counts them
# (follow::LAG_BUCKETS), and one more bucket past the last.
LAG_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]


def start_old_system(bin_dir, folder, logs):
    """A second cluster with wal_level = logical, playing the old system: its Cluster."""
    cluster_folder(folder)
    old = Cluster(bin_dir, folder)
    run(as_postgres([bin_dir / "initdb", "-D", old.data, "-U", "postgres", "-A", "trust"]))
    with open(old.data / "postgresql.conf", "a") as conf:
        conf.write(f"listen_addresses = ''\nunix_socket_directories = '{old.socket}'\n"
                   "wal_level = logical\nmax_replication_slots = 4\n")
    run(as_postgres([bin_dir / "pg_ctl", "-D", old.data, "-l", folder / "postgres.log", "-w",
                     "-t", "120", "start"]), cwd="/")
    old.sql("postgres", "CREATE DATABASE oldapp")
    old.psql("oldapp", stdin=OLD_SCHEMA)
    return old


def lag_p99(before, after):
    """The bucket bound within which 99% of the changes counted between two readings of a
    lag histogram were applied (inf: later than the last bound), and how many were counted."""
    counts = [b - a for a, b in zip(before + [0] * 20, after)]
    total = sum(counts)
    if total == 0:
        return None, 0
    seen = 0
    for i, count in enumerate(counts):
        seen += count
        if seen >= 0.99 * total:
            return (LAG_BUCKETS[i] if i < len(LAG_BUCKETS) else float("inf")), total
    return float("inf"), total


def follow_old_system(cluster, profile, bins, work, logs):
    """`cutover follow` against a second cluster playing the old system: the copy of its
    existing rows, the catch-up over changes written while no follower ran (transactions of
    100 rows, then of one row), and the lag while the old system writes about 1,000 changes/s
    (pgbench, one row per transaction) with the follower running."""
    old = start_old_system(cluster.bin, work / "old", logs)
    db = "bench_follow"
    cluster.sql("postgres", f"CREATE DATABASE {db}")
    env = {"DATABASE_URL": cluster.url(db), "RUST_LOG": "warn"}
    follow = [bins / "cutover", "follow", "--legacy-url", old.url("oldapp")]
    rows = profile.follow_rows
    project = "00000000-0000-0000-0000-00000000f011"
    results = {}
    try:
        def catch_up(name, changes):
            cluster.checkpoint()
            old.checkpoint()
            seconds, _, out = run_peak(follow + ["--until-caught-up", "collections"], env, logs,
                                       f"follow-{name}")
            applied = int(cluster.sql(db, "SELECT changes_applied FROM follows"))
            results[name] = {"changes": changes, "seconds": round(seconds, 2),
                             "changes_per_s": round(changes / seconds),
                             "reported": out.strip().splitlines()[-1:]}
            log(f"follow   {name:<24} {changes} changes in {seconds:.2f} s "
                f"({changes / seconds:.0f}/s); {applied} applied in all")

        old.sql("oldapp", "INSERT INTO collections (collection_id, project_id, collection_name, "
                          f"description, n) SELECT gen_random_uuid(), '{project}', 'c' || i, "
                          f"'Row ' || i || ' of the old system', i FROM generate_series(1, {rows}) i")
        catch_up("copy", rows)
        old.sql("oldapp", "DO $$ BEGIN FOR i IN 0..%d LOOP UPDATE collections "
                          "SET collection_name = collection_name || 'x', updated_at = now() "
                          "WHERE n > i * 100 AND n <= (i + 1) * 100; COMMIT; END LOOP; END $$"
                % (rows // 100 - 1))
        catch_up("stream, 100 rows a transaction", rows)
        old.sql("oldapp", "DO $$ BEGIN FOR i IN 1..%d LOOP UPDATE collections "
                          "SET collection_name = collection_name || 'y', updated_at = now() "
                          "WHERE n = i; COMMIT; END LOOP; END $$" % rows)
        catch_up("stream, 1 row a transaction", rows)

        histogram = "SELECT array_to_string(lag_histogram, ' ') FROM follows"
        before = [int(x) for x in cluster.sql(db, histogram).split()]
        with open(logs / "follow-live.out", "w") as out:
            follower = subprocess.Popen(follow + ["collections"], env={**os.environ, **env},
                                        stdout=out, stderr=subprocess.STDOUT)
            try:
                script = work / "old-write.sql"
                script.write_text(f"\\set n random(1, {rows})\n"
                                  "UPDATE collections SET collection_name = 'w' || :n || '-' || "
                                  "random(), updated_at = now() WHERE n = :n;\n")
                written = run([old.bin / "pgbench", "-h", old.socket, "-U", "postgres", "-n",
                               "-c", "2", "-j", "1", "-R", "1000", "-T",
                               str(profile.follow_seconds), "-f", script, "oldapp"])
                tps = float(re.search(r"tps = ([\d.]+)", written).group(1))
                # The last changes: applied within the poll and a batch, or counted as late.
                time.sleep(2)
            finally:
                follower.send_signal(signal.SIGINT)
                follower.wait(60)
        after = [int(x) for x in cluster.sql(db, histogram).split()]
        p99, counted = lag_p99(before, after)
        results["lag"] = {"old_changes_per_s": round(tps), "seconds": profile.follow_seconds,
                          "changes_counted": counted, "p99_within_s": p99}
        log(f"follow   lag at {tps:.0f} old changes/s: 99% of {counted} applied within "
            f"{p99} s of their old commit")
        run(follow + ["--drop", "collections"], env={**os.environ, **env})
    finally:
        run(as_postgres([old.bin / "pg_ctl", "-D", old.data, "-m", "fast", "-w", "stop"]),
            cwd="/")
        shutil.copy(work / "old" / "postgres.log", logs / "old-system.log")
    return results


def physical_limit(cluster, profile, logs):
    # Exactly the schema the running Cutover server made (tables, indexes, triggers).
    schema = run([cluster.bin / "pg_dump", "--schema-only", "-h", cluster.socket,
                  "-U", "postgres", "cutover"])
    cluster.sql("postgres", "CREATE DATABASE bench_pgbench")
    cluster.psql("bench_pgbench", "-f", "-", stdin=schema)
    cluster.psql("bench_pgbench", "-v", f"clients={max(profile.pgbench_clients)}",
                 "-v", f"batches={profile.pgbench_batches}",
                 "-v", f"players={profile.distinct_players}",
                 "-v", f"hot_players={HOT_PLAYERS}", "-f", str(HERE / "pgbench" / "setup.sql"))
    results = {}
    for name, script, defines in PGBENCH_RUNS:
        for clients in profile.pgbench_clients:
            cluster.checkpoint()
            result = pgbench(cluster, script, clients, profile.seconds,
                             defines(clients, profile), logs, name)
            results.setdefault(name, {})[clients] = result
            log(f"pgbench {name:<12} {clients:>2} clients: {result['tps']:>8.1f} tps, "
                f"p99 {result['p99_ms']:.2f} ms, failed {result['failed']}")
    return results


def load(servers, cluster, profile):
    """Every scenario on every server, at every connection count. Cutover and the dual-write
    take turns: each measurement is ROUNDS short runs of each, one after the other, combined."""
    results = {}
    for scenario in SCENARIOS:
        for systems in (TURNS, [s for s in SYSTEMS if s not in TURNS]):
            for system, connections, result in measure(servers, cluster, profile, scenario,
                                                       systems):
                results.setdefault(scenario, {}).setdefault(system, {})[connections] = result
                log(f"{scenario:<8} {system:<10} {connections:>2} conns: "
                    f"{result['ok_per_s']:>8.1f} ok/s, p99 {result['p99_ms']:.2f} ms, "
                    f"errors {result['errors']}{' (' + result['note'] + ')' if 'note' in result else ''}")
    return results


def measure(servers, cluster, profile, scenario, systems):
    """One scenario on `systems`, in turns: yields (system, connections, result)."""
    extra, capacity, first = {}, {}, {}
    for system in systems:
        server = servers[system]
        extra[system], capacity[system] = [], None
        if scenario == "distinct":
            start_batches(server.base, "d", profile.distinct_batches, profile.distinct_players)
            extra[system] = ["d", profile.distinct_batches, profile.distinct_players]
            capacity[system] = profile.distinct_batches * profile.distinct_players
        elif scenario == "hot":
            start_batches(server.base, "h", profile.hot_batches, HOT_PLAYERS)
            extra[system] = ["h", 1, HOT_PLAYERS]
            capacity[system] = profile.hot_batches * HOT_PLAYERS
        probe(server.base, scenario, SCENARIOS.index(scenario))
        first[system] = 0
        if profile.warmup:
            warm = wrk(server, cluster, scenario, 0, 16, profile.warmup, extra[system])
            first[system] += warm["requests"] + 64
    # After the warm-up, so that the statistics (and the plans made from them) are of tables of
    # a representative size: statistics of a near-empty table make generic plans that scan the
    # whole table for the rest of the run.
    cluster.vacuum()
    rounds = ROUNDS if len(systems) > 1 else 1
    seconds = max(1, profile.seconds // rounds)
    for connections in profile.connections:
        runs = {system: [] for system in systems}
        for _ in range(rounds):
            for system in systems:
                cluster.checkpoint()
                result = wrk(servers[system], cluster, scenario, first[system], connections,
                             seconds, extra[system])
                first[system] += result["requests"] + 2 * connections + 2
                runs[system].append(result)
        for system in systems:
            result = combined(runs[system])
            if capacity[system] is not None and first[system] > capacity[system]:
                result["note"] = "ran out of pre-started players"
            yield system, connections, result


def combined(runs):
    """Runs of one measurement as one: totals and rates over all of them; each latency
    percentile the median of the runs' (the highest for the maximum)."""
    if len(runs) == 1:
        return runs[0]
    ok = sum(r["ok"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)

    def cpu(key):
        spent = [r[key] * r["ok"] for r in runs if r[key] is not None]
        return round(sum(spent) / ok, 3) if ok and spent else None

    result = {
        "requests": sum(r["requests"] for r in runs),
        "ok": ok,
        "seconds": seconds,
        "ok_per_s": round(ok / seconds, 1),
        "rounds": len(runs),
        "rounds_ok_per_s": [r["ok_per_s"] for r in runs],
        "max_ms": max(r["max_ms"] for r in runs),
        "app_cpu_ms": cpu("app_cpu_ms"),
        "pg_cpu_ms": cpu("pg_cpu_ms"),
    }
    for key in ("errors", "status_errors", "socket_errors"):
        result[key] = sum(r[key] for r in runs)
    for key in ("p50_ms", "p99_ms", "p999_ms"):
        result[key] = statistics.median(r[key] for r in runs)
    return result


STATEMENT_LINE = re.compile(r"db=(\S+) LOG:  (?:statement|execute [^:]*): (.*)")


def logged_statements(pg_log, offset):
    """(database, first line of SQL) of each statement logged after `offset`."""
    with open(pg_log, errors="replace") as f:
        f.seek(offset)
        return [m.groups() for m in map(STATEMENT_LINE.search, f.read().splitlines()) if m]


# Commands per count of statements (see statements_per_command).
COUNTED = 10


def statements_per_command(servers, cluster, pg_log, databases):
    """SQL statements each server sends per command, counted in the Postgres log with
    log_statement = all (each is at least one round trip) over `COUNTED` commands sent one
    after another, on an aggregate already in use (a batch, a student; a new collection), and
    divided: what a server sends now and then whatever the load (Cutover's feed notification,
    at most every 25 ms) then counts by its share. Statements that the servers also send while
    idle (background polls) are learnt first and left out."""
    cluster.sql("postgres", "ALTER SYSTEM SET log_statement = 'all'")
    cluster.sql("postgres", "ALTER SYSTEM SET log_line_prefix = '%m [%p] db=%d '")
    cluster.sql("postgres", "SELECT pg_reload_conf()")
    time.sleep(0.5)
    counts = {}
    players = [f"p{n:05d}" for n in range(COUNTED + 1)]
    try:
        before = pg_log.stat().st_size
        time.sleep(5)
        background = {sql for _, sql in logged_statements(pg_log, before)} - {"BEGIN", "COMMIT"}
        for scenario in ["create", "distinct", "attempt"]:
            for system in SYSTEMS:
                server = servers[system]
                tag = 10 + SCENARIOS.index(scenario)
                project = f"00000000-0000-4000-8000-{tag:012d}"
                student = 900_000 + tag
                attempt = {"subject": "math", "skill_id": "skill-1", "subskill_id": "sub-1",
                           "score": 7, "analysis": "counted", "feedback": "keep going"}
                try:
                    # The aggregate in use first: its commands then run on a cached aggregate.
                    if scenario == "distinct":
                        post_ok(server.base, "/batches", {"batch_id": f"count-{tag}",
                                                          "expected_players": players})
                        post_ok(server.base, f"/batches/count-{tag}/completions",
                                {"player_lookup": players[0], "predictions_count": 1})
                    elif scenario == "attempt":
                        post_ok(server.base, f"/students/{student}/attempts", attempt)
                    time.sleep(0.3)
                    before = pg_log.stat().st_size
                    for n in range(1, COUNTED + 1):
                        if scenario == "create":
                            post_ok(server.base, f"/projects/{project}/collections",
                                    {"collection_name": f"counted {n}", "description": "d"})
                        elif scenario == "distinct":
                            post_ok(server.base, f"/batches/count-{tag}/completions",
                                    {"player_lookup": players[n], "predictions_count": 1})
                        else:
                            post_ok(server.base, f"/students/{student}/attempts", attempt)
                except (RuntimeError, OSError) as e:
                    log(f"cannot count the statements of {scenario} on {system}: {e}")
                    counts.setdefault(scenario, {})[system] = "failed"
                    continue
                time.sleep(0.5)
                counts.setdefault(scenario, {})[system] = round(sum(
                    1 for db, sql in logged_statements(pg_log, before)
                    if db == databases[system] and sql not in background) / COUNTED, 1)
    finally:
        cluster.sql("postgres", "ALTER SYSTEM RESET log_statement")
        cluster.sql("postgres", "ALTER SYSTEM RESET log_line_prefix")
        cluster.sql("postgres", "SELECT pg_reload_conf()")
    for name, script, _ in PGBENCH_RUNS:
        text = (HERE / "pgbench" / script).read_text()
        counts.setdefault(name, {})["pgbench"] = sum(
            1 for l in text.splitlines()
            if not l.startswith("--") and (l.rstrip().endswith(";") or l.startswith("\\gset")))
    return counts


def run_peak(cmd, env, logs, name):
    """Runs a CLI command to its end: wall seconds, peak RSS in MB (wait4) and its output."""
    out_path = logs / f"{name}.out"
    with open(out_path, "w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = out_path.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed: {text[-2000:]}")
    return seconds, round(usage.ru_maxrss / 1024, 1), text


def rebuild(cluster, profile, bins, work, logs):
    """Seeds the log in steps and times `cutover rebuild --all` at each size; then the floor."""
    db = "bench_rebuild"
    cluster.sql("postgres", f"CREATE DATABASE {db}")
    env = {"DATABASE_URL": cluster.url(db), "RUST_LOG": "warn"}
    cli = bins / "cutover"
    stages, seeded = [], 0
    for size in profile.seeds:
        run_peak([cli, "seed", "--events", str(size - seeded), "--no-rebuild"], env, logs,
                 f"seed-{size}")
        seeded = int(cluster.sql(db, "SELECT count(*) FROM events"))
        cluster.checkpoint()
        seconds, peak, out = run_peak([cli, "rebuild", "--all"], env, logs, f"rebuild-{size}")
        reported = re.search(r"rebuilt [^\n]*", out)
        stage = {"events": seeded, "seconds": round(seconds, 2),
                 "events_per_s": round(seeded / seconds), "peak_rss_mb": peak,
                 "cli_reported": reported.group(0) if reported else ""}
        stages.append(stage)
        log(f"rebuild --all of {seeded} events: {stage['seconds']} s "
            f"({stage['events_per_s']} events/s), CLI peak RSS {peak} MB")
    return {"stages": stages, "floor": copy_floor(cluster, db, work)}


def copy_floor(cluster, db, work):
    """What Postgres alone needs for the same work: COPY the events out in log order, and COPY
    the rebuilt read-model rows into empty copies of their tables (indexes included)."""
    folder = work / "copy"
    folder.mkdir()
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
    events = int(cluster.sql(db, "SELECT count(*) FROM events"))
    tables = cluster.sql(db, "SELECT t FROM projections, unnest(tables) AS t ORDER BY 1").split()
    cluster.sql(db, "CREATE SCHEMA floor")
    rows = 0
    for table in tables:
        cluster.sql(db, f"COPY {table} TO '{folder}/{table}.copy'")
        cluster.sql(db, f"CREATE TABLE floor.{table} (LIKE public.{table} INCLUDING ALL)")
        rows += int(cluster.sql(db, f"SELECT count(*) FROM {table}"))
    cluster.checkpoint()
    started = time.perf_counter()
    cluster.sql(db, "COPY (SELECT * FROM events ORDER BY transaction_id, position) "
                    f"TO '{folder}/events.copy'")
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    cluster.psql(db, *[arg for table in tables
                       for arg in ("-c", f"COPY floor.{table} FROM '{folder}/{table}.copy'")])
    write_s = time.perf_counter() - started
    floor = {"events": events, "read_s": round(read_s, 2), "rows_written": rows,
             "write_s": round(write_s, 2),
             "events_per_s": round(events / (read_s + write_s))}
    log(f"COPY floor: {events} events out in {floor['read_s']} s, {rows} rows in in "
        f"{floor['write_s']} s: {floor['events_per_s']} events/s")
    return floor


def rebuild_ratio(rb):
    """The largest rebuild's rate against the COPY floor's, and the two rates in words."""
    full = rb["stages"][-1]
    return (ratio(full["events_per_s"], rb["floor"]["events_per_s"]),
            f"{full['events_per_s']} vs {rb['floor']['events_per_s']} events/s")


def ratio(a, b):
    return round(a / b, 2) if a is not None and b else None


def targets(results):
    """Issue 30's targets (and figures kept for reference), each a ratio or a figure from this
    run."""
    http, pg, rb = results["http"], results["pgbench"], results["rebuild"]
    rows = []

    def add(target, value, threshold, met, detail=""):
        rows.append({"target": target, "value": value, "threshold": threshold,
                     "met": bool(met), "detail": detail})

    def ok(scenario, system, connections=16):
        return http[scenario][system][connections]["ok_per_s"]

    for scenario in ("create", "distinct", "attempt"):
        for connections, mine in http[scenario]["cutover"].items():
            peer = http[scenario]["dual-write"][connections]
            r = ratio(mine["ok_per_s"], peer["ok_per_s"])
            add(f"{SCENARIO_TITLES[scenario]} @{connections}: Cutover / dual-write", r, ">= 1.0",
                r is not None and r >= 1.0, f"{mine['ok_per_s']} vs {peer['ok_per_s']}/s")
            add(f"{SCENARIO_TITLES[scenario]} @{connections}: p99, Cutover vs dual-write (ms)",
                mine["p99_ms"], "<= dual-write's", mine["p99_ms"] <= peer["p99_ms"],
                f"{mine['p99_ms']} vs {peer['p99_ms']} ms")
    r = ratio(ok("create", "cutover"), pg["create"][16]["tps"])
    add("create collection @16: Cutover / pgbench (one statement against five)", r, ">= 1.0",
        r is not None and r >= 1.0, f"{ok('create', 'cutover')} vs {pg['create'][16]['tps']}/s")
    for scenario in ("create", "distinct", "attempt"):
        counted = results["statements"].get(scenario, {}).get("cutover")
        add(f"{SCENARIO_TITLES[scenario]}: SQL statements per command (Postgres log)", counted,
            "1", counted == 1, "on an aggregate in use; the feed's notification counts by its share")
    hot_errors = sum(v["errors"] for v in http["hot"]["cutover"].values())
    r = ratio(ok("hot", "cutover"), pg["hot"][1]["tps"])
    add("hot batch @16: Cutover / pgbench @1 client, no errors", r,
        ">= 0.58 (2026-11-24's), 0 errors", r is not None and r >= 0.58 and hot_errors == 0,
        f"{ok('hot', 'cutover')} vs {pg['hot'][1]['tps']}/s; {hot_errors} error answers")
    for scenario in SCENARIOS:
        lowest = min(ratio(v["ok_per_s"], http[scenario]["cqrs-es"][c]["ok_per_s"]) or 0
                     for c, v in http[scenario]["cutover"].items())
        add(f"{SCENARIO_TITLES[scenario]}: Cutover / stock cqrs-es, lowest over 1/16/64",
            lowest, "(for reference)", True, "")
    full, small = rb["stages"][-1], rb["stages"][0]
    r, detail = rebuild_ratio(rb)
    add("rebuild --all / COPY floor", r, ">= 0.8", r is not None and r >= 0.8, detail)
    r = ratio(full["peak_rss_mb"], small["peak_rss_mb"])
    add(f"rebuild peak RSS at {full['events']} events (MB), and against {small['events']}",
        full["peak_rss_mb"], "<= 100, flat (<= 1.5x)",
        full["peak_rss_mb"] is not None and full["peak_rss_mb"] <= 100
        and r is not None and r <= 1.5,
        f"{full['peak_rss_mb']} vs {small['peak_rss_mb']} MB")
    rss = results["memory"]["cutover"]["peak_rss_mb"]
    add("server peak RSS under load (MB)", rss, "<= 100", rss is not None and rss <= 100)
    reads = results["reads"]
    r = ratio(reads["with a replica"]["ok_per_s"], reads["primary alone"]["ok_per_s"])
    add("GET @16: with one replica / primary alone (same machine)", r, "(for reference)", True,
        f"{reads['with a replica']['ok_per_s']} vs {reads['primary alone']['ok_per_s']}/s; "
        f"{reads['with a replica']['served_by_replica']:.0f} reads served by the replica")
    shadow = results["shadow"]
    on, off = shadow["shadow on"], shadow["shadow off"]
    add("GET @16 p99 (ms): shadow on (every GET compared) against off", on["p99_ms"],
        "(for reference)", True,
        f"{on['p99_ms']:.2f} vs {off['p99_ms']:.2f} ms; {on['ok_per_s']:.0f} vs "
        f"{off['ok_per_s']:.0f}/s; {on['compared'] or 0:.0f} reads compared, "
        f"{on['mismatches'] or 0:.0f} mismatches")
    fo = results["follow"]
    slowest = min(fo[k]["changes_per_s"] for k in
                  ("copy", "stream, 100 rows a transaction", "stream, 1 row a transaction"))
    add("follow: catch-up (old changes/s), slowest of copy and streams", slowest, ">= 10,000",
        slowest >= 10_000,
        "; ".join(f"{k} {fo[k]['changes_per_s']}/s" for k in
                  ("copy", "stream, 100 rows a transaction", "stream, 1 row a transaction")))
    lag = fo["lag"]
    p99 = lag["p99_within_s"]
    add("follow: lag p99 (s) while the old system writes ~1,000 changes/s", p99, "<= 1",
        p99 is not None and p99 <= 1.0,
        f"{lag['changes_counted']} changes at {lag['old_changes_per_s']}/s for "
        f"{lag['seconds']} s (the bound of the histogram bucket reached)")
    return rows


def cpu(ms):
    return "" if ms is None else f"{ms:.2f}"


def markdown(results):
    meta = results["meta"]
    lines = [
        f"# Cutover benchmark ({meta['profile']} run)",
        "",
        f"{meta['date']} · {meta['cpu']}, {meta['cores']} cores, {meta['ram_gb']} GB RAM · "
        f"{meta['postgres']} · wrk {meta['wrk']} · commit {meta['commit']} · "
        f"{meta['seconds_per_run']} s per run (Cutover and the dual-write: {ROUNDS} turns of "
        f"{max(1, meta['seconds_per_run'] // ROUNDS)} s each) · load average {meta['load_average_at_start']:.2f} at "
        f"the start, {meta['load_average_at_end']:.2f} at the end",
        "",
        "## Commands: throughput and latency",
        "",
        "Cutover and the peers over HTTP (wrk); pgbench runs the same SQL writes with no HTTP "
        "and no application (the physical limit). ok/s counts 2xx answers only. CPU: "
        "milliseconds of CPU per successful command, in the server (app) and in Postgres (all "
        "of the cluster's processes), out of the machine's 2 cores.",
        "",
        "| scenario | conns | system | ok/s | p50 ms | p99 ms | p99.9 ms | errors | app CPU ms "
        "| PG CPU ms |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scenario in ["event-insert"] + SCENARIOS:
        conns = sorted({c for v in results["http"].get(scenario, {}).values() for c in v}
                       | set(results["pgbench"][scenario]))
        for c in conns:
            pg = results["pgbench"][scenario].get(c)
            if pg:
                lines.append(f"| {SCENARIO_TITLES[scenario]} | {c} | pgbench (SQL limit) | "
                             f"{pg['tps']:.0f} | {pg['p50_ms']:.2f} | {pg['p99_ms']:.2f} | "
                             f"{pg['p999_ms']:.2f} | {pg['failed']} | | {cpu(pg['pg_cpu_ms'])} |")
            for system in SYSTEMS:
                r = results["http"].get(scenario, {}).get(system, {}).get(c)
                if r:
                    note = f" ({r['note']})" if "note" in r else ""
                    lines.append(f"| {SCENARIO_TITLES[scenario]} | {c} | {system} | "
                                 f"{r['ok_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                                 f"{r['p999_ms']:.2f} | {r['errors']}{note} | "
                                 f"{cpu(r['app_cpu_ms'])} | {cpu(r['pg_cpu_ms'])} |")
    lines += ["", "## SQL statements per command", "",
              f"Counted in the Postgres log (`log_statement = all`) over {COUNTED} commands "
              "sent one after another on an aggregate in use, divided by their number; each is "
              "at least one round trip.", "",
              "| scenario | pgbench | " + " | ".join(SYSTEMS) + " |",
              "| --- | ---: | " + " | ".join("---:" for _ in SYSTEMS) + " |"]
    for scenario, counts in results["statements"].items():
        if any(system in counts for system in SYSTEMS):
            lines.append(f"| {SCENARIO_TITLES[scenario]} | {counts.get('pgbench', '')} | "
                         + " | ".join(str(counts.get(s, "")) for s in SYSTEMS) + " |")
    lines += ["", "## Reads: the primary alone and with one replica", "",
              "`GET /projects/{p}/collections?limit=10` at 16 connections, the two servers in "
              f"{ROUNDS} turns. The replica is a hot standby of the same cluster on the same "
              "machine, so both share its 2 cores: the figure shows what routing reads to a "
              "replica costs, not what a replica on a machine of its own adds. CPU as above "
              "(the replica's Postgres is not counted).", "",
              "| server | ok/s | p50 ms | p99 ms | errors | app CPU ms | served by the replica |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results["reads"].items():
        served = r.get("served_by_replica")
        lines.append(f"| {name} | {r['ok_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['errors']} | {cpu(r['app_cpu_ms'])} | "
                     f"{'' if served is None else f'{served:.0f}'} |")
    lines += ["", "## Reads with shadow reads off and on", "",
              "The same GETs at 16 connections on the primary, the collections domain out of "
              f"shadow and in shadow with every GET also computed from the other model and "
              f"compared, in {ROUNDS} turns.", "",
              "| shadow | ok/s | p50 ms | p99 ms | errors | app CPU ms | compared | mismatches |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results["shadow"].items():
        compared, mismatches = r.get("compared"), r.get("mismatches")
        lines.append(f"| {name} | {r['ok_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['errors']} | {cpu(r['app_cpu_ms'])} | "
                     f"{'' if compared is None else f'{compared:.0f}'} | "
                     f"{'' if mismatches is None else f'{mismatches:.0f}'} |")
    lines += rebuild_markdown(results["rebuild"])
    fo = results["follow"]
    lines += ["", "## Following the old system", "",
              "`cutover follow` against a second cluster (`wal_level = logical`) playing the old "
              "system, on the same machine: the copy of its existing rows, then the catch-up "
              "over changes the old system wrote while no follower ran, each timed as one "
              "`cutover follow --until-caught-up` (the process's start included); then the "
              "lag while pgbench writes about 1,000 single-row transactions a second to the old "
              "table with the follower running (how long after its old commit each change was "
              "written here, from the follower's histogram).", "",
              "| what | changes | seconds | changes/s |", "| --- | ---: | ---: | ---: |"]
    for name in ("copy", "stream, 100 rows a transaction", "stream, 1 row a transaction"):
        r = fo[name]
        lines.append(f"| {name} | {r['changes']} | {r['seconds']} | {r['changes_per_s']} |")
    lag = fo["lag"]
    lines += ["", f"Lag at {lag['old_changes_per_s']} old changes/s for {lag['seconds']} s: "
                  f"99% of {lag['changes_counted']} changes applied within "
                  f"{lag['p99_within_s']} s of their old commit."]
    lines += ["", "## Memory", "", "| process | peak RSS MB |", "| --- | ---: |"]
    for name, memory in results["memory"].items():
        lines.append(f"| {name} server, after the load | {memory['peak_rss_mb']} |")
    for stage in results["rebuild"]["stages"]:
        lines.append(f"| `cutover rebuild --all`, {stage['events']} events | {stage['peak_rss_mb']} |")
    lines += ["", f"Stock cqrs-es view updates lost after their events committed: "
                  f"{results['cqrs_view_errors']}.", "",
              "## Targets" + (" (smoke run: sizes too small, not asserted)"
                              if meta["profile"] == "smoke" else ""), "",
              "| target | measured | threshold | met | detail |",
              "| --- | ---: | --- | --- | --- |"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['value']} | {t['threshold']} | "
                     f"{'met' if t['met'] else 'NOT MET'} | {t['detail']} |")
    lines += ["", "![throughput and p99 per scenario](chart.png)", ""]
    return "\n".join(lines)


def rebuild_markdown(rb):
    """The rebuild's table: each stage beside the COPY floor."""
    lines = ["", "## Rebuild", "", "| what | events | seconds | events/s | peak RSS MB |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for stage in rb["stages"]:
        lines.append(f"| `cutover rebuild --all` | {stage['events']} | {stage['seconds']} | "
                     f"{stage['events_per_s']} | {stage['peak_rss_mb']} |")
    fl = rb["floor"]
    lines.append(f"| COPY floor (events out in log order + {fl['rows_written']} read-model rows in)"
                 f" | {fl['events']} | {fl['read_s'] + fl['write_s']:.2f} | {fl['events_per_s']} | |")
    return lines


def chart(results, connections, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    def pgbench(scenario, c, key):
        r = results["pgbench"][scenario].get(c)
        return r and r["tps" if key == "ok_per_s" else key]

    def http(system):
        return lambda scenario, c, key: results["http"][scenario][system][c][key]

    series = [("pgbench (SQL limit)", "#9e9e9e", pgbench), ("Cutover", "#1f77b4", http("cutover")),
              ("dual-write", "#ff7f0e", http("dual-write")), ("stock cqrs-es", "#2ca02c", http("cqrs-es"))]
    fig, axes = plt.subplots(2, len(connections), figsize=(5.5 * len(connections), 8),
                             squeeze=False)
    width = 0.2
    labels = [SCENARIO_TITLES[s].replace(", ", "\n") for s in SCENARIOS]
    for col, c in enumerate(connections):
        for i, (label, color, get) in enumerate(series):
            xs = [x + (i - 1.5) * width for x in range(len(SCENARIOS))]
            for row, key in enumerate(["ok_per_s", "p99_ms"]):
                values = [get(s, c, key) for s in SCENARIOS]
                axes[row][col].bar(xs, [v if v else float("nan") for v in values], width,
                                   label=label if (row, col) == (0, 0) else None, color=color)
        axes[0][col].set_title(f"{c} connection{'s' if c > 1 else ''}")
        axes[1][col].set_yscale("log")
        p99_axis = axes[1][col].yaxis
        p99_axis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        p99_axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        p99_axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes[1][col].axhline(10, color="red", linestyle="--", linewidth=0.8)
        for row in range(2):
            axes[row][col].set_xticks(range(len(SCENARIOS)))
            axes[row][col].set_xticklabels(labels, fontsize=8)
    axes[0][0].set_ylabel("successful commands/s")
    axes[1][0].set_ylabel("p99 latency, ms (log; red: 10 ms target)")
    meta = results["meta"]
    fig.suptitle(f"Cutover beside its peers and the pgbench limit — {meta['date']}, "
                 f"{meta['cpu']}, {meta['cores']} cores")
    fig.legend(loc="lower center", ncol=4)
    fig.tight_layout(rect=(0, 0.04, 1, 0.96))
    fig.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes and 1 s runs (a check that everything works, for CI)")
    parser.add_argument("--rebuild-only", action="store_true",
                        help="only the rebuild against its COPY floor (a few minutes); writes "
                             "rebuild.md and rebuild.json")
    parser.add_argument("--statement-parts", action="store_true",
                        help="only what each part of a create's statement costs Postgres, by "
                             "pgbench at one client (a few minutes); writes statement-parts.md")
    args = parser.parse_args()
    profile = SMOKE if args.smoke else FULL
    bins = ROOT / "target" / ("release" if profile.cargo_profile == "release" else "debug")
    OUT.mkdir(parents=True, exist_ok=True)
    logs = OUT / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    bin_dir = postgres_bin()
    meta = machine()
    meta["profile"] = profile.name
    meta["seconds_per_run"] = profile.seconds
    meta["postgres"] = run([bin_dir / "postgres", "--version"]).strip()
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    meta["wrk"] = (re.findall(r"wrk (\S+)", wrk_version) or ["?"])[0]
    results = {"meta": meta}
    work = Path(tempfile.mkdtemp(prefix="cutover-bench.", dir="/tmp"))
    work.chmod(0o755)
    cluster = Cluster(bin_dir, work / "pg")
    servers = {}
    try:
        port = free_port()
        servers["cutover"] = Server("cutover", [bins / "cutover-api"], {
            "CUTOVER_DATA_DIR": str(work / "pg"), "CUTOVER_BIND": f"127.0.0.1:{port}",
            "RUST_LOG": "warn"}, port, logs)
        servers["cutover"].wait_healthy()
        log(f"Cutover is up on {servers['cutover'].base}; its cluster in {work / 'pg'}")
        if args.statement_parts:
            import parts
            table = parts.statement_parts(sys.modules[__name__], cluster, servers["cutover"],
                                          logs)
            report = (f"# Cutover benchmark: a create's statement, part by part\n\n"
                      f"{meta['date']} · {meta['cpu']}, {meta['cores']} cores · "
                      f"{meta['postgres']} · commit {meta['commit']}\n\n{table}\n")
            (OUT / "statement-parts.md").write_text(report)
            print(report)
            return
        if args.rebuild_only:
            results["rebuild"] = rebuild(cluster, profile, bins, work, logs)
            return rebuild_only(results)
        results["pgbench"] = physical_limit(cluster, profile, logs)
        databases = {"cutover": "cutover"}
        for system, command in [("dual-write", "dual-write-server"), ("cqrs-es", "cqrs-server")]:
            databases[system] = "bench_" + system.replace("-", "_")
            cluster.sql("postgres", f"CREATE DATABASE {databases[system]}")
            port = free_port()
            servers[system] = Server(system, [
                bins / "cutover-bench", command, "--bind", f"127.0.0.1:{port}",
                "--database-url", cluster.url(databases[system])], {"RUST_LOG": "warn"}, port, logs)
            servers[system].wait_healthy()
        results["http"] = load(servers, cluster, profile)
        results["memory"] = {name: server.memory_mb() for name, server in servers.items()}
        # The stock server may still be applying its views after the load: give it time.
        with urllib.request.urlopen(servers["cqrs-es"].base + "/stats", timeout=120) as response:
            results["cqrs_view_errors"] = json.load(response)["view_errors"]
        results["statements"] = statements_per_command(servers, cluster,
                                                       work / "pg" / "postgres.log", databases)
        # The peers are done: stopped before the rebuild, so that a transaction one of them
        # left open (the stock cqrs-es server's view updates can hang after the hot batch)
        # cannot hold the cluster's horizon back and make the rebuild wait for it.
        for system in ("cqrs-es", "dual-write"):
            servers.pop(system).stop()
        results["reads"] = replica_reads(servers, cluster, profile, bins, work, logs)
        results["shadow"] = shadow_reads(servers, cluster, profile)
        results["rebuild"] = rebuild(cluster, profile, bins, work, logs)
        results["follow"] = follow_old_system(cluster, profile, bins, work, logs)
    finally:
        # The peers first: Cutover's server stops the cluster it started.
        for server in reversed(list(servers.values())):
            server.stop()
        if (work / "pg" / "postgres.log").exists():
            shutil.copy(work / "pg" / "postgres.log", logs / "postgres.log")
        shutil.rmtree(work, ignore_errors=True)
    meta["load_average_at_end"] = os.getloadavg()[0]
    results["targets"] = targets(results)
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = markdown(results)
    (OUT / "results.md").write_text(report)
    chart(results, profile.connections, OUT / "chart.png")
    print(report)
    log(f"wrote {OUT / 'results.json'}, {OUT / 'results.md'} and {OUT / 'chart.png'}")
    # Every server answered its probes; Cutover must also have answered under load.
    broken = [f"{scenario} at {c} connections"
              for scenario, systems in results["http"].items()
              for c, r in systems["cutover"].items() if r["ok_per_s"] == 0]
    if broken:
        sys.exit("Cutover answered no request successfully in: " + ", ".join(broken))


def rebuild_only(results):
    """Writes and prints the rebuild's figures alone, with the target's ratio."""
    r, detail = rebuild_ratio(results["rebuild"])
    meta = results["meta"]
    report = "\n".join([
        "# Cutover benchmark: the rebuild alone", "",
        f"{meta['date']} · {meta['cpu']}, {meta['cores']} cores · {meta['postgres']} · "
        f"commit {meta['commit']}",
        *rebuild_markdown(results["rebuild"]), "",
        f"rebuild --all / COPY floor: {r} ({detail})", ""])
    (OUT / "rebuild.json").write_text(json.dumps(results, indent=2) + "\n")
    (OUT / "rebuild.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
