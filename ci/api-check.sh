#!/usr/bin/env bash
# Checks a running server against its API description, docs/openapi.yaml,
# with schemathesis. It sends generated valid and invalid requests to every
# operation but the endless SSE stream. Each must get a documented status and
# a body that matches the schema, and never a server error.
# Usage: ci/api-check.sh BINARY RUNTIME STORAGE
# It starts BINARY on a free loopback port with a temporary data folder and
# stops it by its PID when done. schemathesis must be installed for
# python3: .ci/run installs it with pip. For the postgres storage, the server
# uses a new schema in the database that BROKER_TEST_DATABASE_URL names
# (`eval "$(ci/postgres.sh start)"` sets it), which is dropped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=$1
runtime=$2
storage=$3

if ! python3 -c 'import schemathesis' 2>/dev/null; then
  echo "error: schemathesis is not installed for python3; run: python3 -m pip install schemathesis" >&2
  exit 1
fi

database=()
schema=""
if [ "$storage" = postgres ]; then
  if [ -z "${BROKER_TEST_DATABASE_URL:-}" ]; then
    echo "error: BROKER_TEST_DATABASE_URL is not set; start a server with: eval \"\$(ci/postgres.sh start)\"" >&2
    exit 1
  fi
  # The process id keeps the schemas of parallel checks apart. A schema
  # left by an earlier process with the same id is dropped first.
  schema="api_check_$$"
  database=(--database-url "$BROKER_TEST_DATABASE_URL" --database-schema "$schema")
fi

# Drops the schema and its tables with psql, within bounded time.
drop_schema() {
  PGOPTIONS="-c statement_timeout=10s -c lock_timeout=10s -c client_min_messages=warning" \
    PGCONNECT_TIMEOUT=10 psql -X -q -v ON_ERROR_STOP=1 -d "$BROKER_TEST_DATABASE_URL" \
    -c "DROP SCHEMA IF EXISTS $schema CASCADE"
}

data_dir=$(mktemp -d)
server=""
cleanup() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  if [ -n "$schema" ]; then
    drop_schema || echo "warning: failed to drop the schema $schema" >&2
  fi
  rm -rf "$data_dir" "$data_dir.log" "$data_dir.toml"
}
trap cleanup EXIT

if [ -n "$schema" ]; then
  drop_schema
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$binary" --host 127.0.0.1 --port "$port" --data-dir "$data_dir" \
  --runtime "$runtime" --storage "$storage" "${database[@]}" >"$data_dir.log" 2>&1 &
server=$!

url="http://127.0.0.1:$port"
for _ in $(seq 100); do
  if python3 -c "import urllib.request; urllib.request.urlopen('$url/health', timeout=1)" 2>/dev/null; then
    break
  fi
  sleep 0.1
done

# async-h1, the HTTP server of async-std-tide, closes the connection
# without a response on a method it does not know, such as QUERY (a known
# difference from hyper, stated in the README). So that runtime is probed
# with the standard methods only.
config=()
if [ "$runtime" = async-std-tide ]; then
  printf '[phases.coverage]\nunexpected-methods = ["get", "put", "post", "delete", "options", "patch", "trace"]\n' \
    >"$data_dir.toml"
  config=(--config-file "$data_dir.toml")
fi

# A fixed seed makes a failure reproducible; drop it to explore other cases.
python3 -m schemathesis.cli "${config[@]}" run docs/openapi.yaml --url "$url" --checks all --exclude-path /events \
  --max-examples 100 --request-timeout 5 --seed 1 || {
  echo "server log:" >&2
  tail -n 20 "$data_dir.log" >&2
  exit 1
}
