// The migration console and the API docs in Debian's headless Chromium, driven by
// playwright-core, against a real cutover-api on a real Postgres (started by
// scripts/browser-test, which passes where it is in the environment). Screenshots go to
// $CUTOVER_ARTIFACTS.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { chromium } from "playwright-core";

const base = process.env.CUTOVER_URL;
const readToken = process.env.CUTOVER_READ_TOKEN;
const writeToken = process.env.CUTOVER_WRITE_TOKEN;
const adminToken = process.env.CUTOVER_ADMIN_TOKEN;
// The server's database, for what only the CLI writes (following the old system).
const databaseUrl = process.env.CUTOVER_DATABASE_URL;
const artifacts = process.env.CUTOVER_ARTIFACTS || "target/browser-artifacts";
assert.ok(base && readToken && writeToken && adminToken && databaseUrl, "run through scripts/browser-test");

/** Runs SQL on the server's database with psql. */
const sql = (statement) => execFileSync("psql", ["-X", "-q", "-v", "ON_ERROR_STOP=1", databaseUrl, "-c", statement]);
mkdirSync(artifacts, { recursive: true });

let browser;
let page;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 1400 } });
  page.setDefaultTimeout(30_000);
});

after(async () => {
  await browser?.close();
});

const shot = (name) => page.screenshot({ path: `${artifacts}/${name}.png`, fullPage: true });

async function useToken(token) {
  await page.getByLabel("Access token").fill(token);
  await page.getByLabel("Access token").press("Enter");
}

/**
 * Clicks an action's button until its confirmation dialog opens (the console re-renders its
 * tables every refresh, and a click that lands on a button just replaced is lost).
 */
async function openDialog(name) {
  const dialog = page.getByRole("dialog");
  for (let attempt = 1; ; attempt++) {
    await page.getByRole("button", { name, exact: true }).click();
    try {
      await dialog.waitFor({ timeout: 2_000 });
      return dialog;
    } catch (error) {
      if (attempt === 5) throw error;
    }
  }
}

/** Clicks an action's button, then the confirmation dialog's Confirm. */
async function act(name) {
  const dialog = await openDialog(name);
  await dialog.getByRole("button", { name: "Confirm" }).click();
}

const stageRow = (domain, stage) =>
  page.locator(`#stages tr[data-domain="${domain}"]${stage ? `[data-stage="${stage}"]` : ""}`);

/**
 * Waits until the console shows `domain` at `stage`, checks the next command it shows (none
 * when `command` is null), and gives the row's text.
 */
async function expectStage(domain, stage, command) {
  const row = stageRow(domain, stage);
  await row.waitFor();
  const commands = await row.locator("code.command").allTextContents();
  assert.deepEqual(commands, command ? [command] : [], `the next command of ${domain} at ${stage}`);
  return row.innerText();
}

const gate = (domain, state) => page.locator(`#read-sources li[data-domain="${domain}"] [data-gate="${state}"]`);
const shadowCard = (domain) => page.locator(`#shadow li[data-domain="${domain}"]`);

async function shadowWindows() {
  const response = await fetch(`${base}/admin/shadow`, { headers: { Authorization: `Bearer ${readToken}` } });
  assert.equal(response.status, 200);
  return Object.fromEntries((await response.json()).map((w) => [w.domain, w]));
}

test("the console asks for a token, then shows every projection and read source", async () => {
  await page.goto(`${base}/console`);
  await page.getByText("type a token to watch").waitFor();
  await useToken(readToken);
  const rows = page.locator("#projections tbody tr[data-projection]");
  await rows.nth(5).waitFor();
  assert.equal(await rows.count(), 6);
  const names = await page.locator("#projections tbody th").allTextContents();
  for (const name of ["collections", "project_collections", "batch_state", "batch_completions",
    "legacy_competencies", "student_competencies"]) {
    assert.ok(names.includes(name), `${name} is listed in ${names}`);
  }
  const collections = page.locator('#projections tr[data-projection="collections"]');
  assert.match(await collections.innerText(), /live/);
  await page.locator('#read-sources li[data-domain="collections"]').waitFor();
  assert.match(await page.locator("#read-sources").innerText(), /collections\s*reads from legacy/);
  // Backfilled (seeded and rebuilt), never verified: the next step is the verification.
  const stage = await expectStage("collections", "verify", "cutover verify collections");
  assert.match(stage, /No consistency report covers collections yet/);
  assert.match(await stageRow("collections").locator("li.done").innerText(), /Backfilled/);
  assert.match(await stageRow("collections").locator('li[aria-current="step"]').innerText(), /^Verified/);
  for (const domain of ["batches", "competencies"]) await expectStage(domain, "verify", `cutover verify ${domain}`);
  assert.match(await shadowCard("collections").innerText(), /Not in shadow/);
});

