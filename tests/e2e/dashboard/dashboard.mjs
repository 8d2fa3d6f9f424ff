// Drives the aggregator dashboard in headless Chromium (Debian's /usr/bin/chromium).
// Started by tests/dashboard.rs with: URL USER PASSWORD SCREENSHOT_DIR.
// Protocol on stdio: prints READY once the page shows the seeded incidents and is
// live; the Rust test then pushes a new event and answers GO; the page must show
// it without a reload. Exits 0 only if every check passed.
import { chromium } from "playwright-core";
import readline from "node:readline";

const [url, user, password, shots] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const T = 20000;

const lines = readline.createInterface({ input: process.stdin });
const next = () => new Promise((resolve) => lines.once("line", resolve));

const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failed = false;
try {
  const context = await browser.newContext({
    httpCredentials: { username: user, password },
    viewport: { width: 1400, height: 900 },
  });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url, { waitUntil: "domcontentloaded" });

  // Both environments side by side, the seeded incidents ranked by score, sidecar health.
  await page.getByTestId("env-dev").waitFor({ timeout: T });
  await page.getByTestId("env-prod").waitFor({ timeout: T });
  await page.locator("[data-testid=incident-row]").nth(1).waitFor({ timeout: T });
  const rows = await page.locator("[data-testid=incident-row]").allInnerTexts();
  if (!rows[0].includes("payment / Charge")) throw new Error("top incident is not payment / Charge: " + rows[0]);
  if (!rows.some((r) => r.includes("checkout / GET /cart"))) throw new Error("dev incident missing: " + rows);
  await page.locator("[data-testid=sidecar-row]").first().waitFor({ timeout: T });
  // The maintenance window is listed, and the dev incident it covers says so.
  await page.locator("[data-testid=silence-row]", { hasText: "checkout db upgrade" }).waitFor({ timeout: T });
  const devRow = page.locator("[data-testid=incident-row]", { hasText: "checkout / GET /cart" });
  if (!(await devRow.innerText()).includes("alerts silenced")) throw new Error("dev incident not marked silenced");
  await page.locator("[data-testid=live].on").waitFor({ timeout: T });
  await page.screenshot({ path: `${shots}/dashboard-overview.png`, fullPage: true });
  console.log("READY");

  // A live event appears without a reload.
  if ((await next()) !== "GO") throw new Error("unexpected input");
  const navigations = [];
  page.on("framenavigated", (f) => { if (f === page.mainFrame()) navigations.push(f.url()); });
  await page.locator("[data-testid=incident-row]", { hasText: "inventory / GET /stock" }).waitFor({ timeout: T });
  if (navigations.length) throw new Error("the page reloaded: " + navigations);
  await page.screenshot({ path: `${shots}/dashboard-live.png`, fullPage: true });

  // The incident page: explanation, chart with observed and baseline lines and a point per event.
  await page.locator("[data-testid=incident-row]", { hasText: "payment / Charge" }).click();
  await page.getByTestId("incident-page").waitFor({ state: "visible", timeout: T });
  // A flat baseline has no height, so "attached" rather than "visible".
  for (const cls of ["observed", "baseline"]) {
    const line = page.locator("#chart polyline." + cls);
    await line.waitFor({ state: "attached", timeout: T });
    const n = (await line.getAttribute("points")).trim().split(/\s+/).length;
    if (n !== 3) throw new Error(cls + " line has " + n + " points, expected 3");
  }
  const points = await page.locator("#chart circle").count();
  if (points < 3) throw new Error("chart has " + points + " points, expected 3");
  const explanation = await page.locator("#inc-explanation").innerText();
  if (!explanation.includes("870 ms")) throw new Error("explanation missing: " + explanation);
  const eventRows = await page.locator("[data-testid=events] tbody tr").count();
  if (eventRows < 3) throw new Error("member events: " + eventRows);
  await page.screenshot({ path: `${shots}/dashboard-incident.png`, fullPage: true });
  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  console.log("OK");
} catch (e) {
  failed = true;
  console.error("FAIL " + (e && e.stack ? e.stack : e));
} finally {
  lines.close();
  await browser.close();
}
process.exit(failed ? 1 : 0);
