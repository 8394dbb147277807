#!/usr/bin/env bash
# Runs every check that CI runs. It checks formatting, runs clippy with
# warnings as errors for every feature set, builds the docs, and runs the
# unit, core, property and doc tests. Then it runs the conformance suite once
# per runtime and storage pair and the multi-node test of three brokers on
# one PostgreSQL log, checks a server of each runtime and one of the postgres
# storage against docs/openapi.yaml with schemathesis (ci/api-check.sh),
# runs the browser test of the debug page once per
# runtime, and the browser test of examples/live-form once. It prints a
# summary line per feature set, per pair and per runtime, and exits non-zero
# if anything failed.
#
# The browser tests need Debian's chromium package, Node.js and npm, and
# `npm ci` run in tests/browser and in examples/live-form; .ci/run installs
# them. Without them their step fails with the missing piece named.
#
# The postgres storage's unit, model and conformance tests and its API check
# need a PostgreSQL server. The script starts a throwaway one from Debian's
# postgresql package with ci/postgres.sh, and stops it and deletes its data
# when it exits. Without the package, ci/postgres.sh names it in its error
# and those steps fail. The multi-node test starts a server of its own.
# Usage: ci/test.sh   (from anywhere inside the repository)
set -uo pipefail
cd "$(dirname "$0")/.."

# Every feature alone, the library with none, and the sets the tests run on.
feature_sets=(
  "default"
  "--no-default-features"
  "--no-default-features --features redb"
  "--no-default-features --features sled"
  "--no-default-features --features tokio-axum"
  "--no-default-features --features async-std-tide"
  "--no-default-features --features async-std-tide,sled,cli"
  "--no-default-features --features postgres"
  "--no-default-features --features tokio-axum,postgres,cli"
  "--all-features"
)

# Feature sets whose docs are built with warnings as errors: the ones docs
# are published with. With fewer features, links to absent modules break.
doc_sets=("default" "--all-features")

# Feature sets whose tests run. The conformance suite runs separately below.
test_sets=("default" "--no-default-features --features async-std-tide,sled,cli")

# (module, runtime + storage) of each conformance pair; all need --all-features.
pairs=(
  "tokio_axum_redb:tokio-axum + redb"
  "tokio_axum_sled:tokio-axum + sled"
  "tokio_axum_postgres:tokio-axum + postgres"
  "async_std_tide_redb:async-std-tide + redb"
  "async_std_tide_sled:async-std-tide + sled"
  "async_std_tide_postgres:async-std-tide + postgres"
)

summary=()
failed=0

# Runs a command under a label; records a failure without stopping.
step() {
  local label=$1
  shift
  echo "::: $label: $*"
  if "$@"; then
    return 0
  fi
  failed=1
  return 1
}

contains() {
  local wanted=$1
  shift
  local item
  for item in "$@"; do
    [ "$item" = "$wanted" ] && return 0
  done
  return 1
}

# A PostgreSQL server for the postgres storage, stopped at exit. It is always
# a new one, even when the calling shell names another in
# BROKER_TEST_POSTGRES_DIR, so the script stops only what it started.
postgres_error=""
if postgres_settings=$(env -u BROKER_TEST_POSTGRES_DIR ci/postgres.sh start); then
  eval "$postgres_settings"
  trap 'ci/postgres.sh stop' EXIT
  # Without these traps, SIGINT or SIGTERM would end the script without the
  # EXIT trap, and leave the server running.
  trap 'exit 130' INT
  trap 'exit 143' TERM
else
  postgres_error="ci/postgres.sh could not start a PostgreSQL server; see its error above"
  unset BROKER_TEST_DATABASE_URL BROKER_TEST_POSTGRES_DIR
  failed=1
  summary+=("postgres: FAILED ($postgres_error)")
fi

if step format cargo fmt --all -- --check; then
  summary+=("format: ok")
else
  summary+=("format: FAILED (run cargo fmt)")
fi

for set in "${feature_sets[@]}"; do
  flags=()
  [ "$set" != "default" ] && read -r -a flags <<<"$set"
  result="ok"
  step "clippy [$set]" cargo clippy --all-targets "${flags[@]}" -- -D warnings || result="clippy FAILED"
  if [ "$result" = ok ] && contains "$set" "${doc_sets[@]}"; then
    step "doc [$set]" env RUSTDOCFLAGS="-D warnings" cargo doc --no-deps "${flags[@]}" || result="doc FAILED"
  fi
  if [ "$result" = ok ] && contains "$set" "${test_sets[@]}"; then
    step "test [$set]" cargo test "${flags[@]}" || result="tests FAILED"
  fi
  summary+=("features [$set]: $result")
done

