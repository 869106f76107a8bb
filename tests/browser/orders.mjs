// The pages in a real browser: Debian's chromium, headless, driven by
// playwright-core (npm; no browser download: the system's is used).
//
//   CQRSD_URL=http://127.0.0.1:PORT PLAYWRIGHT_DIR=DIR SCREENSHOT_DIR=DIR \
//   CHROMIUM=/usr/bin/chromium node tests/browser/orders.mjs
//
// PLAYWRIGHT_DIR is a folder whose node_modules has playwright-core
// (tests/blackbox/test_ui_browser.py installs it into the build folder).
// Screenshots are written to SCREENSHOT_DIR for a person to look at.
import { createRequire } from "node:module";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const URL_ = process.env.CQRSD_URL;
const SHOTS = process.env.SCREENSHOT_DIR || "screenshots";
const require = createRequire(join(process.env.PLAYWRIGHT_DIR || ".", "noop.js"));
const { chromium } = require("playwright-core");
const T = 60000; // generous: the machine may be loaded

mkdirSync(SHOTS, { recursive: true });
const step = (s) => console.log(`# ${s}`);
const shot = async (page, name) => {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
  console.log(`# screenshot ${join(SHOTS, name)}.png`);
};
const control = async (op) => {
  const r = await fetch(`${URL_}/projections/order_summaries/${op}`, { method: "POST" });
  assert.equal(r.status, 200, `${op}: ${await r.text()}`);
};

// Chromium will not start as root without --no-sandbox (its sandbox needs
// an unprivileged user); CI runs the tests as root in a throwaway
// container, so the sandbox is turned off there and only there.
const args = process.getuid?.() === 0 ? ["--no-sandbox"] : [];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true, args,
  timeout: T,
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  page.setDefaultTimeout(T);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => {
    // the refused ShipOrder is a 422 the page expects (and shows)
    if (m.type() === "error" && !/status of 422/.test(m.text())) errors.push(m.text());
  });
  page.on("requestfailed", (r) => {
    if (!r.url().startsWith(URL_)) errors.push(`outside request ${r.url()}`);
  });
  // Every request the pages make must go to cqrsd itself (offline, no CDN).
  await page.route("**/*", (route) => route.request().url().startsWith(URL_)
    ? route.continue() : route.abort());

  step("orders page loads, live");
  await page.goto(`${URL_}/ui/orders`);
  await page.locator("#stale").waitFor({ state: "hidden" });
  await page.locator("#freshness").waitFor({ state: "visible" });

  step("place an order: a pending row at once, then confirmed by the push");
  // the command takes a second on the wire, so the pending row can be seen
  await page.route("**/commands/PlaceOrder", async (route) => {
    await new Promise((r) => setTimeout(r, 1500));
    await route.continue();
  });
  await page.fill("input[name=quantity]", "3");
  await page.click("#place-button");
  const row = page.locator("#orders tbody tr").first();
  await row.locator("[data-state]").or(row).first().waitFor();
  assert.equal(await row.getAttribute("data-state"), "pending");
  assert.equal(await row.locator("td").nth(2).textContent(), "placed");
  const orderId = await row.getAttribute("data-order");
  await shot(page, "orders-1-pending");
  await page.locator(`tr[data-order="${orderId}"][data-state="confirmed"]`).waitFor();
  const read = await row.locator("td").nth(5).textContent();
  assert.match(read, /^eventual @\d+/, "confirmed from the read model");
  assert.equal(await row.locator("td").nth(1).textContent(), "37.50 EUR");
  await page.unroute("**/commands/PlaceOrder");
  await shot(page, "orders-2-confirmed");

  step("pay and ship it the same way");
  await row.locator("button.pay").click();
  await page.locator(`tr[data-order="${orderId}"][data-status="paid"][data-state="confirmed"]`)
    .waitFor();
  await row.locator("button.ship").click();
  await page.locator(`tr[data-order="${orderId}"][data-status="shipped"][data-state="confirmed"]`)
    .waitFor();

  step("a refused command rolls back with its reason");
  await page.click("#place-button");
  const second = page.locator("#orders tbody tr").first();
  await page.locator(`#orders tbody tr:first-child[data-state="confirmed"]`).waitFor();
  const secondId = await second.getAttribute("data-order");
  assert.notEqual(secondId, orderId);
  await second.locator("button.ship").click(); // not paid: refused
  await page.locator(`tr[data-order="${secondId}"][data-state="rolled-back"]`).waitFor();
  assert.equal(await second.locator("td").nth(2).textContent(), "placed", "rolled back");
  const msg = await page.locator("#messages .error").first().textContent();
  assert.match(msg, new RegExp(`ShipOrder ${secondId}: .*refused.*not fully paid`));
  await shot(page, "orders-3-refused");

  step("order_summaries paused: the stale badge, the lag, strong reads");
  await control("pause");
  await page.locator("#stale").waitFor({ state: "visible" });
  assert.match(await page.locator("#stale").textContent(), /paused/);
  await page.click("#place-button");
  await page.locator("#lag").filter({ hasText: /1 events behind/ }).waitFor();
  const third = page.locator("#orders tbody tr").first();
  await page.locator(`#orders tbody tr:first-child[data-state="confirmed"]`).waitFor();
  assert.match(await third.locator("td").nth(5).textContent(), /^strong @\d+/);
  await shot(page, "orders-4-stale");

  step("resumed: the badge clears");
  await control("resume");
  await page.locator("#stale").waitFor({ state: "hidden" });
  await page.locator("#freshness").waitFor({ state: "visible" });
  await shot(page, "orders-5-live-again");

  step("operations page: projections, lag, tail of $all");
  await page.goto(`${URL_}/ui/`);
  const proj = page.locator('tr[data-projection="order_summaries"]');
  await proj.waitFor();
  await page.locator('tr[data-projection="order_summaries"][data-status="running"]').waitFor();
  await page.locator("#tail tbody tr").first().waitFor();
  await page.locator("#conn").filter({ hasText: "live" }).waitFor();
  await proj.locator("button.pause").click();
  await page.locator('tr[data-projection="order_summaries"][data-status="paused"]').waitFor();
  await proj.locator("button.resume").click();
  await page.locator('tr[data-projection="order_summaries"][data-status="running"]').waitFor();
  await proj.locator("button.rebuild").click();
  await page.locator("#messages").filter({ hasText: "rebuild order_summaries:" }).waitFor();
  // the rebuild ends (a progress bar shows while it runs) and says so
  await proj.locator("td").nth(7).filter({ hasText: /^done / }).waitFor();
  await page.waitForTimeout(2500); // a few sparkline samples
  assert.ok(await proj.locator("svg.spark polyline").count() === 1, "a sparkline");
  await shot(page, "ops");
  assert.deepEqual(errors, [], "no errors in the pages");
  console.log("ok - browser test");
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
