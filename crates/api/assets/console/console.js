// Cutover's migration console: polls the admin API, follows the event feed, and sends the
// admin actions with the token typed into the page. No framework, no network but this server.
"use strict";

const POLL_MS = 2000;
const EVENTS_KEPT = 25;
const TOKEN_KEY = "cutover-console-token";
// The reads the switch gate wants of a domain taken out of shadow after some were counted
// (cutover_engine::shadow::DEFAULT_MIN_READS), and the defaults of a new shadow.
const DEFAULT_MIN_READS = 1000;
const DEFAULT_FRACTION = 1.0;

const page = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  feed: null,
  after: null,
  polling: null,
  // The latest answers of the admin API: the stages and the report's freshness are derived from
  // them together. `latest` is undefined until the consistency report is asked for, null when
  // there is none.
  data: { projections: null, sources: null, gates: null, shadows: null, latest: undefined },
  // Per domain: the shadow card's elements, built once so that typed settings and opened
  // mismatches survive the refreshes.
  shadowCards: new Map(),
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

/** `n` things, in words: "1 mismatch", "2 mismatches". */
const count = (n, one, many) => `${number(n)} ${Number(n) === 1 ? one : many}`;
const percent = (fraction) => `${Number((fraction * 100).toFixed(2))}%`;
const when = (timestamp) => new Date(timestamp).toLocaleString();

/**
 * A timestamp of the server as microseconds since the epoch, exactly: the server's timestamps
 * have microseconds, and a Date keeps milliseconds only, which would make a report taken in
 * the same millisecond as a rebuild look as old as it.
 */
function micros(timestamp) {
  const parts = /^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$/.exec(timestamp);
  if (!parts) return Date.parse(timestamp) * 1000;
  return Date.parse(parts[1] + parts[3]) * 1000 + Number((parts[2] || "").padEnd(6, "0").slice(0, 6));
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

const switchSource = (domain, source, force, gate) =>
  act(
    force
      ? `Force the switch of ${domain} to ${source} past the closed gate? The gate is closed: ${gate.reason}. The override is recorded with your token and the time.`
      : `Switch the ${domain} read source to ${source}? Queries of ${domain} read from the ${source} tables from now on.`,
    "PUT", `/admin/read-sources/${encodeURIComponent(domain)}`, { source, force },
    (answer) => `${answer.domain} now reads from ${answer.source}${answer.forced ? " (forced past the gate)" : ""}.`,
  );

/** The shadow settings typed into a domain's card, as the API takes them (blank: its default). */
function shadowSettings(card) {
  const body = {};
  const fraction = card.fraction.value.trim();
  const minReads = card.minReads.value.trim();
  if (fraction !== "") body.fraction = Number(fraction) / 100;
  if (minReads !== "") body.min_reads = Number(minReads);
  return body;
}

function startShadow(domain, card) {
  const body = shadowSettings(card);
  const source = page.data.sources?.[domain] ?? "legacy";
  const other = source === "legacy" ? "new" : "legacy";
  const fraction = body.fraction ?? DEFAULT_FRACTION;
  const minReads = body.min_reads ?? DEFAULT_MIN_READS;
  const inShadow = Boolean(card.shadowWindow?.shadow);
  return act(
    `${inShadow ? `Change the shadow settings of ${domain}?` : `Put ${domain} in shadow?`} Its GETs are answered from the ${source} tables as before, and ${Number.isFinite(fraction) ? percent(fraction) : "a share"} of them are also computed from the ${other} tables and compared. The switch gate wants ${Number.isFinite(minReads) ? number(minReads) : "some"} reads with no mismatch since the last rebuild, repair or retirement of its projections.`,
    "PUT", `/admin/shadow/${encodeURIComponent(domain)}`, body,
    (answer) => `${answer.domain} is in shadow: ${percent(answer.shadow.fraction)} of its reads are compared, and the switch gate wants ${number(answer.shadow.min_reads)} with no mismatch.`,
  );
}

const stopShadow = (domain) =>
  act(
    `Take ${domain} out of shadow? Its GETs are no longer compared. The reads counted so far stay counted.`,
    "DELETE", `/admin/shadow/${encodeURIComponent(domain)}`, null,
    (answer) => `${answer.domain} is out of shadow.`,
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
        : null),
    stoppedList(job));
}

