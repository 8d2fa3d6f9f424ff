#!/usr/bin/env bash
# End-to-end benchmark of the sidecar against Rotel on the same OTLP load.
#   bash benches/e2e.sh              full run (release build, ~10 min)
#   bash benches/e2e.sh --smoke      short run for CI: completes, nothing lost
#   bash benches/e2e.sh --help       every option
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 benches/e2e.py "$@"