test("a refused action shows the server's problem message and changes nothing", async () => {
  // A read token may watch but not act: the server answers 403 with problem+json.
  await act("Retire batch_state");
  const message = page.getByRole("alert");
  await message.getByText("403").waitFor();
  assert.match(await message.innerText(), /needs a token with scope admin/);
  await shot("refused-action");
  assert.match(await page.locator('#projections tr[data-projection="batch_state"]').innerText(), /live/);
});

test("cancelling the confirmation sends nothing", async () => {
  await useToken(adminToken);
  const dialog = await openDialog("Retire batch_state");
  await dialog.getByRole("button", { name: "Cancel", exact: true }).click();
  const shadow = await openDialog("Start shadow reads of competencies");
  assert.match(await shadow.innerText(), /Put competencies in shadow\?/);
  await shadow.getByRole("button", { name: "Cancel", exact: true }).click();
  await page.waitForTimeout(2500);
  assert.match(await page.locator('#projections tr[data-projection="batch_state"]').innerText(), /live/);
  assert.equal((await shadowWindows()).competencies.shadow, null);
  assert.equal(await shadowCard("competencies").getAttribute("data-in-shadow"), "no");
});

test("a refused shadow start shows the server's problem message", async () => {
  const fraction = shadowCard("competencies").getByLabel("Share of reads compared, %");
  await fraction.fill("0");
  await act("Start shadow reads of competencies");
  const message = page.getByRole("alert");
  await message.getByText("fraction must be above 0").waitFor();
  assert.match(await message.innerText(), /^Refused\s*422 /);
  assert.equal((await shadowWindows()).competencies.shadow, null);
  await fraction.fill("100");
});

test("a clean verification moves each domain on to its shadow reads", async () => {
  await act("Run verification");
  await page.getByRole("alert").getByText("Verification found no difference").waitFor({ timeout: 120_000 });
  await page.locator('#consistency[data-outdated="none"] .consistent').waitFor();
  const stage = await expectStage("collections", "shadow", "cutover shadow collections");
  assert.match(stage, /Put collections in shadow/);
  const done = await stageRow("collections").locator("li.done").allInnerTexts();
  assert.deepEqual(done.map((step) => step.replace(/\s+/g, " ")), ["✓ Backfilled (done)", "✓ Verified (done)"]);
  assert.doesNotMatch(await page.locator("#consistency").innerText(), /out of date/i);
});

test("a rebuild shows a live progress bar that reaches 100%", async () => {
  await act("Rebuild every projection");
  await page.getByRole("alert").getByText("Rebuild of").waitFor();
  const bar = page.locator('progress[data-projection="student_competencies"]');
  // Running: the bar moves with events done of total, the rate and an ETA.
  await page.waitForFunction(() => [...document.querySelectorAll('progress[data-status="running"]')]
    .some((bar) => bar.value > 0 && bar.value < bar.max));
  // (Of a bar that has moved: the first one shown may not have yet.)
  await page.waitForFunction(() => [...document.querySelectorAll(".progress-text")]
    .some((text) => /of [\d,]+ events \(\d+%\), [\d,]+ events\/s, ETA \d/.test(text.innerText)));
  // While its new projection is rebuilt, a domain is back at the backfill, with nothing to run.
  assert.match(await expectStage("collections", "backfill", null), /A rebuild of project_collections is running: wait for it to finish/);
  await shot("rebuild-running");
  await page.locator('progress[data-projection="student_competencies"][data-status="succeeded"]')
    .waitFor({ timeout: 120_000 });
  const [value, max] = await bar.evaluate((p) => [p.value, p.max]);
  assert.equal(value, max);
  assert.match(await page.locator('tr.progress-row:has(progress[data-projection="student_competencies"])').innerText(), /100% — done/);
  await shot("rebuild-done");
});

