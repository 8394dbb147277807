// Starts the `broker` binary and Debian's Chromium for the browser tests.
// Settings, all optional:
//   BROKER_BIN      the binary (default target/debug/broker, else target/release/broker)
//   BROKER_RUNTIME  passed as --runtime
//   CHROMIUM        the browser (default /usr/bin/chromium)

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const artefacts = join(root, "target", "browser");
export const runtime = process.env.BROKER_RUNTIME ?? "";

/** Time allowed for the server to print its `listening` line. */
export const START_TIMEOUT_MS = 20_000;
/** Time allowed for the server to exit after SIGTERM before SIGKILL. */
export const STOP_TIMEOUT_MS = 5_000;
/** Time allowed for any one browser action or expected change on a page. */
export const ACTION_TIMEOUT_MS = 10_000;
/** How late a future event may reach the page after its due second starts. */
export const MAX_LATENESS_MS = 1_500;

// The flags that this machine's Chromium needs: the background-networking
// flags stop it from calling out to hosts that a closed network refuses.
// playwright-core adds --headless and a new, empty --user-data-dir on every
// launch, and rejects a --user-data-dir of ours.
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export function brokerBinary() {
  if (process.env.BROKER_BIN) return process.env.BROKER_BIN;
  const debug = join(root, "target", "debug", "broker");
  const release = join(root, "target", "release", "broker");
  if (existsSync(debug)) return debug;
  if (existsSync(release)) return release;
  throw new Error("no broker binary: run `cargo build` first, or set BROKER_BIN or BROKER_URL");
}

/**
 * Starts the binary on 127.0.0.1 and resolves once it listens. By default it
 * gets a free port and a new data folder; a restart passes the old ones.
 */
export function startServer({ env = {}, port = 0, dataDir = mkdtempSync(join(tmpdir(), "broker-browser-")) } = {}) {
  const args = ["--host", "127.0.0.1", "--port", String(port), "--data-dir", join(dataDir, "data")];
  if (runtime) args.push("--runtime", runtime);
  const child = spawn(brokerBinary(), args, {
    env: { PATH: process.env.PATH, RUST_LOG: "info", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`the server printed no listening line in ${START_TIMEOUT_MS} ms:\n${output}`));
    }, START_TIMEOUT_MS);
    const onData = (chunk) => {
      output += chunk;
      const address = /listening.*address=(\S+)/.exec(output);
      if (address) {
        clearTimeout(timer);
        resolvePromise({ child, dataDir, url: `http://${address[1]}` });
      }
    };
    child.stdout.setEncoding("utf8").on("data", onData);
    child.stderr.setEncoding("utf8").on("data", (chunk) => { output += chunk; });
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the server exited (${code ?? signal}) before listening:\n${output}`));
    });
  });
}

/** Stops a server from startServer with SIGTERM, then SIGKILL, and removes its folder. */
export async function stopServer(started) {
  if (!started?.child) return;
  const { child } = started;
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((resolvePromise) => child.once("exit", resolvePromise));
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
    await exited;
    clearTimeout(timer);
  }
  if (started.dataDir) rmSync(started.dataDir, { recursive: true, force: true });
}

/** Launches headless Chromium, after checking that the executable exists. */
export async function launchBrowser() {
  const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
  if (!existsSync(executablePath)) {
    throw new Error(`no Chromium at ${executablePath}: install Debian's chromium package (apt-get install chromium), or set CHROMIUM`);
  }
  return chromium.launch({ executablePath, args: CHROMIUM_ARGS, timeout: ACTION_TIMEOUT_MS });
}
