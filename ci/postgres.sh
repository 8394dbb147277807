#!/usr/bin/env bash
# Runs a throwaway PostgreSQL server for the tests of the postgres storage.
#
# Usage:
#   eval "$(ci/postgres.sh start)"   # start a server, export its settings
#   ci/postgres.sh restart           # pg_ctl restart -m fast on the same data
#   ci/postgres.sh stop              # stop the server and delete its folder
#
# `start` creates a folder under ${TMPDIR:-/tmp} with a new cluster made by
# the highest version in /usr/lib/postgresql/*/bin (Debian's postgresql
# package), and starts it on 127.0.0.1 at a free port, or at
# BROKER_TEST_POSTGRES_PORT when that is set. It creates the role `broker`
# and the database `broker` owned by it, then prints two lines for `eval`:
#
#   export BROKER_TEST_DATABASE_URL=postgresql://broker@127.0.0.1:PORT/broker
#   export BROKER_TEST_POSTGRES_DIR=/tmp/broker-postgres.XXXXXX
#
# and writes the URL to $BROKER_TEST_POSTGRES_DIR/url. Progress and errors go
# to stderr. When `start` fails it prints `false`, so that the `eval` fails
# too. With BROKER_TEST_POSTGRES_DIR already naming a folder made by this
# script, `start` reuses that server, starting it again if it stopped.
#
# `stop` and `restart` act on the folder in BROKER_TEST_POSTGRES_DIR, or on
# the one given as their argument. They touch only a folder that this script
# made, which it marks with a file, and stop the server with pg_ctl, which
# reads the process id from the cluster's own postmaster.pid.
#
# The server accepts connections from loopback and its Unix socket only,
# without a password (trust authentication). It keeps fsync on, because the
# tests check that a 201 means the insert is durable. max_connections is
# 400, an estimate with room to spare: the conformance suite runs a server
# per test, up to about 40 at once, and each opens a pool of a few
# connections, as many as the backend's pool size.
#
# Run as root, the cluster belongs to the `postgres` user that the Debian
# package creates, because initdb and postgres refuse to run as root.
set -euo pipefail

# A file that marks a folder as made by this script, because `stop` and
# `restart` act only on such folders.
readonly MARKER=broker-test-postgres
# Seconds that pg_ctl waits for the server to start or stop.
readonly PG_CTL_TIMEOUT=60
readonly ROLE=broker
readonly DATABASE=broker

command=${1:-}

die() {
  echo "ci/postgres.sh: error: $*" >&2
  exit 1
}

log() {
  echo "ci/postgres.sh: $*" >&2
}

# Set while `start` makes a new cluster, which a failure then discards.
creating=""

# After a failed `start`, discards the half-made cluster and prints `false`
# for the caller's `eval`.
on_exit() {
  local status=$?
  if [ "$status" -ne 0 ] && [ -n "$creating" ]; then
    discard_failed_cluster
  fi
  if [ "$status" -ne 0 ] && [ "$command" = start ]; then
    echo false
  fi
}
trap on_exit EXIT

# Prints the bin folder of the highest PostgreSQL version installed.
find_bin_dir() {
  local dir
  dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$dir" ] || [ ! -x "$dir/initdb" ] || [ ! -x "$dir/pg_ctl" ]; then
    die "no PostgreSQL server in /usr/lib/postgresql/*/bin; install Debian's postgresql package (apt-get install postgresql), as .ci/run does"
  fi
  echo "$dir"
}

# Runs a command as `owner`: directly when that is the current user, with
# runuser when the script runs as root.
as_owner() {
  if [ "$(id -un)" = "$owner" ]; then
    "$@"
  elif [ "$(id -u)" -eq 0 ]; then
    runuser -u "$owner" -- "$@"
  else
    die "the cluster belongs to $owner; run this script as $owner or as root"
  fi
}

