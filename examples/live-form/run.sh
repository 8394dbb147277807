#!/usr/bin/env bash
# Starts Broker and the live-form example's Vite dev server together.
#
# Without an argument it builds and starts Broker from this repository with
# `cargo run --release`, on 127.0.0.1:8080 with its data under ./tmp at the
# repository root, and stops it when Vite exits (Ctrl-C). With a URL it
# uses that Broker server and starts only Vite.
# Usage: examples/live-form/run.sh [BROKER_URL]
set -euo pipefail
cd "$(dirname "$0")"
repository=$(cd ../.. && pwd)

if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund
fi

broker_pid=""
stop_broker() {
  if [ -n "$broker_pid" ]; then
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
  fi
}
trap stop_broker EXIT

if [ $# -ge 1 ]; then
  export VITE_BROKER_URL=$1
else
  export VITE_BROKER_URL=http://127.0.0.1:8080
  # Build first, so that the wait below covers only the server's start.
  (cd "$repository" && cargo build --release --bin broker)
  (cd "$repository" && exec "$repository/target/release/broker" \
    --host 127.0.0.1 --port 8080 --data-dir "$repository/tmp") &
  broker_pid=$!
  for _ in $(seq 50); do
    if curl -fsS http://127.0.0.1:8080/health >/dev/null 2>&1; then
      break
    fi
    if ! kill -0 "$broker_pid" 2>/dev/null; then
      echo "Broker exited at start; is port 8080 in use?" >&2
      exit 1
    fi
    sleep 0.2
  done
fi

echo "Broker: $VITE_BROKER_URL"
echo "Open http://127.0.0.1:5173/ in two windows."
npm run dev
