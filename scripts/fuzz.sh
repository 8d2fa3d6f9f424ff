#!/usr/bin/env bash
# Fuzz targets (fuzz/, cargo fuzz). Installs cargo-fuzz when missing.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS defaults to 5 (the CI smoke); the long run is e.g. `scripts/fuzz.sh 600`.
# FUZZ_PROFILE=release builds optimised targets (more executions per second,
# a longer build); the default is a debug build, which builds faster.
# Works on a stable toolchain (checked with 1.95): no sanitizer (`-s none`;
# the crate forbids unsafe code, and sanitizers need nightly), debug
# assertions on. No RUSTC_BOOTSTRAP: setting it would also rebuild every
# dependency whenever it changes.
# Crashes land in fuzz/artifacts/<target>/; copy each into
# fuzz/regressions/<target>/ once fixed (tests/fuzz_inputs.rs runs them).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs="${1:-5}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(otlp_protobuf otlp_json gzip config push_api snapshot wal_segment wire_traces wire_metrics)
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "==> cargo-fuzz missing: installing"
  cargo install cargo-fuzz --locked
fi

build=(-s none --debug-assertions)
if [ "${FUZZ_PROFILE:-dev}" = "dev" ]; then
  build+=(--dev)
fi

echo "==> building the fuzz targets (${FUZZ_PROFILE:-dev})"
cargo fuzz build "${build[@]}"

summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="$(mktemp)"
  # Seeds are read but new inputs go to corpus/<t> (git-ignored).
  if ! cargo fuzz run "${build[@]}" "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz target $t FAILED (input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*' || echo '?')"
  summary+=("$t: ${runs} executions in ${secs}s, coverage ${cov}, no crash")
  rm -f "$log"
done
printf '%s\n' "${summary[@]}"
echo "fuzz: ${#targets[@]} passed, 0 failed"
