// The migration console and the API docs in Debian's headless Chromium, driven by
// playwright-core, against a real cutover-api on a real Postgres (started by
// scripts/browser-test, which passes where it is in the environment). Screenshots go to
// $CUTOVER_ARTIFACTS.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const base = process.env.CUTOVER_URL;
const readToken = process.env.CUTOVER_READ_TOKEN;
const writeToken = process.env.CUTOVER_WRITE_TOKEN;
const adminToken = process.env.CUTOVER_ADMIN_TOKEN;
const artifacts = process.env.CUTOVER_ARTIFACTS || "target/browser-artifacts";
assert.ok(base && readToken && writeToken && adminToken, "run through scripts/browser-test");
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
  await page.waitForTimeout(2500);
  assert.match(await page.locator('#projections tr[data-projection="batch_state"]').innerText(), /live/);
});

test("a rebuild shows a live progress bar that reaches 100%", async () => {
  await act("Rebuild every projection");
  await page.getByRole("alert").getByText("Rebuild of").waitFor();
  const bar = page.locator('progress[data-projection="student_competencies"]');
  // Running: the bar moves with events done of total, the rate and an ETA.
  await page.waitForFunction(() => [...document.querySelectorAll('progress[data-status="running"]')]
    .some((bar) => bar.value > 0 && bar.value < bar.max));
  assert.match(await page.locator(".progress-text").first().innerText(), /of [\d,]+ events \(\d+%\), [\d,]+ events\/s, ETA \d/);
  await shot("rebuild-running");
  await page.locator('progress[data-projection="student_competencies"][data-status="succeeded"]')
    .waitFor({ timeout: 120_000 });
  const [value, max] = await bar.evaluate((p) => [p.value, p.max]);
  assert.equal(value, max);
  assert.match(await page.locator('tr.progress-row:has(progress[data-projection="student_competencies"])').innerText(), /100% — done/);
  await shot("rebuild-done");
});

test("the switch gate stays closed until a verification, and a forced switch says so", async () => {
  const gate = (domain, state) => page.locator(`#read-sources li[data-domain="${domain}"] [data-gate="${state}"]`);
  await gate("collections", "closed").waitFor();
  assert.match(await gate("collections", "closed").innerText(), /cutover verify collections/);
  await act("Force batches to new");
  await page.getByRole("alert").getByText("batches now reads from new (forced past the gate)").waitFor();
  await page.locator('#read-sources li[data-domain="batches"]', { hasText: "forced past the gate" }).waitFor();
  await act("Run verification");
  await page.getByRole("alert").getByText("Verification found no difference").waitFor({ timeout: 120_000 });
  await gate("collections", "open").waitFor();
});

test("switching a read source takes effect and shows", async () => {
  await act("Switch collections to new");
  await page.getByRole("alert").getByText("collections now reads from new").waitFor();
  await page.locator('#read-sources li[data-domain="collections"] .source', { hasText: "new" }).waitFor();
  const sources = await (await fetch(`${base}/admin/read-sources`, {
    headers: { Authorization: `Bearer ${readToken}` },
  })).json();
  assert.equal(sources.collections, "new");
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
