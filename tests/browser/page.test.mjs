// Drives the debug page at GET / in Debian's headless Chromium with
// playwright-core, which downloads no browser of its own.
//
// The test starts the `broker` binary on a free loopback port with a
// temporary data folder, unless BROKER_URL names a server that is already
// running. Settings, all optional:
//   BROKER_BIN      the binary (default target/debug/broker, else target/release/broker)
//   BROKER_RUNTIME  passed as --runtime, and used in the screenshot names
//   BROKER_URL      a running server to test instead; the restart and token tests are skipped
//   CHROMIUM        the browser (default /usr/bin/chromium)
// Screenshots of both pages go to target/browser/.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import {
  ACTION_TIMEOUT_MS,
  artefacts,
  launchBrowser,
  MAX_LATENESS_MS,
  runtime,
  startServer,
  stopServer,
} from "./support.mjs";

const label = runtime || (process.env.BROKER_URL ? "url" : "default");

const PUBLISHER_SECRET = "browser-test-publisher-secret-0123456789";
const SUBSCRIBER_SECRET = "browser-test-subscriber-secret-012345678";

let browser;
let server;
let publisher;
let subscriber;
const consoleErrors = [];

async function openPage(url, name) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(ACTION_TIMEOUT_MS);
  page.on("console", (message) => {
    // Chromium logs each 4xx response and refused connection as an error.
    // The tests cause both on purpose.
    const expected = message.text().startsWith("Failed to load resource:");
    if (message.type() === "error" && !expected) consoleErrors.push(`${name}: ${message.text()}`);
  });
  page.on("pageerror", (error) => consoleErrors.push(`${name}: ${error.message}`));
  await page.goto(url);
  await page.locator("#connection.ok").waitFor();
  return page;
}

/** Fills the insert form, submits it and returns the response text shown. */
async function insert(page, { name, data, timestamp = "" }) {
  await page.fill("#insert-event", name);
  await page.fill("#insert-data", data);
  await page.fill("#insert-timestamp", timestamp);
  const result = page.locator("#insert-result");
  await page.evaluate(() => { delete document.getElementById("insert-result").dataset.status; });
  await page.click('#insert-form button[type="submit"]');
  await result.and(page.locator("[data-status]")).waitFor();
  return result.textContent();
}

function streamRow(page, name) {
  return page.locator(`#stream tbody tr[data-event="${name}"]`);
}

function currentRow(page, name) {
  return page.locator(`#current tbody tr[data-event="${name}"]`);
}

