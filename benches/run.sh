#!/usr/bin/env bash
# Runs the side-by-side benchmark of Broker and nginx with nchan on this
# machine, with one load client (examples/load), and writes the results
# section of docs/benchmarks.md.
#
# It installs nginx and libnginx-mod-nchan with apt-get when they are
# missing, which needs root, and builds Broker and the client in release.
# Then it probes the machine with no server running: the disk's sync
# latency and the CPU cost of one small loopback TCP write. For each system,
# it starts a server on a free loopback port with a temporary data folder,
# runs every scenario against it and stops it by its PID.
# A run takes about 7 minutes on 2 cores after the build.
#
# Usage: benches/run.sh
# Environment:
#   BENCH_SYSTEMS  space-separated subset of: tokio-axum+redb tokio-axum+sled
#                  async-std-tide+redb async-std-tide+sled nchan (default: all)
#   BENCH_PAGE     page to write (default: docs/benchmarks.md)
#   BENCH_ROUNDS   rounds of the fan-out and insert scenarios (default: 3)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

systems=${BENCH_SYSTEMS:-"tokio-axum+redb tokio-axum+sled async-std-tide+redb async-std-tide+sled nchan"}
page=${BENCH_PAGE:-docs/benchmarks.md}
rounds=${BENCH_ROUNDS:-3}
command_line="benches/run.sh"

# Scenario sizes. Both fan-out runs make 100,000 deliveries per second. The
# client reports its own CPU time, so a run where it nears one core, and may
# be the bottleneck, shows in the results.
fanout_small=(--subscribers 100 --rate 1000 --seconds 5)
fanout_large=(--subscribers 1000 --rate 100 --seconds 5)
# Broker replies to an insert after fsync, so one sequential connection
# cannot publish 1,000 per second when an fsync takes over a millisecond.
# 16 connections take turns, for both systems alike, which allows up to
# 16 ms per request at 1,000 per second.
publish_connections=16
idle_connections=10000
sync_names=10000
schedule_events=1000
# The machine probes. The loopback write probe matches each fan-out size:
# as many connections as subscribers, written at the same 100,000 writes
# per second, for 200,000 writes.
fsync_count=1000
write_floor_small=(--connections 100 --messages 2000 --rate 1000)
write_floor_large=(--connections 1000 --messages 200 --rate 100)

work=$(mktemp -d /tmp/broker-bench.XXXXXX)
results=$root/target/bench/results.jsonl
mkdir -p "$(dirname "$results")"
: >"$results"
server_pid=""
client_pid=""

