// Cutover's migration console: polls the admin API, follows the event feed, and sends the
// admin actions with the token typed into the page. No framework, no network but this server.
"use strict";

const POLL_MS = 2000;
const EVENTS_KEPT = 25;
const TOKEN_KEY = "cutover-console-token";

const page = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  feed: null,
  after: null,
  polling: null,
};

// ---- DOM helpers (text only: nothing from the server is parsed as HTML)

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === "onclick") node.addEventListener("click", value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const number = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));

function seconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 60) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function showMessage(text, ok) {
  const box = document.getElementById("message");
  box.replaceChildren(el("strong", {}, ok ? "Done" : "Refused"), text);
  box.classList.toggle("ok", Boolean(ok));
  box.hidden = false;
}

// ---- the API

function headers(extra) {
  const all = Object.assign({ Accept: "application/json" }, extra || {});
  if (page.token) all.Authorization = `Bearer ${page.token}`;
  return all;
}

/** Calls the API; throws an Error whose message is the server's problem+json title and detail. */
async function api(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const detail = data && (data.title || data.detail)
      ? `${response.status} ${data.title || ""}: ${data.detail || ""}`
      : `${response.status} ${response.statusText} ${text.slice(0, 200)}`;
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return data;
}

// ---- confirmation before every action

function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
    document.getElementById("confirm-yes").focus();
  });
}

async function act(question, method, path, body, done) {
  if (!(await confirmAction(question))) return;
  try {
    const answer = await api(method, path, body);
    showMessage(done(answer), true);
  } catch (error) {
    showMessage(error.message, false);
  }
  refresh();
}

const rebuild = (name) =>
  act(
    name === "all"
      ? "Rebuild every projection from the event log? Live traffic continues; the new tables replace the old ones when the rebuild catches up."
      : `Rebuild ${name} from the event log? Live traffic continues; its new tables replace the old ones when the rebuild catches up.`,
    "POST", `/admin/projections/${encodeURIComponent(name)}/rebuild`, null,
    (started) => `Rebuild of ${started.projections.join(", ")} started (job ${started.job_id}).`,
  );

const cancelRebuild = (job) =>
  act(
    `Cancel rebuild job ${job.id} of ${job.projections.join(", ")}? It stops at its next batch and its tables are dropped; the live tables stay as they are.`,
    "DELETE", `/admin/jobs/${encodeURIComponent(job.id)}`, null,
    (cancelled) => `Rebuild job ${cancelled.id} is ${cancelled.status}.`,
  );

const retire = (name) =>
  act(
    `Retire ${name}? Its tables are dropped and it is no longer kept up to date. It can be brought back by a rebuild.`,
    "POST", `/admin/projections/${encodeURIComponent(name)}/retire`, null,
    () => `${name} is retired.`,
  );

const switchSource = (domain, source, force) =>
  act(
    force
      ? `Force the switch of ${domain} to ${source} past the closed gate? No clean consistency report covers the ${domain} projections as they are now. The override is recorded with your token and the time.`
      : `Switch the ${domain} read source to ${source}? Queries of ${domain} read from the ${source} tables from now on.`,
    "PUT", `/admin/read-sources/${encodeURIComponent(domain)}`, { source, force },
    (answer) => `${answer.domain} now reads from ${answer.source}${answer.forced ? " (forced past the gate)" : ""}.`,
  );

async function verify() {
  if (!(await confirmAction("Run a verification? It rebuilds every live projection into scratch tables and compares all rows; this takes a while on a long log."))) return;
  const button = document.getElementById("verify");
  button.disabled = true;
  button.textContent = "Verifying…";
  try {
    const report = await api("GET", "/admin/consistency");
    showMessage(report.consistent ? "Verification found no difference." : `Verification found ${number(report.difference_count)} differences.`, report.consistent);
  } catch (error) {
    showMessage(error.message, false);
  } finally {
    button.disabled = false;
    button.textContent = "Run verification";
  }
  refreshConsistency();
}

// ---- rendering

// The job's status is the server's: `running`, `interrupted` (recorded running, run by no
// process any more), or how it ended.
function progressCell(status) {
  const job = status.latest_job;
  const running = job.status === "running";
  const interrupted = job.status === "interrupted";
  const succeeded = job.status === "succeeded";
  const total = Math.max(job.events_total, job.events_done, 1);
  const done = succeeded ? total : job.events_done;
  const percent = Math.floor((done / total) * 100);
  const label = `Rebuild of ${status.name}`;
  let text;
  if (running) {
    text = `${number(job.events_done)} of ${number(job.events_total)} events (${percent}%), ${number(Math.round(job.events_per_second))} events/s, ETA ${seconds(job.eta_seconds)}`;
  } else if (interrupted) {
    text = `interrupted at ${number(job.events_done)} of ${number(job.events_total)} events: Rebuild resumes it from its checkpoint`;
  } else if (succeeded) {
    text = `done: ${number(job.events_done)} events at ${number(Math.round(job.events_per_second))} events/s, appends held ${job.swap_hold_ms === null ? "—" : job.swap_hold_ms.toFixed(1)} ms, finished ${new Date(job.finished_at).toLocaleTimeString()}`;
  } else {
    text = `${job.status}${job.error ? `: ${job.error}` : ""} (${number(job.events_done)} of ${number(job.events_total)} events)`;
  }
  return el("td", { colspan: 9 },
    el("div", { class: "progress" },
      el("progress", { max: total, value: done, "aria-label": label, "data-projection": status.name, "data-status": job.status }),
      el("span", { class: "progress-text" }, `${percent}% — ${text}`),
      running || interrupted
        ? el("button", { type: "button", "aria-label": `Cancel the rebuild of ${status.name}`, onclick: () => cancelRebuild(job) }, "Cancel")
        : null));
}