# The library tests with every feature on, then the conformance suite pair
# by pair, all from one build.
if step "test [--all-features]" cargo test --all-features --lib --test core --test properties \
  --test storage_model \
  && step "doctest [--all-features]" cargo test --all-features --doc; then
  summary+=("tests [--all-features]: ok")
else
  summary+=("tests [--all-features]: FAILED")
fi
for entry in "${pairs[@]}"; do
  module=${entry%%:*}
  name=${entry#*:}
  if [[ $module == *_postgres ]] && [ -n "$postgres_error" ]; then
    summary+=("conformance [$name]: FAILED (no PostgreSQL server)")
    continue
  fi
  if step "conformance [$name]" cargo test --all-features --test conformance -- "${module}::"; then
    summary+=("conformance [$name]: ok")
  else
    summary+=("conformance [$name]: FAILED")
  fi
done

# Three brokers on one PostgreSQL log, with a server of the test's own that
# it restarts, so the shared server above is not needed.
if step "multi-node [postgres]" cargo test --all-features --test multinode; then
  summary+=("multi-node [postgres]: ok")
else
  summary+=("multi-node [postgres]: FAILED")
fi

# The API description against a running server of each runtime, and of the
# postgres storage on one, with schemathesis (ci/api-check.sh).
api_pairs=("tokio-axum redb" "async-std-tide sled" "tokio-axum postgres")
if step "build [--all-features]" cargo build --all-features --bin broker; then
  for pair in "${api_pairs[@]}"; do
    read -r runtime storage <<<"$pair"
    if [ "$storage" = postgres ] && [ -n "$postgres_error" ]; then
      summary+=("api description [$runtime + $storage]: FAILED (no PostgreSQL server)")
      continue
    fi
    if step "api description [$runtime + $storage]" ci/api-check.sh target/debug/broker "$runtime" "$storage"; then
      summary+=("api description [$runtime + $storage]: ok")
    else
      summary+=("api description [$runtime + $storage]: FAILED")
    fi
  done
else
  summary+=("api description: FAILED (build)")
fi

# The debug page in headless Chromium, once per runtime, on the binary that
# the conformance suite built with every feature on.
browser_runtimes=("tokio-axum" "async-std-tide")
chromium=${CHROMIUM:-/usr/bin/chromium}

# Runs the browser test against one runtime, within a bounded time.
browser_test() {
  (
    cd tests/browser \
      && BROKER_BIN="$PWD/../../target/debug/broker" BROKER_RUNTIME="$1" CHROMIUM="$chromium" \
        timeout 300 npm test
  )
}

# Builds examples/live-form and drives it against one runtime, within a
# bounded time.
live_form_test() {
  (
    cd tests/browser \
      && BROKER_BIN="$PWD/../../target/debug/broker" BROKER_RUNTIME="$1" CHROMIUM="$chromium" \
        timeout 300 npm run test:live-form
  )
}

browser_missing=""
if [ ! -x "$chromium" ]; then
  browser_missing="no Chromium at $chromium; install Debian's chromium package (apt-get install chromium), as .ci/run does"
elif ! command -v npm >/dev/null; then
  browser_missing="npm not found; install Node.js and npm, as .ci/run does"
elif [ ! -d tests/browser/node_modules/playwright-core ]; then
  browser_missing="playwright-core is not installed; run npm ci in tests/browser, as .ci/run does"
fi
if [ -n "$browser_missing" ]; then
  echo "::: browser: $browser_missing" >&2
  failed=1
  summary+=("browser: FAILED ($browser_missing)")
elif step "build [broker, --all-features]" cargo build --all-features --bin broker; then
  for runtime in "${browser_runtimes[@]}"; do
    if step "browser [$runtime]" browser_test "$runtime"; then
      summary+=("browser [$runtime]: ok (screenshots in target/browser/)")
    else
      summary+=("browser [$runtime]: FAILED")
    fi
  done
  # The conformance suite checks that both runtimes serve the same API, so
  # the example runs on one.
  if [ ! -x examples/live-form/node_modules/.bin/vite ]; then
    echo "::: live form: Vite is not installed; run npm ci in examples/live-form, as .ci/run does" >&2
    failed=1
    summary+=("live form [tokio-axum]: FAILED (Vite is not installed; run npm ci in examples/live-form)")
  elif step "live form [tokio-axum]" live_form_test tokio-axum; then
    summary+=("live form [tokio-axum]: ok (screenshots target/browser/live-form-a.png, live-form-b.png)")
  else
    summary+=("live form [tokio-axum]: FAILED")
  fi
else
  summary+=("browser: FAILED (the broker binary did not build)")
fi

echo
echo "::: summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
