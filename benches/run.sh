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
# With --postgres, it runs the two-node benchmark instead. It starts a
# throwaway PostgreSQL cluster of its own: initdb in the temporary folder, a
# free loopback port, and fsync and synchronous_commit at their defaults,
# which are on. Then it compares two tokio-axum brokers on that cluster
# ("postgres-2-nodes") with one tokio-axum+redb broker. The publisher and
# half of the subscribers use node 1, the other half node 2. It writes the
# two-node section of the page, leaves the nchan section as it is, and
# stops the cluster with pg_ctl at the end. As root it runs PostgreSQL as
# the `postgres` user, and it installs the postgresql package when no
# server binaries are in /usr/lib/postgresql. It takes about 5 minutes.
#
# Usage: benches/run.sh [--postgres]
# Environment:
#   BENCH_SYSTEMS  space-separated subset of: tokio-axum+redb tokio-axum+sled
#                  async-std-tide+redb async-std-tide+sled nchan (default: all);
#                  with --postgres, of: tokio-axum+redb postgres-2-nodes
#   BENCH_PAGE     page to write (default: docs/benchmarks.md)
#   BENCH_ROUNDS   rounds of the fan-out and insert scenarios (default: 3)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

postgres_mode=""
case "${1:-}" in
  "") ;;
  --postgres) postgres_mode=1 ;;
  *)
    echo "usage: benches/run.sh [--postgres]" >&2
    exit 2
    ;;
esac

if [ -n "$postgres_mode" ]; then
  systems=${BENCH_SYSTEMS:-"tokio-axum+redb postgres-2-nodes"}
  command_line="benches/run.sh --postgres"
  section=two-node
  results_name=two-node.jsonl
else
  systems=${BENCH_SYSTEMS:-"tokio-axum+redb tokio-axum+sled async-std-tide+redb async-std-tide+sled nchan"}
  command_line="benches/run.sh"
  section=nchan
  results_name=results.jsonl
fi
page=${BENCH_PAGE:-docs/benchmarks.md}
rounds=${BENCH_ROUNDS:-3}

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
results=$root/target/bench/$results_name
mkdir -p "$(dirname "$results")"
: >"$results"
# The servers this script started and has not stopped yet.
server_pids=()
client_pid=""
# The PostgreSQL cluster's data folder, set once the cluster runs.
pg_data=""

