#!/usr/bin/env bash
# The test command: lint, unit and integration tests (Rust), end-to-end tests
# (the real OpenTelemetry Python SDK against the real binary and real
# Elasticsearch-compatible servers). Installs what it needs when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
# Free disk where the build goes: the checkout peaks at about 4 GB (README).
disk() { df -h --output=avail . | tail -n 1 | tr -d ' '; }
echo "disk available: $(disk)"

step "python test dependencies"
python3 -m pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt

step "aggregator test dependencies (alertmanager, chromium, playwright-core)"
missing=()
[ -x "${ALERTMANAGER_BIN:-/usr/bin/prometheus-alertmanager}" ] || missing+=(prometheus-alertmanager)
[ -x "${CHROMIUM_BIN:-/usr/bin/chromium}" ] || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing Debian packages: ${missing[*]} (install them, or run this script as root)" >&2
    exit 1
  fi
fi
if [ ! -d tests/e2e/dashboard/node_modules/playwright-core ]; then
  npm ci --prefix tests/e2e/dashboard --no-audit --no-fund --loglevel=error
fi

if ! command -v cargo-nextest >/dev/null 2>&1 && ! cargo nextest --version >/dev/null 2>&1; then
  step "cargo-nextest missing: installing"
  cargo install --locked cargo-nextest
fi

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings

step "cargo build"
cargo build --locked

step "cargo nextest (unit + integration)"
cargo nextest run --locked --no-fail-fast
echo "disk available: $(disk)"

step "fuzz smoke (issue 10: 5 s per target; the long run is scripts/fuzz.sh 600, see docs/bad-input.md)"
bash scripts/fuzz.sh 5
if [ -n "${CI_FREE_DISK:-}" ]; then
  # A separate workspace with its own build of every dependency; CI needs it
  # no more.
  rm -rf fuzz/target
fi
echo "disk available: $(disk)"

step "helm charts (lint, render, kubernetes schemas, bad values)"
bash scripts/helm-check.sh

step "rotel (the collector hop of the processor-mode chain test; pinned, into .venv-bench)"
python3 -c 'import sys; sys.path.insert(0, "benches"); import e2e; print(e2e.ensure_rotel())'

step "end-to-end (pytest)"
python3 -m pytest tests/e2e -q -p no:cacheprovider

step "benchmark smoke (sidecar and Rotel under loadgen; completes, nothing lost; no timing assertions)"
python3 benches/e2e.py --smoke --no-build

step "train benchmark smoke (issue 6: benches/train.sh on noida-db, osmem-server and the replay server, small N, debug build; the long run is bash benches/train.sh, see BENCHMARKS.md)"
for server in noida osmem replay; do
  TRAIN_BIN=target/debug/otel-anomaly bash benches/train.sh --server "$server" 3000
done