// The readers' sessions the job's swap stopped because they held it up (`swap_stopped`).
function stoppedList(job) {
  if (job.swap_stopped.length === 0) {
    return null;
  }
  return el("ul", { class: "swap-stopped", "aria-label": "Sessions the swap stopped" },
    ...job.swap_stopped.map((s) => el("li", {},
      `${s.signal === "terminate" ? "ended" : "cancelled"}: pid ${s.pid}, ${s.user ?? "?"}`
        + `${s.application ? ` (${s.application})` : ""}`
        + `${s.query_start ? `, query since ${new Date(s.query_start).toLocaleTimeString()}` : ""}`
        + `: ${s.query ?? ""}`)));
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
      ? el("button", { type: "button", onclick: () => switchSource(domain, other, false, gate) }, `Switch ${domain} to ${other}`)
      : el("button", { type: "button", class: "danger", onclick: () => switchSource(domain, other, true, gate) }, `Force ${domain} to ${other}`);
    return el("li", { "data-domain": domain },
      el("strong", {}, domain), "reads from ",
      el("span", { class: "source" }, source), " ",
      switchButton,
      el("p", { class: gate.open ? "gate open" : "gate closed", "data-gate": gate.open ? "open" : "closed" },
        gate.open ? `Gate open: ${gate.reason}` : `Gate closed: ${gate.reason}`),
      last ? el("p", { class: "muted" }, lastSwitch(last)) : "");
  }));
}

// The domain's last read-source switch (the gate's `last_switch`).
function lastSwitch(last) {
  return `Last switch: to ${last.detail.source} by ${last.actor} at ${when(last.at)}${last.forced ? " (forced past the gate)" : ""}`;
}

// ---- where each domain stands

const STEPS = [
  { stage: "backfill", label: "Backfilled" },
  { stage: "verify", label: "Verified" },
  { stage: "shadow", label: "Shadow reads" },
  { stage: "switch", label: "Switched" },
  { stage: "retire legacy", label: "Legacy retired" },
];

/** The last rebuild, repair or retirement of one of `domain`'s projections (its changed_at). */
function lastChange(projections, domain) {
  let latest = null;
  for (const p of projections) {
    if (p.domain === domain && (latest === null || micros(p.changed_at) > micros(latest))) latest = p.changed_at;
  }
  return latest;
}

/**
 * What the latest consistency report says of `domain`, as the switch gate reads it:
 * `none` (no report at all), `unknown` (the latest report does not cover the domain; an older
 * one may), `out of date` (taken before the last rebuild, repair or retirement of the
 * domain's projections), `differences` (some of them, or some not listed), or `clean`.
 */
function reportState(domain, latest, projections) {
  if (latest === null) return { state: "none" };
  if (!latest || !latest.report.domains.includes(domain)) return { state: "unknown" };
  const report = latest.report;
  const changed = lastChange(projections, domain);
  if (changed !== null && micros(latest.checked_at) <= micros(changed)) {
    return { state: "out of date", checkedAt: latest.checked_at, changedAt: changed };
  }
  const names = projections.filter((p) => p.domain === domain).map((p) => p.name);
  const own = report.differences.filter((d) => d.projection.split("/").some((n) => names.includes(n))).length;
  const listedAll = report.differences.length === report.difference_count;
  if (own > 0 || (!listedAll && report.difference_count > 0)) return { state: "differences", count: own };
  return { state: "clean" };
}