function renderProjections(statuses) {
  const body = document.querySelector("#projections tbody");
  const rows = [];
  for (const status of statuses) {
    const rowCount = Object.values(status.rows).reduce((a, b) => a + b, 0);
    const tables = Object.entries(status.rows).map(([t, n]) => `${t}: ${number(n)}`).join(", ");
    const actions = el("td", {},
      el("button", { type: "button", "aria-label": `Rebuild ${status.name}`, onclick: () => rebuild(status.name), disabled: status.rebuild_running }, "Rebuild"),
      status.state === "retired" ? null
        : el("button", { type: "button", "aria-label": `Retire ${status.name}`, onclick: () => retire(status.name) }, "Retire"));
    rows.push(el("tr", { "data-projection": status.name },
      el("th", { scope: "row" }, status.name),
      el("td", {}, status.domain),
      el("td", {}, status.shape),
      el("td", { class: `state-${status.state}` }, status.rebuild_running && status.state !== "rebuilding" ? `${status.state}, rebuilding` : status.state),
      el("td", { class: "num", title: tables }, Object.keys(status.rows).length ? number(rowCount) : "—"),
      el("td", { class: "num" }, status.version),
      el("td", { class: "num" }, number(status.last_position)),
      el("td", { class: "num" }, number(status.lag)),
      actions));
    if (status.latest_job) rows.push(el("tr", { class: "progress-row" }, progressCell(status)));
  }
  body.replaceChildren(...rows);
  document.getElementById("rebuild-all").disabled = statuses.some((s) => s.rebuild_running);
}

function renderSources(sources, gates) {
  const list = document.getElementById("read-sources");
  list.replaceChildren(...Object.entries(sources).map(([domain, source]) => {
    const other = source === "legacy" ? "new" : "legacy";
    const { gate, last_switch: last } = gates[domain] ?? { gate: { open: false, reason: "unknown" } };
    const switchButton = gate.open
      ? el("button", { type: "button", onclick: () => switchSource(domain, other, false) }, `Switch ${domain} to ${other}`)
      : el("button", { type: "button", class: "danger", onclick: () => switchSource(domain, other, true) }, `Force ${domain} to ${other}`);
    return el("li", { "data-domain": domain },
      el("strong", {}, domain), "reads from ",
      el("span", { class: "source" }, source), " ",
      switchButton,
      el("p", { class: gate.open ? "gate open" : "gate closed", "data-gate": gate.open ? "open" : "closed" },
        gate.open ? `Gate open: ${gate.reason}` : `Gate closed: ${gate.reason}`),
      last
        ? el("p", { class: "muted" }, `Last switch: to ${last.detail.source} by ${last.actor} at ${new Date(last.at).toLocaleString()}${last.forced ? " (forced past the gate)" : ""}`)
        : "");
  }));
}

