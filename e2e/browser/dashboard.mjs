// Drives the /ui dashboard in Debian's headless Chromium while a simulated
// campaign runs. Started by e2e/tests/ui_dashboard.rs, which runs the stack
// and checks the database afterwards; this script only does what a person
// at the browser would do, and fails (exit 1) when the page does not show it.
//
// Environment: TOCSIN_UI_URL (webhook base URL), TOCSIN_UI_KEY (API key),
// TOCSIN_UI_CAMPAIGN, TOCSIN_UI_SCREENSHOT_DIR. Prints one JSON line of
// timings (epoch ms) on success.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const CHROMIUM = "/usr/bin/chromium";
const { TOCSIN_UI_URL: base, TOCSIN_UI_KEY: key, TOCSIN_UI_CAMPAIGN: campaign, TOCSIN_UI_SCREENSHOT_DIR: shots } =
  process.env;
if (!base || !key || !campaign || !shots) {
  console.error("dashboard.mjs: set TOCSIN_UI_URL, TOCSIN_UI_KEY, TOCSIN_UI_CAMPAIGN and TOCSIN_UI_SCREENSHOT_DIR");
  process.exit(2);
}
if (!existsSync(CHROMIUM)) {
  console.error(`dashboard.mjs: ${CHROMIUM} is missing; install it with deploy/local/browser-deps.sh (Debian package chromium)`);
  process.exit(1);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const step = (s) => console.error(`[dashboard.mjs] ${s}`);
const profile = mkdtempSync(join(tmpdir(), "tocsin-chromium-"));
mkdirSync(shots, { recursive: true });

// A fresh profile each run (Playwright takes it as the persistent context's
// directory rather than as --user-data-dir).
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
  viewport: { width: 1280, height: 900 },
});
let failed = false;
const page = await context.newPage();
const problems = [];
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("console", (m) => {
  if (m.type() === "error") problems.push(`console error: ${m.text()} (${m.location().url})`);
});
page.on("response", (r) => {
  if (r.status() >= 400) problems.push(`HTTP ${r.status()} for ${r.request().method()} ${r.url()}`);
});
page.on("dialog", (d) => d.accept());
// The dashboard must fetch nothing from anywhere but the service.
page.on("request", (r) => {
  if (!r.url().startsWith(base)) problems.push(`external request: ${r.url()}`);
});

async function number(selector) {
  const text = await page.textContent(selector);
  const n = Number.parseInt(text, 10);
  if (Number.isNaN(n)) throw new Error(`${selector} shows ${JSON.stringify(text)}, not a number`);
  return n;
}

// Waits until `read()` returns more than `than`, or fails after `ms`.
async function risesAbove(what, read, than, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const now = await read();
    if (now > than) return now;
    if (Date.now() > deadline) throw new Error(`${what} stayed at ${now} for ${ms / 1000} s (expected it to rise above ${than})`);
    await sleep(200);
  }
}

