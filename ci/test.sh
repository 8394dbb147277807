#!/usr/bin/env bash
# Runs every check that CI runs: formatting, then for each feature set clippy
# with warnings as errors, and the tests. Prints one summary line per set.
# Usage: ci/test.sh   (from anywhere inside the repository)
set -uo pipefail
cd "$(dirname "$0")/.."

# Feature sets that must build and pass lints. The first is the default
# build, whose tests include the conformance suite.
feature_sets=(
  "default"
  "--no-default-features"
  "--no-default-features --features redb"
  "--no-default-features --features tokio-axum"
  "--all-features"
)

summary=()
failed=0

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
  # Docs are checked for the feature sets that docs are published with;
  # with fewer features, links to the missing modules cannot resolve.
  if [ "$result" = ok ] && { [ "$set" = default ] || [ "$set" = --all-features ]; }; then
    step "doc [$set]" env RUSTDOCFLAGS="-D warnings" cargo doc --no-deps "${flags[@]}" || result="doc FAILED"
  fi
  if [ "$result" = ok ]; then
    step "test [$set]" cargo test "${flags[@]}" || result="tests FAILED"
  fi
  summary+=("features [$set]: $result")
done

echo
echo "::: summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