# Stops the server this script started, if any, by its PID: SIGTERM, then
# SIGKILL after 10 s.
stop_server() {
  [ -n "$server_pid" ] || return 0
  if kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$server_pid" 2>/dev/null; then
      echo "server $server_pid did not stop within 10 s; sending SIGKILL" >&2
      kill -KILL "$server_pid" 2>/dev/null || true
    fi
  fi
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

cleanup() {
  if [ -n "$client_pid" ]; then
    kill -TERM "$client_pid" 2>/dev/null || true
    wait "$client_pid" 2>/dev/null || true
  fi
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

install_nchan() {
  if command -v nginx >/dev/null && [ -n "$(nchan_module)" ]; then
    return 0
  fi
  echo "::: installing nginx and libnginx-mod-nchan"
  # Debian's nginx package starts a system nginx on port 80 unless
  # policy-rc.d forbids it; the benchmark starts its own.
  local policy=/usr/sbin/policy-rc.d added_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    added_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx libnginx-mod-nchan
  [ -n "$added_policy" ] && rm -f "$policy"
  [ -n "$(nchan_module)" ] || { echo "error: ngx_nchan_module.so not found after install" >&2; exit 1; }
}

nchan_module() {
  find /usr/lib/nginx/modules -name ngx_nchan_module.so 2>/dev/null | head -n 1
}

describe_machine() {
  local cpu memory
  cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
  memory=$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
  echo "- CPU: $(nproc) cores ($cpu), $memory of memory, shared with other work"
  echo "- kernel: $(uname -sr)"
  echo "- $(nginx -v 2>&1 | sed 's/^nginx version: //'), nchan $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || echo unknown) (Debian package)"
  echo "- $(rustc --version), Broker built with \`cargo build --release --all-features\`"
  echo "- load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
}

# Starts Broker with RUNTIME and STORAGE; sets server_pid, base_url, pids.
start_broker() {
  local runtime=$1 storage=$2 dir="$work/$1-$2"
  mkdir -p "$dir"
  PORT=0 BROKER_HOST=127.0.0.1 BROKER_DATA_DIR="$dir/data" BROKER_STORAGE=$storage \
    BROKER_RUNTIME=$runtime RUST_LOG=info target/release/broker >"$dir/out.log" 2>&1 &
  server_pid=$!
  local address=""
  for _ in $(seq 200); do
    address=$(grep -o 'address=[^ ]*' "$dir/out.log" | head -n 1 | cut -d= -f2 || true)
    [ -n "$address" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$address" ]; then
    echo "error: broker ($runtime, $storage) did not log its address within 20 s:" >&2
    cat "$dir/out.log" >&2
    exit 1
  fi
  base_url="http://$address"
  pids=$server_pid
}

# Starts nginx with nchan; sets server_pid, base_url, pids (master and workers).
start_nchan() {
  local dir="$work/nchan" port
  mkdir -p "$dir/logs"
  port=$(target/release/examples/load free-port)
  sed -e "s/@PORT@/$port/" -e "s#@MODULE@#$(nchan_module)#" benches/nchan.conf >"$dir/nchan.conf"
  nginx -p "$dir" -c nchan.conf >"$dir/logs/out.log" 2>&1 &
  server_pid=$!
  base_url="http://127.0.0.1:$port"
  local workers=""
  for _ in $(seq 200); do
    workers=$(ps --ppid "$server_pid" -o pid= | tr -s ' \n' ' ' | sed 's/^ //;s/ $//' || true)
    if [ -n "$workers" ] && curl -s -o /dev/null "$base_url/pub" 2>/dev/null; then
      break
    fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$workers" ]; then
    echo "error: nginx did not start within 20 s:" >&2
    cat "$dir/logs/out.log" "$dir/logs/error.log" >&2 2>/dev/null || true
    exit 1
  fi
  pids="$server_pid,${workers// /,}"
}

# Usage: record DESCRIPTION ARGUMENT...
# Runs the load client with the arguments, appends its result line to the
# results and prints its human-readable line. If the client fails, it stops
# the benchmark with an error that names DESCRIPTION. The client runs in the
# background because bash runs a signal trap during `wait` at once, but only
# after a foreground command ends.
record() {
  local description=$1
  shift
  local output="$work/load.out"
  target/release/examples/load "$@" >"$output" &
  client_pid=$!
  if ! wait "$client_pid"; then
    client_pid=""
    echo "error: $description failed; stopping the benchmark" >&2
    exit 1
  fi
  client_pid=""
  grep '^{' "$output" >>"$results"
  grep '^# ' "$output" | sed 's/^# /    /'
}

# Runs one scenario of the load client against the current server.
load() {
  local scenario=$1
  shift
  record "$label $scenario" "$scenario" --label "$label" --pids "$pids" \
    --publish-url "$publish_url" --subscribe-url "$subscribe_url" --body "$body" "$@"
  # Let closed connections drain before the next scenario.
  sleep 1
}

# Runs the machine probes, before any server starts. The sync probe writes
# in the folder that contains the servers' data folders, so it measures the
# same file system.
run_probes() {
  echo "::: machine probes"
  record "probe fsync" fsync --dir "$work" --count "$fsync_count"
  record "probe write-floor" write-floor "${write_floor_small[@]}"
  record "probe write-floor" write-floor "${write_floor_large[@]}"
}

# Runs the scenarios that compare with nchan. The idle one runs in the
# first round only, on a fresh server, because memory varies little.
run_scenarios() {
  [ "$round" = 1 ] && load idle --connections "$idle_connections"
  load fanout "${fanout_small[@]}" --publish-connections "$publish_connections"
  load fanout "${fanout_large[@]}" --publish-connections "$publish_connections"
  load inserts --clients 1 --seconds 5
  load inserts --clients 16 --seconds 5
}

install_nchan
echo "::: building broker and the load client (release, all features)"
# Two commands, so that the example's dev-dependencies do not change the
# features that the server binary is built with.
cargo build --release --all-features --bin broker
cargo build --release --all-features --example load

describe_machine >"$work/machine.md"
started=$SECONDS
# Rounds go through every system in turn, so that a slow spell of the
# shared machine does not fall on one system alone.
for round in $(seq "$rounds"); do
[ "$round" = 1 ] && run_probes
for system in $systems; do
  echo "::: round $round of $rounds: $system"
  label=$system
  case $system in
    nchan)
      start_nchan
      publish_url="$base_url/pub"
      subscribe_url="$base_url/sub/bench"
      body='{"t":$T}'
      run_scenarios
      ;;
    tokio-axum+redb | tokio-axum+sled | async-std-tide+redb | async-std-tide+sled)
      start_broker "${system%+*}" "${system#*+}"
      publish_url="$base_url/insert"
      subscribe_url="$base_url/events?event=bench"
      body='{"event":"bench","data":{"t":$T}}'
      run_scenarios
      if [ "$round" = 1 ]; then
        subscribe_url="$base_url/events"
        load sync --names "$sync_names"
        load schedule --events "$schedule_events"
      fi
      ;;
    *)
      echo "error: unknown system $system in BENCH_SYSTEMS" >&2
      exit 2
      ;;
  esac
  stop_server
done
done
echo "::: scenarios took $((SECONDS - started)) s"

mkdir -p "$(dirname "$page")"
target/release/examples/load report --results "$results" --page "$page" \
  --machine "$work/machine.md" --command "$command_line"
echo "::: wrote $page (result lines in $results)"