test("a consistency report taken before the rebuild shows as out of date", async () => {
  await page.locator('#consistency[data-outdated="all"]').waitFor();
  const text = await page.locator("#consistency").innerText();
  assert.match(text, /^Out of date \(consistent when taken\)/);
  assert.match(text, /Out of date for [a-z, ]*collections[a-z, ]*: taken before the last rebuild, repair or retirement of their projections/);
  assert.equal(await page.locator("#consistency .consistent").count(), 0, "not shown as current");
  const stage = await expectStage("collections", "verify", "cutover verify collections");
  assert.match(stage, /Verified \(report out of date\)/);
  assert.match(stage, /The latest consistency report of collections is out of date/);
  await shot("report-out-of-date");
});

test("the switch gate stays closed until a verification and shadow reads, and a forced switch says so", async () => {
  await gate("collections", "closed").waitFor();
  assert.match(await gate("collections", "closed").innerText(), /cutover verify collections/);
  await act("Force batches to new");
  await page.getByRole("alert").getByText("batches now reads from new (forced past the gate)").waitFor();
  await page.locator('#read-sources li[data-domain="batches"]', { hasText: "forced past the gate" }).waitFor();
  await act("Run verification");
  await page.getByRole("alert").getByText("Verification found no difference").waitFor({ timeout: 120_000 });
  // A clean, current report, but no shadow reads since the rebuild: still closed.
  await page.locator('#consistency[data-outdated="none"] .consistent').waitFor();
  await page.locator('#read-sources li[data-domain="collections"] [data-gate="closed"]', { hasText: "cutover shadow collections" }).waitFor();
  await expectStage("collections", "shadow", "cutover shadow collections");
  // The forced switch skipped the shadow reads: batches still needs them.
  await expectStage("batches", "shadow", "cutover shadow batches");
});

test("shadow reads started from the console are counted and open the gate", async () => {
  const card = shadowCard("collections");
  await card.getByLabel("Reads wanted").fill("5");
  await act("Start shadow reads of collections");
  await page.getByRole("alert").getByText("collections is in shadow: 100% of its reads are compared, and the switch gate wants 5 with no mismatch.").waitFor();
  await page.locator('#shadow li[data-domain="collections"][data-in-shadow="yes"]').waitFor();
  assert.match(await card.locator(".shadow-state").innerText(), /^In shadow since .+: 100% of reads compared; the switch gate wants 5 reads with no mismatch\.$/);
  assert.match(await expectStage("collections", "shadow", null), /Let reads come in: 0 of the 5 shadow reads wanted so far/);
  const settings = (await shadowWindows()).collections.shadow;
  assert.deepEqual([settings.fraction, settings.min_reads], [1, 5]);

  // Five GETs of the old API's route, each answered from legacy and compared with new.
  const project = "00000000-0000-4000-8000-0000000000a1";
  const created = await fetch(`${base}/projects/${project}/collections`, {
    method: "POST",
    headers: { Authorization: `Bearer ${writeToken}`, "Content-Type": "application/json" },
    body: JSON.stringify({ collection_name: "Read in shadow" }),
  });
  assert.equal(created.status, 201);
  const id = (await created.json()).collection.collection_id;
  for (let i = 0; i < 5; i++) {
    const read = await fetch(`${base}/projects/${project}/collections/${id}`, { headers: { Authorization: `Bearer ${readToken}` } });
    assert.equal(read.status, 200);
    assert.equal((await read.json()).read_source, "legacy");
  }
  // Counts reach the database within a second or so, and the console at its next refresh.
  await card.locator('.shadow-counts[data-reads="5"]').waitFor({ timeout: 15_000 });
  assert.match(await card.locator(".shadow-counts").innerText(), /: 5 reads compared, 0 mismatches\.$/);
  assert.equal(await card.locator("details.mismatch").count(), 0);
  const stage = await expectStage("collections", "switch", "cutover read-source collections new");
  assert.match(stage, /Shadow reads \(5 of 5 reads, 0 mismatches\)/);
  await gate("collections", "open").waitFor();
  assert.doesNotMatch(await page.locator('#read-sources li[data-domain="collections"]').innerText(), /Last switch/, "starting shadow reads is no switch");
  await shot("shadow-reads");
});

