#!/usr/bin/env bash
# Times `otel-anomaly train` on N documents (default 1,000,000) of synthetic
# history in a local noida-db (Elasticsearch API, point in time), release
# build. Everything stays on loopback; the server and its data are removed
# at the end.
#
#   bash benches/train.sh            # 1,000,000 documents (seeding takes ~5 min)
#   bash benches/train.sh 20000      # smoke
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000000}"
PAGE="${PAGE_SIZE:-5000}"

cargo build --release --locked --bin otel-anomaly
BIN=target/release/otel-anomaly

WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
noida-db start --only elasticsearch --elasticsearch-port "$PORT" --host 127.0.0.1 \
  --data-dir "$WORK/noida" >"$WORK/noida.log" 2>&1 &
NOIDA=$!
trap 'kill "$NOIDA" 2>/dev/null; wait "$NOIDA" 2>/dev/null || true; rm -rf "$WORK"' EXIT
URL="http://127.0.0.1:$PORT"
for _ in $(seq 1 600); do
  curl -fsS "$URL/" >/dev/null 2>&1 && break
  sleep 0.1
done

echo "==> seeding $N documents into $URL"
python3 benches/train_seed.py --url "$URL" --docs "$N" --env bench

echo "==> train (release, page size $PAGE)"
/usr/bin/time -f "wall %e s, user %U s, sys %S s, max RSS %M KiB" \
  "$BIN" train --es "$URL" --environment bench --since 15d --page-size "$PAGE" --out "$WORK/model.snap"
ls -l "$WORK/model.snap"
