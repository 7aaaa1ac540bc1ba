// Headless Chromium (Debian's, at /usr/bin/chromium or $CHROMIUM) loads browser.html, whose
// MQTT.js browser bundle subscribes and publishes over the given WebSocket URL.
// Usage: node browser.mjs ws://127.0.0.1:PORT/mqtt
// The page is served over HTTP from 127.0.0.1 (a port of its own), as a local development
// page would be: a file:// page has the origin "null", which the broker refuses.
// Prints the page's result; exits 0 when it starts with "ok", 1 otherwise, 2 on timeout.
import { chromium } from "playwright-core";
import { fileURLToPath } from "node:url";
import { readFile } from "node:fs/promises";
import http from "node:http";
import path from "node:path";

const RUN_LIMIT_MS = 30000;
const url = process.argv[2];
setTimeout(() => {
  console.error(`timed out after ${RUN_LIMIT_MS} ms`);
  process.exit(2);
}, RUN_LIMIT_MS).unref();

const here = path.dirname(fileURLToPath(import.meta.url));
const files = {
  "/browser.html": ["browser.html", "text/html"],
  "/node_modules/mqtt/dist/mqtt.min.js": ["node_modules/mqtt/dist/mqtt.min.js", "text/javascript"],
};
const server = http.createServer(async (request, response) => {
  const file = files[new URL(request.url, "http://x").pathname];
  if (!file) {
    response.writeHead(404).end();
    return;
  }
  const body = await readFile(path.join(here, file[0]));
  response.writeHead(200, { "Content-Type": file[1] }).end(body);
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const page_url = new URL(`http://127.0.0.1:${server.address().port}/browser.html`);
page_url.searchParams.set("url", url);

// The flags this sandbox needs: no sandbox as root, no GPU, and no background traffic (the
// network is closed, and Chromium's own connections would be refused many at a time).
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
let code = 1;
try {
  const page = await browser.newPage();
  page.on("console", (message) => console.log(`page: ${message.text()}`));
  await page.goto(page_url.href);
  await page.waitForFunction(() => window.result !== undefined, null, { timeout: 20000 });
  const result = await page.evaluate(() => window.result);
  console.log(result);
  code = result.startsWith("ok") ? 0 : 1;
} catch (error) {
  console.error(error.message ?? error);
} finally {
  await browser.close();
  server.close();
}
process.exit(code);
