"""Where a command's statement spends Postgres's time: the statement Cutover's server sends for
one `create collection`, taken from the server's own log, run by pgbench at one client whole
and with parts of it taken out, beside the dual-write's transaction over the same rows.

Started by `scripts/bench/run --statement-parts` (bench.py), on the cluster and server it
started. Each variant runs in turns with the others, `ROUNDS` times; the table gives the median
of each. A variant's latency at one client is its Postgres time plus one round trip per
statement (pgbench's own time included), so the differences between variants are what each
part costs.
"""

import re
import statistics

ROUNDS = 3
SECONDS = 4
PROJECT = "6d9b6f5e-0000-4000-8000-00000000e001"


def statement_of_one_create(bench, cluster, server):
    """The append statement and its parameters, as the server's log shows them for one
    `POST /projects/{p}/collections` (statement logging is on for that request only)."""
    log_path = cluster.data.parent / "postgres.log"
    offset = log_path.stat().st_size
    cluster.sql("postgres", "ALTER SYSTEM SET log_statement = 'all'")
    cluster.sql("postgres", "SELECT pg_reload_conf()")
    try:
        # The first command after a start also reads the registry: take the second.
        for name in ("first", "second"):
            bench.post_ok(server.base, f"/projects/{PROJECT}/collections",
                          {"collection_name": name, "description": "d"})
    finally:
        cluster.sql("postgres", "ALTER SYSTEM RESET log_statement")
        cluster.sql("postgres", "SELECT pg_reload_conf()")
    with open(log_path, errors="replace") as log:
        log.seek(offset)
        text = log.read()
    found = list(re.finditer(
        r"execute \S+: (WITH appended AS \(.*?)\n\S.*?DETAIL:  parameters: (.*?)\n(?=\S)",
        text, re.S))
    if not found:
        raise RuntimeError("the append statement is not in the server's log")
    sql = found[-1].group(1).replace("\n\t", "\n")
    parameters = {int(n): value.replace("''", "'") for n, value in
                  re.findall(r"\$(\d+) = '((?:[^']|'')*)'", found[-1].group(2))}
    return sql, parameters


def with_literals(sql, parameters):
    """`sql` with each parameter written in place; the collection's id, in every value that
    holds it, replaced by one made from pgbench's `:n`, so that each transaction creates
    another collection."""
    ids = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                     parameters[2])
    old = ids[0]

    def literal(n):
        value = parameters[n].replace("'", "''")
        if old in parameters[n]:
            return f"(replace('{value}', '{old}', md5(:n::text)::uuid::text))"
        return f"'{value}'"

    return re.sub(r"\$(\d+)", lambda m: literal(int(m.group(1))), sql)


def replace_part(sql, name, body):
    """`sql` with the `WITH` part `name` made `body`."""
    start = sql.index(f"{name} AS (") + len(name) + 4
    depth = 0
    for end in range(start, len(sql)):
        depth += {"(": 1, ")": -1}.get(sql[end], 0)
        if depth == 0:
            return f"{sql[:start]}({body}){sql[end + 1:]}"
    raise ValueError(f"no end to part {name}")


def variants(sql):
    """The statement whole, and with parts taken out, and the peers' SQL over the same rows."""
    no_sources = replace_part(sql, "sources",
                              "SELECT '{}'::text[] AS domains, '{}'::text[] AS sources")
    no_checks = replace_part(replace_part(no_sources, "inline", "SELECT true AS current"),
                             "writable", "SELECT true AS writable")

    def no_returning(s):
        s = re.sub(r" RETURNING '\w+'::text AS written_table, to_jsonb\(live\) AS written_row",
                   "", s)
        return replace_part(s, "written", "SELECT '[]'::jsonb AS rows")

    parts = re.findall(r"projected_\d+ AS \((INSERT .*?) RETURNING '", sql, re.S)
    events = sql.split("), sources AS (")[0] + ") SELECT position FROM appended"
    models = " ".join(f"{'WITH' if i == 0 else ','} m{i} AS ({p})" for i, p in
                      enumerate(parts[:-1])) + f" {parts[-1]}"
    dual_write = ["BEGIN", f"{parts[0]} RETURNING *", *parts[1:], "COMMIT"]
    return [
        ("the whole statement", [sql]),
        ("without the read sources", [no_sources]),
        ("without the registry check", [replace_part(sql, "inline", "SELECT true AS current")]),
        ("without the follow check", [replace_part(sql, "writable", "SELECT true AS writable")]),
        ("without the rows returned", [no_returning(sql)]),
        ("without the three checks", [no_checks]),
        ("events and read models only", [no_returning(no_checks)]),
        ("the event row alone", [events]),
        ("the read-model rows alone", [models]),
        ("the dual-write's transaction (4 statements)", dual_write),
    ]


def measure(bench, cluster, logs, db, name, statements):
    script = logs / f"part-{re.sub(r'[^a-z]+', '-', name)}.sql"
    script.write_text("\\set n random(1, 9000000000000000000)\n"
                      + "".join(" ".join(s.split()) + ";\n" for s in statements))
    pg_before = cluster.cpu_seconds()
    out = bench.run([cluster.bin / "pgbench", "-h", cluster.socket, "-U", "postgres", "-n",
                     "-M", "prepared", "-c", "1", "-T", str(SECONDS), "-f", script, db])
    pg_cpu = cluster.cpu_seconds() - pg_before
    transactions = int(re.search(r"number of transactions actually processed: (\d+)",
                                 out).group(1))
    latency = float(re.search(r"latency average = ([\d.]+) ms", out).group(1))
    return latency, 1000 * pg_cpu / transactions


def statement_parts(bench, cluster, server, logs):
    """Runs every variant in turns and returns the markdown table."""
    sql, parameters = statement_of_one_create(bench, cluster, server)
    runs = variants(with_literals(sql, parameters))
    results = {name: [] for name, _ in runs}
    for _ in range(ROUNDS):
        for name, statements in runs:
            cluster.checkpoint()
            results[name].append(measure(bench, cluster, logs, "cutover", name, statements))
    lines = ["| SQL, one client (pgbench -M prepared) | statements | latency ms | "
             "Postgres CPU ms |", "| --- | ---: | ---: | ---: |"]
    for name, statements in runs:
        latency = statistics.median(r[0] for r in results[name])
        cpu = statistics.median(r[1] for r in results[name])
        lines.append(f"| {name} | {len(statements)} | {latency:.3f} | {cpu:.3f} |")
    return "\n".join(lines)
