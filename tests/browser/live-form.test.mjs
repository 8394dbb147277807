// Drives the example in examples/live-form in Debian's headless Chromium.
//
// The test starts the `broker` binary on a free loopback port with a
// temporary data folder, unless BROKER_URL names a server that is already
// running. It builds the example with `vite build` for that server, serves
// the built files from a static server on another loopback port, so the page
// and Broker have different origins as in a real deployment, and opens the
// page twice. Needs `npm ci` in examples/live-form. The other settings are
// those of support.mjs. Screenshots of both pages go to target/browser/.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { extname, join, normalize } from "node:path";
import {
  ACTION_TIMEOUT_MS,
  artefacts,
  launchBrowser,
  MAX_LATENESS_MS,
  root,
  startServer,
  stopServer,
} from "./support.mjs";

const example = join(root, "examples", "live-form");
/** Time allowed for `vite build`. */
const BUILD_TIMEOUT_MS = 120_000;

const CONTENT_TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
};

let server;
let buildDir;
let staticServer;
let pageUrl;
let browser;
let first;
let second;
const consoleErrors = [];

/** Runs `vite build` into `outDir` with the page pointed at `brokerUrl`. */
function buildExample(brokerUrl, outDir) {
  const vite = join(example, "node_modules", ".bin", "vite");
  if (!existsSync(vite)) {
    throw new Error(`no Vite at ${vite}: run npm ci in examples/live-form`);
  }
  const child = spawn(vite, ["build", "--outDir", outDir, "--emptyOutDir"], {
    cwd: example,
    env: { ...process.env, VITE_BROKER_URL: brokerUrl },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout.setEncoding("utf8").on("data", (chunk) => { output += chunk; });
  child.stderr.setEncoding("utf8").on("data", (chunk) => { output += chunk; });
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`vite build did not finish in ${BUILD_TIMEOUT_MS} ms:\n${output}`));
    }, BUILD_TIMEOUT_MS);
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolvePromise();
      else reject(new Error(`vite build failed (${code ?? signal}):\n${output}`));
    });
  });
}

/** Serves the files under `folder` on a free loopback port and resolves to its URL. */
function serveFolder(folder) {
  const http = createServer((request, response) => {
    const path = new URL(request.url, "http://localhost").pathname;
    const file = normalize(join(folder, path === "/" ? "index.html" : path));
    if (!file.startsWith(folder) || !existsSync(file)) {
      response.writeHead(404).end();
      return;
    }
    const type = CONTENT_TYPES[extname(file)] ?? "application/octet-stream";
    response.writeHead(200, { "content-type": type }).end(readFileSync(file));
  });
  return new Promise((resolvePromise, reject) => {
    http.once("error", reject);
    http.listen(0, "127.0.0.1", () => {
      staticServer = http;
      resolvePromise(`http://127.0.0.1:${http.address().port}/`);
    });
  });
}

async function openPage(name) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(ACTION_TIMEOUT_MS);
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(`${name}: ${message.text()} (${message.location().url})`);
  });
  page.on("pageerror", (error) => consoleErrors.push(`${name}: ${error.message}`));
  await page.goto(pageUrl);
  await page.locator("#status.open").waitFor();
  return page;
}

before(async () => {
  mkdirSync(artefacts, { recursive: true });
  server = process.env.BROKER_URL
    ? { url: process.env.BROKER_URL.replace(/\/$/, "") }
    : await startServer();
  buildDir = mkdtempSync(join(tmpdir(), "broker-live-form-"));
  await buildExample(server.url, buildDir);
  pageUrl = await serveFolder(buildDir);
  browser = await launchBrowser();
  first = await openPage("first");
  second = await openPage("second");
});

after(async () => {
  try {
    for (const [page, name] of [[first, "a"], [second, "b"]]) {
      if (page) await page.screenshot({ path: join(artefacts, `live-form-${name}.png`), fullPage: true });
    }
  } finally {
    await browser?.close();
    staticServer?.close();
    await stopServer(server);
    if (buildDir) rmSync(buildDir, { recursive: true, force: true });
  }
});

test("typed name reaches the other page", async () => {
  const name = `Ada ${Date.now()}`;
  await first.locator("#name").pressSequentially(name, { delay: 20 });
  await second.locator("#shared-name", { hasText: name }).waitFor();
  assert.equal(await second.locator("#shared-name").textContent(), name);
  // The other page is not typing, so its field follows the stream too.
  assert.equal(await second.inputValue("#name"), name);
  assert.equal(await first.inputValue("#name"), name);
  await first.locator("#shared-name", { hasText: name }).waitFor();
});

test("reload keeps the current name", async () => {
  const name = await first.locator("#shared-name").textContent();
  await second.reload();
  await second.locator("#status.open").waitFor();
  await second.locator("#shared-name", { hasText: name }).waitFor();
  assert.equal(await second.locator("#shared-name").textContent(), name);
  assert.equal(await second.inputValue("#name"), name);
});

test("countdown arrives on time in both pages", async () => {
  const response = first.waitForResponse((candidate) => candidate.url().endsWith("/insert"));
  await first.click("#countdown-start");
  const record = await (await response).json();
  assert.equal(record.event, "countdown");
  assert.equal(record.published, false, "the countdown was published at once");
  const dueMs = record.timestamp * 1000;

  for (const page of [first, second]) {
    const countdown = page.locator(`#countdown[data-due="${dueMs}"]`);
    await countdown.waitFor({ timeout: Math.max(0, dueMs - Date.now()) + ACTION_TIMEOUT_MS });
    const arrived = Number(await countdown.getAttribute("data-arrived"));
    assert.ok(arrived >= dueMs, `arrived ${dueMs - arrived} ms before its timestamp`);
    assert.ok(arrived - dueMs < MAX_LATENESS_MS, `arrived ${arrived - dueMs} ms after its timestamp`);
  }
});

test("history lists the typed name", async () => {
  const name = await first.locator("#shared-name").textContent();
  for (const page of [first, second]) {
    await page.click("#history-load");
    const last = page.locator("#history li").last();
    await last.filter({ hasText: JSON.stringify(name) }).waitFor();
    assert.ok((await page.locator("#history li").count()) >= 1);
  }
});

test("pages log no console errors", () => {
  assert.deepEqual(consoleErrors, []);
});