/**
 * What the shadow window of a domain lacks for the switch gate, as the server decides it
 * (`cutover_engine::shadow::closes_gate`): nothing (`ok`), shadow reads (`not in shadow`,
 * none counted), `mismatches`, or reads (`too few`); with the reads wanted.
 */
function shadowState(shadowWindow) {
  if (!shadowWindow) return { state: "unknown", wanted: null };
  const wanted = shadowWindow.shadow ? shadowWindow.shadow.min_reads : shadowWindow.reads > 0 ? DEFAULT_MIN_READS : null;
  if (wanted === null) return { state: "not in shadow", wanted };
  if (shadowWindow.mismatches > 0) return { state: "mismatches", wanted };
  if (shadowWindow.reads < wanted) return { state: shadowWindow.shadow ? "too few" : "not in shadow", wanted };
  return { state: "ok", wanted };
}

/**
 * Where `domain` stands and what to do next: `stage` is the first step not done (`backfill`,
 * `verify`, `shadow`, `switch`, `retire legacy`) or `done`; `next` says why and what to do,
 * `command` is the CLI command that does it (null when the next step is to wait).
 */
function domainStage(domain, data) {
  const own = data.projections.filter((p) => p.domain === domain);
  const legacy = own.find((p) => p.shape === "legacy");
  const fresh = own.find((p) => p.shape === "new");
  const source = data.sources[domain];
  const gate = data.gates[domain]?.gate ?? { open: false, reason: "unknown" };
  const shadowWindow = data.shadows.find((w) => w.domain === domain);
  const report = reportState(domain, data.latest, data.projections);
  const shadow = shadowState(shadowWindow);
  const result = (stage, next, command) => ({ stage, next, command, report, shadow, shadowWindow });

  if (!fresh || fresh.state !== "live" || !fresh.inline_active) {
    const name = fresh ? fresh.name : `the new projection of ${domain}`;
    if (fresh?.rebuild_running) return result("backfill", `A rebuild of ${name} is running: wait for it to finish.`, null);
    return result("backfill", `Rebuild ${name}, the new projection, from the event log.`, `cutover rebuild ${name}`);
  }
  if (source === "new" && legacy && !legacy.inline_active) {
    return result("done", `Migrated: ${domain} reads from the new model and its legacy projection is retired.`, null);
  }
  // The latest report may not cover the domain while an older one does: then the gate says
  // whether that one counts. It checks the report before the shadow window, so a closed gate
  // with a window that is enough is closed by the report; otherwise its reason says which.
  const reportMet = report.state === "clean"
    || (report.state === "unknown"
      && (gate.open || (shadow.state !== "ok" && !/consistency report/.test(gate.reason))));
  if (!reportMet) {
    const why = {
      none: `No consistency report covers ${domain} yet.`,
      unknown: `No current, clean consistency report of ${domain}: ${gate.reason}.`,
      "out of date": `The latest consistency report of ${domain} is out of date: it was taken (${when(report.checkedAt)}) before the last rebuild, repair or retirement of its projections (${when(report.changedAt)}).`,
      differences: `The latest consistency report found differences in ${domain}: repair them (the report gives the command of each), then verify again.`,
    }[report.state];
    return result("verify", why, `cutover verify ${domain}`);
  }
  if (shadow.state !== "ok") {
    if (shadow.state === "mismatches") {
      return result("shadow", `${number(shadowWindow.mismatches)} of ${count(shadowWindow.reads, "shadow read", "shadow reads")} did not match (see Shadow reads): find the cause, repair or rebuild the projections (that starts a new window), verify, and shadow again.`, `cutover verify ${domain}`);
    }
    if (shadow.state === "too few") {
      return result("shadow", `Let reads come in: ${number(shadowWindow.reads)} of the ${number(shadow.wanted)} shadow reads wanted so far, none mismatched.`, null);
    }
    return result("shadow", `Put ${domain} in shadow, so that its reads are also answered from the other model and compared${shadowWindow && shadowWindow.reads > 0 ? ` (${number(shadowWindow.reads)} of the ${number(shadow.wanted)} reads wanted so far)` : ""}.`, `cutover shadow ${domain}`);
  }
  if (source === "legacy") {
    if (!gate.open) return result("switch", `The switch gate is closed: ${gate.reason}.`, null);
    return result("switch", `The switch gate is open: switch ${domain} to the new model.`, `cutover read-source ${domain} new`);
  }
  const name = legacy ? legacy.name : `the legacy projection of ${domain}`;
  return result("retire legacy", `${domain} reads from the new model: retire ${name}, the legacy projection.`, `cutover retire ${name}`);
}