test("switching a read source takes effect and shows", async () => {
  await act("Switch collections to new");
  await page.getByRole("alert").getByText("collections now reads from new").waitFor();
  await page.locator('#read-sources li[data-domain="collections"] .source', { hasText: "new" }).waitFor();
  const sources = await (await fetch(`${base}/admin/read-sources`, {
    headers: { Authorization: `Bearer ${readToken}` },
  })).json();
  assert.equal(sources.collections, "new");
  await expectStage("collections", "retire legacy", "cutover retire collections");
  assert.match(await page.locator('#read-sources li[data-domain="collections"]').innerText(), /Last switch: to new by /);
});

test("retiring the projection a domain reads from is refused with the server's reason", async () => {
  await act("Retire project_collections");
  const message = page.getByRole("alert");
  await message.getByText("409").waitFor();
  assert.match(await message.innerText(), /read source/);
});

test("a verification's report appears with its row count", async () => {
  await act("Run verification");
  await page.getByRole("alert").getByText("Verification found no difference").waitFor({ timeout: 120_000 });
  await page.locator("#consistency .consistent").waitFor();
  assert.match(await page.locator("#consistency").innerText(), /rows compared/);
  assert.equal(await page.locator("#consistency").getAttribute("data-outdated"), "none");
});

test("new events arrive live from the feed", async () => {
  const project = "00000000-0000-4000-8000-0000000000b1";
  const response = await fetch(`${base}/projects/${project}/collections`, {
    method: "POST",
    headers: { Authorization: `Bearer ${writeToken}`, "Content-Type": "application/json" },
    body: JSON.stringify({ collection_name: "Seen live" }),
  });
  assert.equal(response.status, 201);
  const created = await response.json();
  await page.locator("#events tbody tr", { hasText: created.collection.collection_id }).waitFor();
  assert.match(await page.locator("#events tbody tr").first().innerText(), /CollectionCreated/);
  // The command shows in the activity chart's history within a few samples.
  const shown = () => page.locator("#commands-now").textContent();
  for (let i = 0; i < 30 && /^0\.0 now, peak 0\.0$/.test(await shown()); i++) await page.waitForTimeout(500);
  assert.doesNotMatch(await shown(), /^0\.0 now, peak 0\.0$/, "the command shows in the chart");
  await shot("console");
});

test("shadow reads can be stopped, and the latest mismatches show both answers, collapsed", async () => {
  await act("Stop shadow reads of collections");
  await page.getByRole("alert").getByText("collections is out of shadow.").waitFor();
  await page.locator('#shadow li[data-domain="collections"][data-in-shadow="no"]').waitFor();
  assert.equal((await shadowWindows()).collections.shadow, null);

  // The two models agree on this data, so the server's answer is given a mismatch on its way
  // to the page: this checks how the console shows one.
  const mismatch = {
    route: "/students/{student_id}/competencies",
    path: "/students/s-shadow-test/competencies?limit=5",
    seen_at: new Date().toISOString(),
    served_source: "legacy",
    served: { status: 200, body: { items: [{ subject: "math", skill_id: "s1", level: 3 }], next: null } },
    other: { status: 422, detail: "limit must be at least 10" },
  };
  await page.route("**/admin/shadow", async (route) => {
    const response = await route.fetch();
    const windows = await response.json();
    for (const window of windows) {
      if (window.domain === "competencies") Object.assign(window, { reads: 3, mismatches: 1, recent: [mismatch] });
    }
    await route.fulfill({ response, json: windows });
  });
  try {
    const details = shadowCard("competencies").locator("details.mismatch");
    await details.waitFor();
    assert.equal(await details.evaluate((d) => d.open), false, "collapsed");
    assert.equal(await details.locator("summary").innerText(), `GET /students/{student_id}/competencies — /students/s-shadow-test/competencies?limit=5 — ${await page.evaluate((t) => new Date(t).toLocaleString(), mismatch.seen_at)}, served from legacy`);
    assert.equal(await details.locator("pre").first().isVisible(), false);
    await details.locator("summary").focus();
    await page.keyboard.press("Enter");
    await page.waitForTimeout(2500); // a refresh or more: it stays open
    assert.equal(await details.evaluate((d) => d.open), true);
    const answers = await details.innerText();
    assert.match(answers, /Served \(legacy\): status 200[\s\S]*"level": 3/);
    assert.match(answers, /Other model \(new\): status 422\s*limit must be at least 10/);
    assert.match(await shadowCard("competencies").locator(".shadow-counts").innerText(), /3 reads compared, 1 mismatch\./);
    assert.match(await expectStage("competencies", "shadow", "cutover verify competencies"), /1 of 3 shadow reads did not match/);
    await shot("shadow-mismatch");
  } finally {
    await page.unroute("**/admin/shadow");
  }
});