const timings = {};
try {
  step("campaigns page: enter the API key once");
  await page.goto(`${base}/ui`);
  await page.waitForSelector("#login:not([hidden])");
  await page.fill("#key", key);
  await page.click("#login-form button[type=submit]");
  const card = `.card[data-campaign="${campaign}"]`;
  await page.waitForSelector(card);

  step("campaigns page: progress advances without a reload");
  await page.evaluate(() => {
    window.__tocsinNoReload = true;
  });
  const finished = () => page.$eval(`${card} [data-finished]`, (e) => Number(e.dataset.finished));
  const f0 = await finished();
  await risesAbove("finished calls on the campaigns page", finished, f0, 30000);
  if (!(await page.evaluate(() => window.__tocsinNoReload === true))) throw new Error("the page reloaded");

  step("campaigns page: the provider accounts' health, shared by the workers");
  await page.waitForSelector('#accounts-table tr[data-account="vonage:default"] .pill.closed');
  const accounts = await page.$$eval("#accounts-table tbody tr", (rows) => rows.map((r) => r.dataset.account));
  for (const a of ["vonage:default", "twilio:default", "telnyx:default"]) {
    if (!accounts.includes(a)) throw new Error(`account ${a} is not in the accounts table (${accounts})`);
  }
  await page.screenshot({ path: join(shots, "campaigns.png"), fullPage: true });

  step("campaign page: live counters, calls table");
  await page.click(`${card} h2 a`);
  await page.waitForSelector("#campaign:not([hidden])");
  await page.waitForSelector("#stream-state.live");
  await page.waitForSelector("#calls tbody tr");
  // The charts draw from the campaign's series (uPlot, served by the service).
  await page.waitForSelector("#chart-rate canvas", { timeout: 15000 });
  await page.waitForSelector("#chart-outcomes canvas", { timeout: 15000 });
  await page.evaluate(() => {
    window.__tocsinNoReload = true;
  });
  const started = () => number("#count-started");
  const s0 = await started();
  await risesAbove("dialled calls on the campaign page", started, s0, 20000);

  step("pause: dialling stops");
  await page.click("#pause");
  await page.waitForFunction(() => document.querySelector("#campaign-status").textContent === "paused");
  timings.paused_at = Date.now();
  // Calls already claimed may still go out in the first moment; then none.
  await sleep(2500);
  timings.window_from = Date.now();
  const p1 = await started();
  await sleep(5000);
  const p2 = await started();
  timings.window_to = Date.now();
  if (p2 !== p1) throw new Error(`dialled calls rose from ${p1} to ${p2} while the campaign was paused`);
  timings.dialled_while_paused = p1;
  if (!(await page.evaluate(() => window.__tocsinNoReload === true))) throw new Error("the page reloaded");

  step("timeline of a finished call");
  const row = await page.waitForSelector('#calls tbody tr:has(td.state:text-is("completed"))', { timeout: 20000 });
  await row.click();
  await page.waitForSelector("#timeline-body li");
  const timeline = await page.textContent("#timeline-body");
  if (!timeline.includes("completed")) throw new Error(`the timeline does not show the completed state: ${timeline}`);
  await page.screenshot({ path: join(shots, "dashboard.png") });

  step("resume: dialling starts again");
  await page.click("#resume");
  await page.waitForFunction(() => document.querySelector("#campaign-status").textContent === "active");
  timings.resumed_at = Date.now();
  timings.dialled_after_resume = await risesAbove("dialled calls after resume", started, p2, 30000);

  step("cancel");
  await page.click("#cancel");
  await page.waitForFunction(() => document.querySelector("#campaign-status").textContent === "cancelled");
  await page.waitForSelector("#cancel:disabled");
  timings.cancelled_at = Date.now();

  step("new broadcast from the page: upload a CSV with two bad lines");
  await page.goto(`${base}/ui/new`);
  await page.waitForSelector("#new:not([hidden])");
  const upload = join(profile, "launch.csv");
  writeFileSync(
    upload,
    "number,name\n+14155557001,Ann\n+14155557002,Bo\nnot a number,Xi\n+14155557003,Zoë\n+1 415 555 7001,Ann again\n",
  );
  await page.fill("#f-name", "ui-launch");
  await page.setInputFiles("#contacts-file", upload);
  await page.click("#check-contacts");
  await page.waitForSelector("#contacts-report table.rejected tbody tr");
  const rejectedLines = await page.$$eval("#contacts-report table.rejected tbody tr", (rows) => rows.map((r) => r.textContent));
  if (rejectedLines.length !== 2) throw new Error(`expected 2 rejected lines listed, got ${JSON.stringify(rejectedLines)}`);
  if (!rejectedLines[0].startsWith("4") || !rejectedLines[1].startsWith("6")) {
    throw new Error(`the rejected lines are not lines 4 and 6: ${JSON.stringify(rejectedLines)}`);
  }
  await page.fill("#f-message", "Hello {{name|there}}, this is a test.");
  await page.fill("#f-from", "+14155550100");
  await page.click("#preview");
  await page.waitForSelector("#preview-report p.ok");
  const preview = await page.textContent("#preview-report");
  if (!preview.includes("3 people would be called") || !preview.includes("hears: Hello Ann, this is a test.")) {
    throw new Error(`the preview says: ${preview}`);
  }
  await page.screenshot({ path: join(shots, "launch.png"), fullPage: true });
  step("launch: confirm, then watch it on its page");
  await page.click("#launch");
  await page.waitForURL(/\/ui\/campaigns\/ui-launch$/, { timeout: 15000 });
  await page.waitForSelector("#chart-rate canvas", { timeout: 15000 });
  await page.waitForFunction(
    () => document.querySelector("#campaign-progress [data-finished]")?.getAttribute("data-finished") === "3",
    null,
    { timeout: 60000 },
  );
  // The callees confirmed (the form asks by default): the time-to-confirm histogram draws.
  await page.waitForSelector("#chart-ttc canvas", { timeout: 30000 });
  step("export: every contact with its outcome");
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#export")]);
  const exported = readFileSync(await download.path(), "utf8");
  for (const n of ["+14155557001", "+14155557002", "+14155557003"]) {
    const line = exported.split("\r\n").find((l) => l.startsWith(`${n},`));
    if (!line || !line.includes(",completed,")) throw new Error(`${n} is not in the export as completed:\n${exported}`);
  }
  await page.screenshot({ path: join(shots, "launched.png"), fullPage: true });
  timings.launched_from_page = true;

  step("audit log: the upload, the launch, the pause and the cancel, by this key");
  await page.goto(`${base}/ui/audit`);
  await page.waitForSelector("#audit-table tbody tr td");
  const audit = await page.textContent("#audit-table tbody");
  for (const action of ["list.import", "campaign.enqueue", "campaign.pause", "campaign.resume", "campaign.cancel"]) {
    if (!audit.includes(action)) throw new Error(`the audit page does not show ${action}: ${audit}`);
  }
  if (!audit.includes("browser (api)")) throw new Error(`the audit page does not name the key: ${audit}`);
  await page.screenshot({ path: join(shots, "audit.png"), fullPage: true });

  if (problems.length) throw new Error(problems.join("\n"));
  console.log(JSON.stringify(timings));
} catch (e) {
  failed = true;
  console.error(`dashboard.mjs: FAILED: ${e.message}`);
  for (const p of problems) console.error(`  ${p}`);
  await page.screenshot({ path: join(shots, "failure.png"), fullPage: true }).catch(() => {});
  console.error(`  screenshot: ${join(shots, "failure.png")}`);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