function renderStages() {
  const data = page.data;
  if (!data.projections || !data.sources || !data.gates || !data.shadows || data.latest === undefined) return;
  const body = document.querySelector("#stages tbody");
  body.replaceChildren(...Object.keys(data.sources).map((domain) => {
    const where = domainStage(domain, data);
    const at = where.stage === "done" ? STEPS.length : STEPS.findIndex((s) => s.stage === where.stage);
    const steps = el("ol", { class: "steps", "aria-label": `Steps of ${domain}` }, ...STEPS.map((step, i) => {
      let label = step.label;
      if (step.stage === "verify" && where.report.state === "out of date") label += " (report out of date)";
      if (step.stage === "shadow" && where.shadowWindow && (where.shadowWindow.shadow || where.shadowWindow.reads > 0)) {
        label += where.shadow.wanted !== null
          ? ` (${number(where.shadowWindow.reads)} of ${count(where.shadow.wanted, "read", "reads")}, ${count(where.shadowWindow.mismatches, "mismatch", "mismatches")})`
          : ` (${count(where.shadowWindow.reads, "read", "reads")}, ${count(where.shadowWindow.mismatches, "mismatch", "mismatches")})`;
      }
      if (step.stage === "switch" && i < at) label += ` to ${data.sources[domain]}`;
      if (i < at) return el("li", { class: "step done" }, el("span", { "aria-hidden": "true" }, "✓ "), label, el("span", { class: "visually-hidden" }, " (done)"));
      if (i === at) return el("li", { class: "step current", "aria-current": "step" }, label);
      return el("li", { class: "step" }, label);
    }));
    return el("tr", { "data-domain": domain, "data-stage": where.stage },
      el("th", { scope: "row" }, domain),
      el("td", {}, steps),
      el("td", { class: "next" },
        el("p", {}, where.next),
        where.command ? el("p", {}, "Next command: ", el("code", { class: "command" }, where.command)) : null));
  }));
}

// ---- shadow reads

/** A model's answer to a shadow read, as kept: status and body (or the error's detail). */
function answerBlock(title, answer) {
  let text;
  if (answer && answer.truncated) text = `(cut: the first part of ${number(answer.bytes)} bytes)\n${answer.start}`;
  else if (answer && answer.body !== undefined) text = JSON.stringify(answer.body, null, 2);
  else text = answer && answer.detail !== undefined ? answer.detail : JSON.stringify(answer);
  return el("div", { class: "answer" },
    el("h4", {}, `${title}${answer && answer.status !== undefined ? `: status ${answer.status}` : ""}`),
    el("pre", {}, text));
}

function mismatchDetails(m) {
  const other = m.served_source === "legacy" ? "new" : "legacy";
  return el("details", { class: "mismatch" },
    el("summary", {}, `GET ${m.route} — ${m.path} — ${when(m.seen_at)}, served from ${m.served_source}`),
    el("div", { class: "answers" },
      answerBlock(`Served (${m.served_source})`, m.served),
      answerBlock(`Other model (${other})`, m.other)));
}