# Stops one server by its PID: SIGTERM, then SIGKILL after 10 s.
stop_pid() {
  local pid=$1
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "server $pid did not stop within 10 s; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

# Stops every server this script started, by PID.
stop_server() {
  local pid
  for pid in "${server_pids[@]}"; do
    stop_pid "$pid"
  done
  server_pids=()
}

cleanup() {
  if [ -n "$client_pid" ]; then
    kill -TERM "$client_pid" 2>/dev/null || true
    wait "$client_pid" 2>/dev/null || true
  fi
  stop_server
  stop_postgres
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs apt-get update and then apt-get with the arguments, with services
# kept from starting: Debian's nginx and postgresql packages start a system
# server unless policy-rc.d forbids it, and the benchmark starts its own.
without_service_start() {
  local policy=/usr/sbin/policy-rc.d added_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    added_policy=1
  fi
  local status=0
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive "$@" || status=$?
  [ -n "$added_policy" ] && rm -f "$policy"
  return "$status"
}

install_nchan() {
  if command -v nginx >/dev/null && [ -n "$(nchan_module)" ]; then
    return 0
  fi
  echo "::: installing nginx and libnginx-mod-nchan"
  without_service_start apt-get install -y -qq --no-install-recommends nginx libnginx-mod-nchan
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
  if [ -n "$postgres_mode" ]; then
    describe_postgres
  else
    echo "- $(nginx -v 2>&1 | sed 's/^nginx version: //'), nchan $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || echo unknown) (Debian package)"
  fi
  echo "- $(rustc --version), Broker built with \`cargo build --release --all-features\`"
  echo "- load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
}

# Starts Broker with RUNTIME and STORAGE in the folder DIR, with any further
# VARIABLE=VALUE arguments in its environment; adds its PID to server_pids
# and sets base_url.
start_broker_in() {
  local runtime=$1 storage=$2 dir=$3
  shift 3
  mkdir -p "$dir"
  env "$@" PORT=0 BROKER_HOST=127.0.0.1 BROKER_DATA_DIR="$dir/data" BROKER_STORAGE=$storage \
    BROKER_RUNTIME=$runtime RUST_LOG=info target/release/broker >"$dir/out.log" 2>&1 &
  local pid=$!
  server_pids+=("$pid")
  local address=""
  for _ in $(seq 200); do
    address=$(grep -o 'address=[^ ]*' "$dir/out.log" | head -n 1 | cut -d= -f2 || true)
    [ -n "$address" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$address" ]; then
    echo "error: broker ($runtime, $storage) did not log its address within 20 s:" >&2
    cat "$dir/out.log" >&2
    exit 1
  fi
  base_url="http://$address"
}

# Starts Broker with RUNTIME and STORAGE; sets base_url and pids.
start_broker() {
  start_broker_in "$1" "$2" "$work/$1-$2"
  pids=${server_pids[-1]}
}

# Starts two tokio-axum brokers on the PostgreSQL cluster; sets node1_url,
# node2_url and pids (both brokers).
start_two_nodes() {
  local database_url="postgresql://postgres@127.0.0.1:$pg_port/broker"
  start_broker_in tokio-axum postgres "$work/node-1" BROKER_DATABASE_URL="$database_url"
  node1_url=$base_url
  start_broker_in tokio-axum postgres "$work/node-2" BROKER_DATABASE_URL="$database_url"
  node2_url=$base_url
  pids="${server_pids[-2]},${server_pids[-1]}"
}

# Runs a PostgreSQL program as the owner of the cluster: the `postgres`
# user when this script runs as root, which PostgreSQL refuses to run as.
as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# Finds the newest PostgreSQL server binaries; installs the postgresql
# package first when there are none. Sets pg_bin.
find_postgres() {
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$pg_bin" ]; then
    echo "::: installing postgresql"
    without_service_start apt-get install -y -qq --no-install-recommends postgresql
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$pg_bin" ] || { echo "error: no PostgreSQL binaries in /usr/lib/postgresql after install" >&2; exit 1; }
  fi
}

# Creates a PostgreSQL cluster in the temporary folder and starts it on a
# free loopback port, with its socket in its own folder. Sets pg_data,
# pg_port and pg_postmaster (the server's main process). The cluster
# trusts every local connection. That is safe only because it listens on
# 127.0.0.1 and lives for this run alone.
start_postgres() {
  local dir="$work/postgres"
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    # The postgres user must reach its folder inside the root-owned one.
    chmod 711 "$work"
    chown postgres: "$dir"
  fi
  as_postgres "$pg_bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
    --locale=C >"$work/initdb.log" 2>&1 || {
    echo "error: initdb failed:" >&2
    cat "$work/initdb.log" >&2
    exit 1
  }
  pg_port=$(target/release/examples/load free-port)
  pg_data="$dir/data"
  if ! as_postgres "$pg_bin/pg_ctl" -D "$pg_data" -l "$dir/server.log" -w -t 30 \
    -o "-p $pg_port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null; then
    echo "error: PostgreSQL did not start:" >&2
    cat "$dir/server.log" >&2
    exit 1
  fi
  pg_postmaster=$(head -n 1 "$pg_data/postmaster.pid")
  as_postgres "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres broker
}

# Stops the cluster that start_postgres created, if it runs, with pg_ctl
# and its data folder.
stop_postgres() {
  [ -n "$pg_data" ] || return 0
  as_postgres "$pg_bin/pg_ctl" -D "$pg_data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
  pg_data=""
}

# Runs psql on the cluster's broker database with the arguments.
pg_query() {
  as_postgres "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d broker -Atq "$@"
}

describe_postgres() {
  local settings
  settings=$(pg_query -F ' = ' -c "SELECT name, current_setting(name) FROM pg_settings
    WHERE name IN ('fsync', 'synchronous_commit', 'wal_sync_method', 'full_page_writes',
                   'shared_buffers', 'max_connections', 'wal_level')
    ORDER BY name" | sed 's/^/`/; s/$/`/' | paste -sd, | sed 's/,/, /g')
  echo "- $(pg_query -c 'SHOW server_version' | sed 's/^/PostgreSQL /'), a cluster of the benchmark's own on 127.0.0.1. Its data folder is in the temporary folder, on the same file system as the other servers' data."
  echo "- PostgreSQL settings: $settings"
}

# Starts nginx with nchan; adds its PID to server_pids and sets base_url and
# pids (master and workers).
start_nchan() {
  local dir="$work/nchan" port
  mkdir -p "$dir/logs"
  port=$(target/release/examples/load free-port)
  sed -e "s/@PORT@/$port/" -e "s#@MODULE@#$(nchan_module)#" benches/nchan.conf >"$dir/nchan.conf"
  nginx -p "$dir" -c nchan.conf >"$dir/logs/out.log" 2>&1 &
  local server_pid=$!
  server_pids+=("$server_pid")
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

# Runs one scenario of the load client against the current servers. The
# URLs may be comma-separated lists, which the client takes in turn.
load() {
  local scenario=$1
  shift
  local database=()
  [ -n "$database_pid" ] && database=(--database-pid "$database_pid")
  record "$label $scenario" "$scenario" --label "$label" --pids "$pids" "${database[@]}" \
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
# first round only, on a fresh server, because memory varies little; the
# two-node section has no idle table.
run_scenarios() {
  [ "$round" = 1 ] && [ -z "$postgres_mode" ] && load idle --connections "$idle_connections"
  load fanout "${fanout_small[@]}" --publish-connections "$publish_connections"
  load fanout "${fanout_large[@]}" --publish-connections "$publish_connections"
  load inserts --clients 1 --seconds 5
  load inserts --clients 16 --seconds 5
}

# Runs the Broker-only scenarios in the first round: sync on connect and
# scheduling. SYNC_URLS and SCHEDULE_URLS are the subscribe URLs of each.
run_broker_scenarios() {
  local sync_urls=$1 schedule_urls=$2
  [ "$round" = 1 ] || return 0
  subscribe_url=$sync_urls
  load sync --names "$sync_names"
  subscribe_url=$schedule_urls
  load schedule --events "$schedule_events"
}

if [ -n "$postgres_mode" ]; then
  find_postgres
else
  install_nchan
fi
echo "::: building broker and the load client (release, all features)"
# Two commands, so that the example's dev-dependencies do not change the
# features that the server binary is built with. All features include
# the postgres backend.
cargo build --release --all-features --bin broker
cargo build --release --all-features --example load

database_pid=""
if [ -n "$postgres_mode" ]; then
  echo "::: starting a PostgreSQL cluster in $work/postgres"
  start_postgres
fi
describe_machine >"$work/machine.md"
started=$SECONDS
# Rounds go through every system in turn, so that a slow spell of the
# shared machine does not fall on one system alone.
for round in $(seq "$rounds"); do
[ "$round" = 1 ] && run_probes
for system in $systems; do
  echo "::: round $round of $rounds: $system"
  label=$system
  database_pid=""
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
      run_broker_scenarios "$base_url/events" "$base_url/events"
      ;;
    postgres-2-nodes)
      [ -n "$postgres_mode" ] || { echo "error: $system needs benches/run.sh --postgres" >&2; exit 2; }
      start_two_nodes
      body='{"event":"bench","data":{"t":$T}}'
      database_pid=$pg_postmaster
      # The fan-out publisher uses node 1 alone; inserts take both nodes.
      publish_url="$node1_url/insert"
      subscribe_url="$node1_url/events?event=bench,$node2_url/events?event=bench"
      load fanout "${fanout_small[@]}" --publish-connections "$publish_connections"
      load fanout "${fanout_large[@]}" --publish-connections "$publish_connections"
      publish_url="$node1_url/insert,$node2_url/insert"
      load inserts --clients 1 --seconds 5
      load inserts --clients 16 --seconds 5
      run_broker_scenarios "$node2_url/events,$node1_url/events" \
        "$node1_url/events,$node2_url/events"
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
  --machine "$work/machine.md" --command "$command_line" --section "$section"
echo "::: wrote $page (result lines in $results)"
