// Loads the dashboard in headless Chromium and checks it lives: the page shows the broker's
// numbers, they change while the Rust test (tests/dashboard.rs) runs a bounded load, and the
// topic watcher receives messages over MQTT-over-WebSocket. Saves a screenshot.
// Usage: node dashboard.mjs <http://127.0.0.1:port/> <screenshot.png> [user] [password]
// Prints one JSON line with what it saw; exits 0 only when every check passed.
import { chromium } from "playwright-core";

const [url, screenshot, user, password] = process.argv.slice(2);
const LIMIT_MS = 30000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // This machine's network is closed: without these Chromium tries background connections.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const result = { ok: false };
try {
  const context = await browser.newContext({
    viewport: { width: 1280, height: 900 },
    httpCredentials: user ? { username: user, password } : undefined,
  });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  const text = (id) => page.$eval("#" + id, (e) => e.textContent);
  await page.waitForFunction(() => document.getElementById("status").textContent === "live",
    null, { timeout: LIMIT_MS });
  result.received_first = await text("received");
  // Numbers change while the load runs.
  await page.waitForFunction((first) => document.getElementById("received").textContent !== first,
    result.received_first, { timeout: LIMIT_MS, polling: 250 });
  result.received_later = await text("received");
  result.connected = await text("connected");
  // The watcher subscribes over MQTT-over-WebSocket and shows what arrives.
  await page.waitForFunction(() => document.getElementById("mqtt-status").textContent.includes("connected"),
    null, { timeout: LIMIT_MS });
  await page.fill("#filter", "dash/#");
  await page.click("#watch button");
  await page.waitForFunction(() => document.querySelectorAll("#messages div").length >= 3,
    null, { timeout: LIMIT_MS, polling: 250 });
  result.watched = await page.$$eval("#messages .t", (ts) => ts.slice(0, 3).map((t) => t.textContent));
  // Let the chart gather a few points before the picture.
  await page.waitForTimeout(6000);
  await page.screenshot({ path: screenshot, fullPage: true });
  result.errors = errors;
  result.ok = errors.length === 0 && result.watched.every((t) => t.startsWith("dash/"));
} catch (e) {
  result.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