/** The card of `domain` in the shadow list, built on first use. */
function shadowCard(domain) {
  let card = page.shadowCards.get(domain);
  if (card) return card;
  const id = (what) => `shadow-${what}-${domain}`;
  card = {
    state: el("p", { class: "shadow-state" }),
    shadowWindow: null,
    counts: el("p", { class: "shadow-counts" }),
    fraction: el("input", { id: id("fraction"), name: "fraction", type: "number", min: "0.01", max: "100", step: "any", inputmode: "decimal" }),
    minReads: el("input", { id: id("min-reads"), name: "min_reads", type: "number", min: "0", step: "1", inputmode: "numeric" }),
    start: el("button", { type: "submit" }),
    stop: el("button", { type: "button", class: "danger", "aria-label": `Stop shadow reads of ${domain}`, onclick: () => stopShadow(domain) }, "Stop shadow reads"),
    mismatches: el("div", { class: "mismatches" }),
    settingsShown: undefined,
    mismatchesShown: undefined,
  };
  card.fraction.value = String(DEFAULT_FRACTION * 100);
  card.minReads.value = String(DEFAULT_MIN_READS);
  // The server checks the values, and its refusal is shown like every other.
  const form = el("form", { class: "shadow-form", novalidate: "" },
    el("label", { for: id("fraction") }, "Share of reads compared, %"), card.fraction,
    el("label", { for: id("min-reads") }, "Reads wanted"), card.minReads,
    card.start, card.stop);
  form.addEventListener("submit", (submitted) => {
    submitted.preventDefault();
    startShadow(domain, card);
  });
  card.item = el("li", { "data-domain": domain },
    el("h3", {}, domain), card.state, card.counts, form, card.mismatches);
  page.shadowCards.set(domain, card);
  return card;
}

function renderShadow(windows) {
  const list = document.getElementById("shadow");
  const items = windows.map((shadowWindow) => {
    const domain = shadowWindow.domain;
    const card = shadowCard(domain);
    card.shadowWindow = shadowWindow;
    const settings = shadowWindow.shadow;
    const shadow = shadowState(shadowWindow);
    card.item.dataset.inShadow = settings ? "yes" : "no";
    card.state.textContent = settings
      ? `In shadow since ${when(settings.started_at)}: ${percent(settings.fraction)} of reads compared; the switch gate wants ${number(settings.min_reads)} reads with no mismatch.`
      : `Not in shadow.${shadow.wanted !== null ? ` The switch gate wants ${number(shadow.wanted)} reads with no mismatch.` : ""}`;
    card.counts.dataset.reads = shadowWindow.reads;
    card.counts.dataset.mismatches = shadowWindow.mismatches;
    card.counts.textContent = `Since ${when(shadowWindow.since)} (the last rebuild, repair or retirement of its projections): ${count(shadowWindow.reads, "read", "reads")} compared, ${count(shadowWindow.mismatches, "mismatch", "mismatches")}.`;
    card.counts.classList.toggle("inconsistent", shadowWindow.mismatches > 0);
    const startText = settings ? "Change shadow settings" : "Start shadow reads";
    if (card.start.textContent !== startText) {
      card.start.textContent = startText;
      card.start.setAttribute("aria-label", settings ? `Change the shadow settings of ${domain}` : `Start shadow reads of ${domain}`);
    }
    card.stop.hidden = !settings;
    // The settings in force fill the fields when they change, unless someone is typing there.
    const shown = settings ? `${settings.fraction}/${settings.min_reads}` : "none";
    if (shown !== card.settingsShown && settings && ![card.fraction, card.minReads].includes(document.activeElement)) {
      card.fraction.value = String(Number((settings.fraction * 100).toFixed(4)));
      card.minReads.value = String(settings.min_reads);
    }
    card.settingsShown = shown;
    // Rebuilt only when the mismatches change, so that opened ones stay open.
    const mismatchesKey = JSON.stringify(shadowWindow.recent.map((m) => [m.seen_at, m.path]));
    if (mismatchesKey !== card.mismatchesShown) {
      card.mismatchesShown = mismatchesKey;
      card.mismatches.replaceChildren(...(shadowWindow.recent.length
        ? [el("h4", {}, shadowWindow.recent.length < shadowWindow.mismatches ? `The ${shadowWindow.recent.length} newest of ${number(shadowWindow.mismatches)} mismatches` : "Mismatches"), ...shadowWindow.recent.map(mismatchDetails)]
        : []));
    }
    return card.item;
  });
  if (items.length !== list.children.length || items.some((item, i) => list.children[i] !== item)) list.replaceChildren(...items);
}