function renderConsistency(latest) {
  const box = document.getElementById("consistency");
  if (!latest) {
    box.replaceChildren(el("p", { class: "muted" }, "No verification has run yet."));
    return;
  }
  const report = latest.report;
  const parts = [
    el("p", {},
      el("span", { class: latest.consistent ? "consistent" : "inconsistent" },
        latest.consistent ? "Consistent" : `${number(report.difference_count)} differences`),
      ` — ${number(report.rows_compared)} rows compared in ${report.domains.join(", ")}, checked ${new Date(latest.checked_at).toLocaleString()}`),
  ];
  if (report.skipped.length) parts.push(el("p", { class: "muted" }, `Skipped: ${report.skipped.join("; ")}`));
  if (report.differences.length) {
    parts.push(el("table", { id: "differences" },
      el("caption", {}, `The first ${report.differences.length} differences`),
      el("thead", {}, el("tr", {}, ...["Check", "Projection", "Table", "Key", "Field", "Legacy / live", "New / rebuilt", "Repair"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...report.differences.map((d) => el("tr", {},
        el("td", {}, d.check), el("td", {}, d.projection), el("td", {}, d.table),
        el("td", {}, el("code", {}, JSON.stringify(d.key))), el("td", {}, d.field),
        el("td", {}, el("code", {}, JSON.stringify(d.left))), el("td", {}, el("code", {}, JSON.stringify(d.right))),
        el("td", {}, d.repair ? el("code", {}, d.repair) : "rebuild the projection"))))));
  }
  box.replaceChildren(...parts);
}

function drawChart(id, values) {
  const svg = document.getElementById(id);
  const peak = Math.max(1, ...values);
  const points = values.map((v, i) => {
    const x = values.length > 1 ? (i / (values.length - 1)) * 600 : 0;
    return `${x.toFixed(1)},${(115 - (v / peak) * 105).toFixed(1)}`;
  });
  const ns = "http://www.w3.org/2000/svg";
  const axis = document.createElementNS(ns, "line");
  for (const [k, v] of Object.entries({ x1: 0, y1: 115, x2: 600, y2: 115, class: "axis" })) axis.setAttribute(k, v);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  const title = document.createElementNS(ns, "title");
  title.textContent = `peak ${Math.round(peak)} per second`;
  svg.replaceChildren(title, axis, line);
}

function renderActivity(activity) {
  const commands = activity.samples.map((s) => s.commands_per_second);
  const rebuild = activity.samples.map((s) => s.rebuild_events_per_second);
  drawChart("chart-commands", commands);
  drawChart("chart-rebuild", rebuild);
  const rate = (v) => (v < 10 ? v.toFixed(1) : number(Math.round(v)));
  const summary = (values) =>
    `${rate(values.length ? values[values.length - 1] : 0)} now, peak ${rate(Math.max(0, ...values))}`;
  document.getElementById("commands-now").textContent = summary(commands);
  document.getElementById("rebuild-now").textContent = summary(rebuild);
  const blocker = activity.horizon_blocker;
  const box = document.getElementById("horizon");
  box.hidden = !blocker;
  box.textContent = blocker
    ? `The log's horizon is held back by pid ${blocker.pid} (application "${blocker.application}", transaction open ${Math.round(blocker.age_seconds)} s): ${blocker.query}. The feed and rebuilds wait for it.`
    : "";
}

// ---- polling

async function refreshConsistency() {
  try {
    renderConsistency(await api("GET", "/admin/consistency/latest"));
  } catch (error) {
    if (error.status === 404) renderConsistency(null);
  }
}

async function refresh() {
  const connection = document.getElementById("connection");
  try {
    const [projections, sources, activity] = await Promise.all([
      api("GET", "/admin/projections"),
      api("GET", "/admin/read-sources"),
      api("GET", "/admin/activity"),
    ]);
    const gates = Object.fromEntries(await Promise.all(Object.keys(sources).map(async (domain) =>
      [domain, await api("GET", `/admin/read-sources/${encodeURIComponent(domain)}/gate`)])));
    renderProjections(projections);
    renderSources(sources, gates);
    renderActivity(activity);
    if (page.after === null) {
      page.after = activity.log_head;
      follow();
    }
    connection.textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    connection.textContent = error.status === 401 || error.status === 403
      ? `type a token to watch (${error.message})`
      : `cannot reach the server: ${error.message}`;
  }
}

// ---- the live feed (fetch, so that the token can be sent; EventSource cannot send headers)

function addEvent(event) {
  const body = document.querySelector("#events tbody");
  body.prepend(el("tr", {},
    el("td", { class: "num" }, event.position),
    el("td", {}, `${event.aggregate_type} ${event.aggregate_id}`),
    el("td", {}, event.event_type),
    el("td", {}, new Date(event.recorded_at).toLocaleTimeString())));
  while (body.children.length > EVENTS_KEPT) body.lastElementChild.remove();
}

async function follow() {
  if (page.feed) page.feed.abort();
  const control = new AbortController();
  page.feed = control;
  const state = document.getElementById("feed-state");
  try {
    const response = await fetch(`/events/stream?after=${page.after}`, {
      headers: headers({ Accept: "text/event-stream" }),
      signal: control.signal,
    });
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    state.textContent = "(live)";
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (!data) continue;
        const event = JSON.parse(data);
        page.after = event.position;
        addEvent(event);
      }
    }
  } catch (error) {
    if (control.signal.aborted) return;
    state.textContent = `(reconnecting: ${error.message})`;
  }
  if (!control.signal.aborted) setTimeout(follow, POLL_MS);
}

// ---- start

document.getElementById("token").value = page.token;
document.getElementById("token-form").addEventListener("submit", (submitted) => {
  submitted.preventDefault();
  page.token = document.getElementById("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, page.token);
  page.after = null;
  refresh();
  refreshConsistency();
});
document.getElementById("verify").addEventListener("click", verify);
document.getElementById("rebuild-all").addEventListener("click", () => rebuild("all"));
refresh();
refreshConsistency();
setInterval(refresh, POLL_MS);
setInterval(refreshConsistency, POLL_MS * 3);