test("a followed domain shows its progress, a stopped follower and its actions, and a handover shows", async () => {
  const following = page.locator("#following");
  await following.getByText("No domain is followed from an old system.").waitFor();
  // As `cutover follow` leaves a domain whose follower stopped two minutes ago, and as
  // `cutover handover` records one (the follower is the CLI's: the console shows its rows).
  sql(`INSERT INTO follows (domain, slot, publication, legacy_table, aggregate_type, snapshot, lsn,
                            applied, changes_applied, changes_refused, lag_bytes, lag_histogram,
                            updated_at, last_error, last_error_at)
       VALUES ('competencies', 'cutover_follow_competencies', 'cutover_follow', 'public.attempts',
               'student_subskill', '1:1:', '0/16B3748', 1, 1234, 2, 4096,
               '{0,0,0,0,990,10,0,0,0,0,0,0,0,0,0}', now() - interval '2 minutes',
               'the old database: connection refused', now() - interval '2 minutes');
       INSERT INTO handovers (domain, legacy_table, lsn, rows_compared)
       VALUES ('collections', 'public.collections', '0/16B3748', 5000)`);
  try {
    const followed = following.locator('li[data-domain="competencies"]');
    await followed.waitFor();
    const text = await followed.innerText();
    assert.match(text, /competencies follows the old public\.attempts \(slot cutover_follow_competencies\): 1,234 changes applied, 2 refused; 4,096 bytes of WAL behind; 99% of the streamed changes applied within 100 ms/);
    assert.match(text, /SELECT \* FROM follow_refusals WHERE domain = 'competencies'/);
    assert.match(text, /No follower has looked at the old database since/);
    assert.match(text, /The follower failed at .* and tries again: the old database: connection refused/);
    assert.equal(await followed.getAttribute("data-stopped"), "yes");
    assert.match(await following.locator('li[data-handed-over="yes"]').innerText(),
      /collections was handed over from the old public\.collections at .*: 5,000 old rows compared, no difference/);
    await shot("following");
    // A domain neither followed nor handed over can be followed; this server follows no old
    // database (no --legacy-url), which a handover from the console says, changing nothing.
    await page.getByRole("button", { name: "Follow batches", exact: true }).waitFor();
    assert.equal(await page.getByRole("button", { name: "Follow collections", exact: true }).count(), 0);
    await act("Hand competencies over");
    const message = page.getByRole("alert");
    await message.getByText("409").waitFor();
    assert.match(await message.innerText(), /this server follows no old database/);
    await followed.waitFor();
  } finally {
    sql("DELETE FROM follows WHERE domain = 'competencies'; DELETE FROM handovers");
  }
  await following.getByText("No domain is followed from an old system.").waitFor();
});

test("the console is usable from the keyboard", async () => {
  await page.getByLabel("Access token").focus();
  await page.keyboard.press("Tab"); // the Use token button
  await page.keyboard.press("Tab"); // the first action button
  const focused = await page.evaluate(() => document.activeElement?.getAttribute("aria-label") || document.activeElement?.textContent);
  assert.match(focused, /^Rebuild /);
  await page.keyboard.press("Enter");
  await page.getByRole("dialog").waitFor();
  await page.keyboard.press("Escape");
  await page.getByRole("dialog").waitFor({ state: "hidden" });
});

test("the API docs render the OpenAPI description without a network", async () => {
  const requests = [];
  page.on("request", (request) => requests.push(request.url()));
  await page.goto(`${base}/docs`);
  await page.locator(".swagger-ui .opblock").first().waitFor();
  assert.ok(await page.locator(".swagger-ui .opblock").count() > 20);
  await shot("docs");
  const elsewhere = requests.filter((url) => !url.startsWith(base));
  assert.deepEqual(elsewhere, [], "every request stays on this server");
});
