#!/usr/bin/env bash
# Times `otel-anomaly train` (release build) on N documents of synthetic
# history in a local Elasticsearch-compatible server. Everything stays on
# loopback; the server and its data are removed at the end.
#
#   bash benches/train.sh [--server noida|osmem|replay] [--profile small|full]
#                         [--connections C] [N]
#
#   bash benches/train.sh                      # 1,000,000 small documents in noida-db
#   bash benches/train.sh 20000                # smoke
#   bash benches/train.sh --server osmem 100000
#
# --server noida: noida-db (Elasticsearch API, point in time + search_after;
#   data streams). --server osmem: osmem-server (OpenSearch API, in memory;
#   plain indices of the same names, read with a scroll; the seeder installs
#   lean index templates, see benches/train_seed.py). --server replay:
#   benches/train_replay.py, which serves the same history from memory,
#   pre-encoded, to measure `train` without a server's cost (not an
#   Elasticsearch; nothing is seeded).
# --profile: document size (benches/train_seed.py); --connections: concurrent
#   bulk connections of the seeder. PAGE_SIZE=N sets train's page size (5000).
# The server is stopped when its memory passes MAX_SERVER_RSS_MIB (8192).
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER=noida
PROFILE=small
CONNECTIONS=2
N=1000000
while [ $# -gt 0 ]; do
  case "$1" in
    --server) SERVER="$2"; shift 2 ;;
    --profile) PROFILE="$2"; shift 2 ;;
    --connections) CONNECTIONS="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) N="$1"; shift ;;
  esac
done
PAGE="${PAGE_SIZE:-5000}"
MAX_RSS_MIB="${MAX_SERVER_RSS_MIB:-8192}"
case "$SERVER" in noida|osmem|replay) ;; *) echo "--server must be noida, osmem or replay" >&2; exit 2 ;; esac

WORK="$(mktemp -d)"
SERVER_PID=""
WATCH_PID=""
cleanup() {
  [ -n "$WATCH_PID" ] && kill "$WATCH_PID" 2>/dev/null || true
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  [ -n "$SERVER_PID" ] && wait "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# A port below the ephemeral range, free now (as the test harness picks them).
PORT="$(python3 -c '
import random, socket
for _ in range(2000):
    p = 20000 + random.randrange(12000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); print(p); break
    except OSError: pass
    finally: s.close()
')"
URL="http://127.0.0.1:$PORT"
SEED_ARGS=()
if [ "$SERVER" = noida ]; then
  # The binary itself: the `noida-db` command is a Python wrapper whose
  # child would outlive a kill of the wrapper.
  NOIDA_BIN="$(python3 -c "import os; from importlib.resources import files; p = str(files('noida_db').joinpath('noida-db')); os.chmod(p, 0o755); print(p)")"
  "$NOIDA_BIN" start --only elasticsearch --elasticsearch-port "$PORT" --host 127.0.0.1 \
    --data-dir "$WORK/noida" >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  SERVER_NAME="noida-db $(pip show noida-db 2>/dev/null | sed -n 's/^Version: //p')"
elif [ "$SERVER" = replay ]; then
  python3 benches/train_replay.py --port "$PORT" --docs "$N" --env bench --profile "$PROFILE" \
    --max-seconds 7200 >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  SERVER_NAME="replay server (benches/train_replay.py)"
else
  OSMEM_BIN="$(python3 -c 'import osmem_server; print(osmem_server.resolve_binary())')"
  "$OSMEM_BIN" --addr "127.0.0.1:$PORT" --no-stdin-watch --no-ja >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  SERVER_NAME="osmem-server $(pip show osmem-server 2>/dev/null | sed -n 's/^Version: //p')"
  SEED_ARGS+=(--lean-mapping)
fi
# Up to 10 minutes (the replay server generates the whole history first).
for _ in $(seq 1 6000); do
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; exit 1; }
  curl -fsS "$URL/" >/dev/null 2>&1 && break
  sleep 0.1
done

rss_mib() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$SERVER_PID/status" 2>/dev/null || echo 0; }
cpu_s() { awk '{print ($14 + $15) / 100}' "/proc/$SERVER_PID/stat" 2>/dev/null || echo 0; }
# Memory guard: at most one day of 2 s checks; stops the server past the cap.
(
  peak=0
  for _ in $(seq 1 43200); do
    kill -0 "$SERVER_PID" 2>/dev/null || exit 0
    r="$(rss_mib)"
    [ "$r" -gt "$peak" ] && peak="$r" && echo "$peak" >"$WORK/server-peak-rss"
    if [ "$r" -gt "$MAX_RSS_MIB" ]; then
      echo "server memory ${r} MiB passed ${MAX_RSS_MIB} MiB: stopping it" >&2
      kill "$SERVER_PID"
      exit 0
    fi
    sleep 2
  done
) &
WATCH_PID=$!

if [ "$SERVER" = replay ]; then
  echo "==> $SERVER_NAME at $URL: $N documents ($PROFILE) held in memory"
else
  echo "==> $SERVER_NAME at $URL: seeding $N documents ($PROFILE, $CONNECTIONS connection(s))"
  python3 benches/train_seed.py --url "$URL" --docs "$N" --env bench --profile "$PROFILE" \
    --connections "$CONNECTIONS" "${SEED_ARGS[@]}"
fi
echo "server before train: $(rss_mib) MiB resident, $(cpu_s) CPU-s so far"

# Built after seeding, so that a first build overlaps nothing that is timed.
# TRAIN_BIN=path uses that binary instead (the CI smoke uses the debug build).
if [ -n "${TRAIN_BIN:-}" ]; then
  BIN="$TRAIN_BIN"
else
  cargo build --release --locked --bin otel-anomaly
  BIN=target/release/otel-anomaly
fi
echo "==> train ($BIN, page size $PAGE)"
CPU0="$(cpu_s)"
# /usr/bin/time (Debian package `time`) gives train's CPU and peak memory;
# without it only the summary's wall time is printed.
TIMER=()
if [ -x /usr/bin/time ]; then
  TIMER=(/usr/bin/time -f "train: wall %e s, user %U s, sys %S s, max RSS %M KiB")
else
  echo "(no /usr/bin/time: install the Debian package 'time' for train's CPU and memory)"
fi
"${TIMER[@]}" "$BIN" train --es "$URL" --environment bench --since 15d --page-size "$PAGE" --out "$WORK/model.snap"
CPU1="$(cpu_s)"
echo "server during train: $(python3 -c "print(round($CPU1 - $CPU0, 1))") CPU-s; peak server RSS $(cat "$WORK/server-peak-rss" 2>/dev/null || echo '?') MiB"
ls -l "$WORK/model.snap"