const startFollow = (domain) =>
  act(
    `Follow ${domain} from the old system's database? Cutover's own commands on ${domain} are refused from then on: the old application is its writer until the handover.`,
    "POST", `/admin/follows/${encodeURIComponent(domain)}`, null,
    (followed) => `${followed.domain} is followed from the old ${followed.legacy_table}.`,
  );

const stopFollow = (domain) =>
  act(
    `Stop following ${domain}? Its slot is removed from the old database, and Cutover's commands on ${domain} are accepted again: if the old application still writes it, there are two writers.`,
    "DELETE", `/admin/follows/${encodeURIComponent(domain)}`, null,
    () => `${domain} is no longer followed.`,
  );

const handOver = (domain) =>
  act(
    `Hand ${domain} over to Cutover? The old tables refuse writes, everything they committed is applied, and every old row is compared with both models; only with no difference does Cutover write ${domain} from then on.`,
    "POST", `/admin/follows/${encodeURIComponent(domain)}/handover`, null,
    (report) => report.detail,
  );

/** One followed domain: where its old log stands, what it applied and refused, how far behind. */
function followItem(f) {
  const lag = f.lag_p99_seconds === null
    ? (f.late_changes > 0 ? `${count(f.late_changes, "change was", "changes were")} applied more than a minute after its old commit` : "no change streamed yet")
    : `99% of the streamed changes applied within ${f.lag_p99_seconds < 1 ? `${Math.round(f.lag_p99_seconds * 1000)} ms` : seconds(f.lag_p99_seconds)} of their old commit`;
  return el("li", { "data-domain": f.domain, "data-stopped": f.stopped ? "yes" : "no" },
    el("strong", {}, f.domain), ` follows the old ${f.legacy_table} (slot ${f.slot}): `,
    `${count(f.changes_applied, "change", "changes")} applied, `,
    el("span", { class: f.changes_refused > 0 ? "inconsistent" : "" }, `${number(f.changes_refused)} refused`),
    `; ${number(f.lag_bytes)} bytes of WAL behind; ${lag}; last look ${when(f.updated_at)}.`,
    f.changes_refused > 0
      ? el("p", { class: "muted" }, "The refused changes are kept with why: ",
        el("code", {}, `SELECT * FROM follow_refusals WHERE domain = '${f.domain}'`))
      : null,
    f.last_error
      ? el("p", { class: "gate closed", role: "status" },
        `The follower failed at ${when(f.last_error_at)} and tries again: ${f.last_error}`)
      : null,
    f.stopped
      ? el("p", { class: "gate closed", role: "status" },
        `No follower has looked at the old database since ${when(f.updated_at)}: it keeps WAL for slot ${f.slot} meanwhile. Run `,
        el("code", { class: "command" }, "cutover follow"), " again, or stop following with ",
        el("code", { class: "command" }, `cutover follow --drop ${f.domain}`), ".")
      : null,
    el("p", { class: "actions" },
      el("button", { type: "button", onclick: () => handOver(f.domain) }, `Hand ${f.domain} over`),
      el("button", { type: "button", class: "danger", onclick: () => stopFollow(f.domain) }, `Stop following ${f.domain}`)));
}