# Prints a free TCP port on 127.0.0.1, or BROKER_TEST_POSTGRES_PORT.
choose_port() {
  if [ -n "${BROKER_TEST_POSTGRES_PORT:-}" ]; then
    echo "$BROKER_TEST_POSTGRES_PORT"
    return
  fi
  command -v python3 >/dev/null || die "python3 not found; it picks a free port (or set BROKER_TEST_POSTGRES_PORT)"
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Sets `dir` to the folder named by the argument or BROKER_TEST_POSTGRES_DIR,
# after checking that this script made it, and `owner` to its owner.
open_cluster() {
  dir=${1:-${BROKER_TEST_POSTGRES_DIR:-}}
  [ -n "$dir" ] || die "no cluster named; set BROKER_TEST_POSTGRES_DIR (eval \"\$(ci/postgres.sh start)\" does) or pass its folder"
  [ -d "$dir" ] || return 1
  [ -f "$dir/$MARKER" ] || die "$dir was not made by ci/postgres.sh (no $MARKER file); leaving it alone"
  owner=$(stat -c %U "$dir/data")
  return 0
}

is_running() {
  as_owner "$bin/pg_ctl" status -D "$dir/data" >/dev/null 2>&1
}

# Starts the server of `dir` and waits until it accepts connections.
start_server() {
  if ! as_owner "$bin/pg_ctl" start -D "$dir/data" -l "$dir/postgres.log" -w -t "$PG_CTL_TIMEOUT" >&2; then
    log "the server did not start; the end of $dir/postgres.log:"
    tail -n 20 "$dir/postgres.log" >&2 || true
    return 1
  fi
}

# Prints the settings of `dir` for the caller's `eval`.
print_exports() {
  local url
  url=$(cat "$dir/url")
  printf 'export BROKER_TEST_DATABASE_URL=%q\n' "$url"
  printf 'export BROKER_TEST_POSTGRES_DIR=%q\n' "$dir"
}

# Writes the server settings and the client authentication rules of a new
# cluster.
configure() {
  local port=$1
  as_owner tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF

# Set by ci/postgres.sh for the tests.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/socket'
max_connections = 400
fsync = on
synchronous_commit = on
full_page_writes = on
log_min_messages = warning
EOF
  as_owner tee "$dir/data/pg_hba.conf" >/dev/null <<EOF
# Set by ci/postgres.sh: trust on the Unix socket and loopback, nothing else.
local all all trust
host all all 127.0.0.1/32 trust
EOF
}

# Creates a cluster in a new folder, starts it and creates the test role
# and database.
create_cluster() {
  local parent=${TMPDIR:-/tmp}
  dir=$(mktemp -d "$parent/broker-postgres.XXXXXX")
  touch "$dir/$MARKER"
  if [ "$(id -u)" -eq 0 ]; then
    owner=postgres
    id -u postgres >/dev/null 2>&1 \
      || die "no postgres user to run the server as root; install Debian's postgresql package, which creates it"
    chown postgres: "$dir"
    runuser -u postgres -- test -w "$dir" \
      || die "the postgres user cannot write to $dir; set TMPDIR to a folder it can reach"
  else
    owner=$(id -un)
  fi

  local port socket
  port=$(choose_port)
  socket="$dir/socket/.s.PGSQL.$port"
  # Unix socket paths are limited to 107 bytes on Linux.
  [ "${#socket}" -le 107 ] || die "the socket path $socket is too long; set TMPDIR to a shorter folder"
  as_owner mkdir -m 700 "$dir/socket"

  log "creating a PostgreSQL $(basename "$(dirname "$bin")") cluster in $dir/data"
  as_owner "$bin/initdb" -D "$dir/data" --username=postgres --auth=trust \
    --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || { tail -n 20 "$dir/initdb.log" >&2; die "initdb failed; its output is in $dir/initdb.log"; }
  configure "$port"
  start_server || die "the server in $dir did not start"

  as_owner "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir/socket" -p "$port" -U postgres -d postgres \
    -c "CREATE ROLE $ROLE LOGIN" -c "CREATE DATABASE $DATABASE OWNER $ROLE" >&2 \
    || die "failed to create the role and database $ROLE in the server in $dir"
  echo "postgresql://$ROLE@127.0.0.1:$port/$DATABASE" >"$dir/url"
  log "the server listens on 127.0.0.1:$port"
}

# After a failed start of a new cluster, stops its server if it runs and
# deletes its folder, so a failure leaves nothing behind.
discard_failed_cluster() {
  if [ -n "${dir:-}" ] && [ -f "$dir/$MARKER" ]; then
    if [ -f "$dir/data/postmaster.pid" ]; then
      as_owner "$bin/pg_ctl" stop -D "$dir/data" -m immediate -w -t "$PG_CTL_TIMEOUT" >&2 || true
    fi
    rm -rf "$dir"
  fi
}

start() {
  if [ -n "${BROKER_TEST_POSTGRES_DIR:-}" ] && open_cluster "$BROKER_TEST_POSTGRES_DIR"; then
    if is_running; then
      log "the server in $dir already runs"
    else
      log "starting the server in $dir again"
      start_server || die "the server in $dir did not start"
    fi
  else
    dir=""
    creating=1
    create_cluster
    creating=""
  fi
  print_exports
}

stop() {
  if ! open_cluster "${1:-}"; then
    log "$dir does not exist; nothing to stop"
    return 0
  fi
  if is_running; then
    as_owner "$bin/pg_ctl" stop -D "$dir/data" -m fast -w -t "$PG_CTL_TIMEOUT" >&2 \
      || die "pg_ctl failed to stop the server in $dir; its folder is kept"
  fi
  rm -rf "$dir"
  log "stopped the server and deleted $dir"
}

restart() {
  open_cluster "${1:-}" || die "${dir} does not exist; start a server with ci/postgres.sh start"
  as_owner "$bin/pg_ctl" restart -D "$dir/data" -m fast -l "$dir/postgres.log" -w -t "$PG_CTL_TIMEOUT" >&2 \
    || { tail -n 20 "$dir/postgres.log" >&2; die "pg_ctl failed to restart the server in $dir"; }
}

bin=$(find_bin_dir)
case "$command" in
  start) start ;;
  stop) stop "${2:-}" ;;
  restart) restart "${2:-}" ;;
  *) die "unknown command '${command}'; usage: ci/postgres.sh start|stop [DIR]|restart [DIR]" ;;
esac