/** Mints an HS256 token that expires in an hour. */
function mint(secret) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const unsigned = `${encode({ alg: "HS256", typ: "JWT" })}.${encode({ exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  const signature = createHmac("sha256", secret).update(unsigned).digest("base64url");
  return `${unsigned}.${signature}`;
}

before(async () => {
  mkdirSync(artefacts, { recursive: true });
  // A short reconnection delay keeps the restart test quick.
  server = process.env.BROKER_URL
    ? { url: process.env.BROKER_URL.replace(/\/$/, "") }
    : await startServer({ env: { BROKER_RETRY: "0.5" } });
  browser = await launchBrowser();
  publisher = await openPage(`${server.url}/`, "publisher");
  subscriber = await openPage(`${server.url}/`, "subscriber");
});

after(async () => {
  try {
    for (const [page, name] of [[publisher, "publisher"], [subscriber, "subscriber"]]) {
      if (page) await page.screenshot({ path: join(artefacts, `${label}-${name}.png`), fullPage: true });
    }
  } finally {
    await browser?.close();
    await stopServer(server);
  }
});

test("page is served with its headers", async () => {
  const response = await fetch(`${server.url}/`, { signal: AbortSignal.timeout(ACTION_TIMEOUT_MS) });
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "text/html; charset=utf-8");
  const policy = response.headers.get("content-security-policy") ?? "";
  assert.match(policy, /default-src 'none'/);
  assert.match(policy, /script-src 'sha256-/);
  assert.equal(response.headers.get("cache-control"), "no-cache");
  assert.match(await response.text(), /<title>Broker debug page<\/title>/);
  assert.equal(await publisher.title(), "Broker debug page");
  assert.ok(await subscriber.locator("#tokens").isHidden(), "an open server needs no token field");
});

test("insert from the form reaches the other page", async () => {
  const name = `greeting-${Date.now()}`;
  const result = await insert(publisher, { name, data: '{"text": "hello"}' });
  assert.match(result, /^201 /);
  assert.match(result, /"published": true/);

  const row = streamRow(subscriber, name).first();
  await row.waitFor();
  assert.equal(await row.locator("td.data").textContent(), '{"text":"hello"}');
  const current = currentRow(subscriber, name);
  await current.waitFor();
  assert.equal(await current.locator("td.data").textContent(), '{"text":"hello"}');

  // A second version replaces the current value and adds to the stream.
  assert.match(await insert(publisher, { name, data: '{"text": "again"}' }), /^201 /);
  await streamRow(subscriber, name).nth(1).waitFor();
  await current.locator("td.data", { hasText: "again" }).waitFor();
  assert.equal(await currentRow(subscriber, name).count(), 1);

  await subscriber.fill("#history-event", name);
  await subscriber.click('#history-form button[type="submit"]');
  await subscriber.locator("#history-status", { hasText: "2 versions" }).waitFor();
  const data = await subscriber.locator("#history tbody td.data").allTextContents();
  assert.deepEqual(data, ['{"text":"hello"}', '{"text":"again"}']);
});

test("future event arrives on time", async () => {
  const name = `countdown-${Date.now()}`;
  await publisher.fill("#insert-delay", "3");
  await publisher.click("#insert-delay-apply");
  const timestamp = await publisher.inputValue("#insert-timestamp");
  assert.match(timestamp, /^\d+$/);
  await publisher.locator("#insert-due", { hasText: "Due at" }).waitFor();

  const result = await insert(publisher, { name, data: '{"n": 3}', timestamp });
  assert.match(result, /^201 /);
  assert.match(result, /"published": false/);
  assert.equal(await streamRow(subscriber, name).count(), 0, "the event arrived before its timestamp");

  const dueMs = Number(timestamp) * 1000;
  const row = streamRow(subscriber, name).first();
  await row.waitFor({ timeout: Math.max(0, dueMs - Date.now()) + ACTION_TIMEOUT_MS });
  const arrived = Number(await row.getAttribute("data-arrived"));
  assert.ok(arrived >= dueMs, `arrived ${dueMs - arrived} ms before its timestamp`);
  assert.ok(arrived - dueMs < MAX_LATENESS_MS, `arrived ${arrived - dueMs} ms after its timestamp`);
  await currentRow(subscriber, name).waitFor();
});

test("large value keeps the page in the window", async () => {
  const name = `large-${Date.now()}`;
  const data = JSON.stringify("x".repeat(200_000));
  assert.match(await insert(publisher, { name, data }), /^201 /);
  const cell = currentRow(subscriber, name).locator("td.data");
  await cell.waitFor();
  assert.match(await cell.textContent(), /more characters\)$/);
  const width = await subscriber.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(width <= 0, `the page is ${width} px wider than the window`);
});

test("invalid JSON shows the error body", async () => {
  const result = await insert(publisher, { name: "broken", data: '{"text": }' });
  assert.match(result, /^400 /);
  assert.match(result, /"error": "invalid_json"/);
  assert.equal(await publisher.getAttribute("#insert-result", "class"), "error");
  await publisher.waitForTimeout(300);
  assert.equal(await streamRow(subscriber, "broken").count(), 0);
});

test("stream resumes after a restart", { skip: Boolean(process.env.BROKER_URL) && "BROKER_URL is set" }, async () => {
  const before = await subscriber.locator("#stream tbody tr").count();
  const { port } = new URL(server.url);
  const { dataDir } = server;
  server.dataDir = undefined; // keep the folder for the restarted server
  await stopServer(server);
  await subscriber.locator("#connection.error", { hasText: "Reconnecting" }).waitFor();

  server = await startServer({ env: { BROKER_RETRY: "0.5" }, port: Number(port), dataDir });
  await subscriber.locator("#connection.ok").waitFor();
  const name = `after-restart-${Date.now()}`;
  const response = await fetch(`${server.url}/insert`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ event: name, data: "back" }),
    signal: AbortSignal.timeout(ACTION_TIMEOUT_MS),
  });
  assert.equal(response.status, 201);
  await streamRow(subscriber, name).waitFor();
  // A resumed stream sends no snapshot, so only the new message was added.
  assert.equal(await subscriber.locator("#stream tbody tr").count(), before + 1);
});

test("page loads without console errors", () => {
  assert.deepEqual(consoleErrors, []);
});

test("token fields when secrets are set", { skip: Boolean(process.env.BROKER_URL) && "BROKER_URL is set" }, async () => {
  const secured = await startServer({
    env: { BROKER_PUBLISHER_SECRET: PUBLISHER_SECRET, BROKER_SUBSCRIBER_SECRET: SUBSCRIBER_SECRET },
  });
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    page.setDefaultTimeout(ACTION_TIMEOUT_MS);
    await page.goto(`${secured.url}/`);
    await page.locator("#connection.error", { hasText: "401" }).waitFor();
    await page.locator("#subscriber-token").waitFor();
    assert.ok(await page.locator("#publisher-token").isHidden(), "no insert has been rejected yet");
    assert.match(await insert(page, { name: "unsigned", data: "1" }), /^401 /);
    await page.locator("#publisher-token").waitFor();

    await page.fill("#subscriber-token", mint(SUBSCRIBER_SECRET));
    await page.fill("#publisher-token", mint(PUBLISHER_SECRET));
    await page.click('#token-form button[type="submit"]');
    await page.locator("#connection.ok").waitFor();

    const name = `signed-${Date.now()}`;
    assert.match(await insert(page, { name, data: "1" }), /^201 /);
    await streamRow(page, name).waitFor();
    await page.screenshot({ path: join(artefacts, `${label}-tokens.png`), fullPage: true });
  } finally {
    await context.close();
    await stopServer(secured);
  }
});