function renderFollowing(following) {
  const items = [
    ...following.follows.map(followItem),
    ...following.handovers.map((h) => el("li", { "data-domain": h.domain, "data-handed-over": "yes" },
      el("strong", {}, h.domain), ` was handed over from the old ${h.legacy_table} at ${when(h.handed_over_at)}: ${count(h.rows_compared, "old row", "old rows")} compared, no difference; Cutover writes it.`)),
  ];
  document.getElementById("following").replaceChildren(...(items.length
    ? items
    : [el("li", { class: "muted" }, "No domain is followed from an old system.")]));
  // The domains neither followed nor handed over can be followed (by a server started with
  // --legacy-url).
  const taken = new Set([...following.follows, ...following.handovers].map((f) => f.domain));
  document.getElementById("follow-start").replaceChildren(...following.followable
    .filter((domain) => !taken.has(domain))
    .map((domain) => el("button", { type: "button", onclick: () => startFollow(domain) }, `Follow ${domain}`)));
}

// A report taken before the last rebuild, repair or retirement of a domain's projections says
// nothing of them as they are now: it is marked out of date for that domain, and wholly out of
// date (instead of shown as current) when that is so for every domain it covers.
function renderConsistency() {
  const latest = page.data.latest;
  const box = document.getElementById("consistency");
  if (!latest) {
    box.replaceChildren(el("p", { class: "muted" }, "No verification has run yet."));
    return;
  }
  const report = latest.report;
  const projections = page.data.projections || [];
  const outdated = report.domains.filter((domain) => reportState(domain, latest, projections).state === "out of date");
  const allOutdated = outdated.length > 0 && outdated.length === report.domains.length;
  box.dataset.outdated = allOutdated ? "all" : outdated.length ? "some" : "none";
  const result = latest.consistent ? "Consistent" : `${number(report.difference_count)} differences`;
  const parts = [
    el("p", {},
      allOutdated
        ? el("span", { class: "outdated" }, `Out of date (${latest.consistent ? "consistent" : `${number(report.difference_count)} differences`} when taken)`)
        : el("span", { class: latest.consistent ? "consistent" : "inconsistent" }, result),
      ` — ${number(report.rows_compared)} rows compared in ${report.domains.join(", ")}, checked ${when(latest.checked_at)}`),
  ];
  if (outdated.length) {
    const changes = outdated.map((domain) => `${domain} ${when(lastChange(projections, domain))}`).join(", ");
    parts.push(el("p", { class: "outdated-note" },
      el("strong", {}, "Out of date"),
      ` for ${outdated.join(", ")}: taken before the last rebuild, repair or retirement of their projections (${changes}). It says nothing of them as they are now: run a verification again.`));
  }
  if (report.skipped.length) parts.push(el("p", { class: "muted" }, `Skipped: ${report.skipped.join("; ")}`));
  if (report.differences.length) {
    parts.push(el("table", { id: "differences" },
      el("caption", {}, `The first ${report.differences.length} differences${allOutdated ? " (out of date)" : ""}`),
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
    page.data.latest = await api("GET", "/admin/consistency/latest");
  } catch (error) {
    if (error.status !== 404) return;
    page.data.latest = null;
  }
  renderConsistency();
  renderStages();
}

async function refresh() {
  const connection = document.getElementById("connection");
  try {
    const [projections, sources, activity, shadows, following] = await Promise.all([
      api("GET", "/admin/projections"),
      api("GET", "/admin/read-sources"),
      api("GET", "/admin/activity"),
      api("GET", "/admin/shadow"),
      api("GET", "/admin/follows"),
    ]);
    const gates = Object.fromEntries(await Promise.all(Object.keys(sources).map(async (domain) =>
      [domain, await api("GET", `/admin/read-sources/${encodeURIComponent(domain)}/gate`)])));
    Object.assign(page.data, { projections, sources, gates, shadows });
    renderProjections(projections);
    renderSources(sources, gates);
    renderShadow(shadows);
    renderFollowing(following);
    renderActivity(activity);
    renderStages();
    if (page.data.latest !== undefined) renderConsistency();
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
