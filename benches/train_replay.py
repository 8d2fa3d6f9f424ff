#!/usr/bin/env python3
"""A replay server for `benches/train.sh --server replay`: holds the same
synthetic history as benches/train_seed.py (already sorted, already encoded)
and answers exactly the requests `train` makes with the point-in-time API
(`GET <index>/_mapping`, `POST <index>/_pit`, `POST /_search` with
`search_after`, `DELETE /_pit`), each page a slice joined from pre-encoded
hits. It is not an Elasticsearch: it exists to take the server's cost out of
the measurement, so that `train`'s own time and CPU on a million documents
can be measured on a machine where no real Elasticsearch-compatible server
holds a million documents (see BENCHMARKS.md, "Train"). Loopback only,
standard library only; stops after --max-seconds."""

import argparse
import bisect
import json
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import train_seed

MAPPINGS = {
    "traces": {"@timestamp": {"type": "date_nanos"}, "duration": {"type": "long"}},
    "metrics": {"@timestamp": {"type": "date_nanos"}},
    "logs": {"@timestamp": {"type": "date_nanos"}, "severity_number": {"type": "integer"}},
}


def ts_ns(s: str) -> int:
    """RFC 3339 with nanoseconds (as the seeder writes it) to ns since the epoch."""
    secs = int(datetime.strptime(s[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp())
    return secs * 1_000_000_000 + int(s[20:29])


class Store:
    def __init__(self, a):
        self.indices = {}  # name -> (timestamps, encoded hits)
        t0 = time.monotonic()
        for index, doc in train_seed.docs(a.docs, a.env, a.dataset, a.seed, small=a.profile == "small"):
            ts, hits = self.indices.setdefault(index, ([], []))
            t = ts_ns(doc["@timestamp"])
            ts.append(t)
            hits.append((f'{{"_index":"{index}","_id":"{len(hits)}","_score":null,"_source":'
                         f'{json.dumps(doc, separators=(",", ":"))},"sort":[{t},{len(hits)}]}}'))
        for ts, hits in self.indices.values():
            order = sorted(range(len(ts)), key=lambda i: ts[i])
            if order != list(range(len(ts))):
                raise SystemExit("the seeder's history is not in time order")
        n = sum(len(t) for t, _ in self.indices.values())
        print(f"replay: {n} documents in {len(self.indices)} indices ready in "
              f"{time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


def handler(store: Store):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, status: int, body: str):
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Elastic-Product", "Elasticsearch")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def body(self):
            n = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(n) or b"{}")

        def missing(self, index):
            self.reply(404, json.dumps({"error": {"type": "index_not_found_exception",
                                                  "reason": f"no such index [{index}]"}, "status": 404}))

        def do_GET(self):
            path = self.path.split("?")[0].strip("/")
            if path == "":
                return self.reply(200, '{"version":{"number":"8.15.0"},"tagline":"replay"}')
            index, _, op = path.partition("/")
            if op == "_mapping":
                if index not in store.indices:
                    return self.missing(index)
                signal = index.split("-")[0]
                return self.reply(200, json.dumps({index: {"mappings": {"properties": MAPPINGS[signal]}}}))
            self.reply(404, '{"error":{"type":"no_handler","reason":"not served"}}')

        def do_DELETE(self):
            self.body()
            self.reply(200, '{"succeeded":true,"num_freed":1}')

        def do_POST(self):
            path = self.path.split("?")[0].strip("/")
            req = self.body()
            index, _, op = path.partition("/")
            if op == "_pit":
                if index not in store.indices:
                    return self.missing(index)
                return self.reply(200, json.dumps({"id": f"pit:{index}"}))
            if path != "_search" or "pit" not in req:
                return self.reply(400, '{"error":{"type":"illegal_argument_exception","reason":"replay serves pit searches only"}}')
            pit = req["pit"]["id"]
            ts, hits = store.indices[pit.split(":", 1)[1]]
            rng = req["query"]["range"]["@timestamp"]
            lo = bisect.bisect_left(ts, int(rng["gte"]) * 1_000_000)
            hi = bisect.bisect_left(ts, int(rng["lt"]) * 1_000_000)
            if "search_after" in req:
                lo = max(lo, int(req["search_after"][1]) + 1)
            end = min(hi, lo + int(req["size"]))
            total = max(0, hi - bisect.bisect_left(ts, int(rng["gte"]) * 1_000_000))
            self.reply(200, (f'{{"pit_id":"{pit}","took":1,"timed_out":false,'
                             f'"_shards":{{"total":1,"successful":1,"skipped":0,"failed":0}},'
                             f'"hits":{{"total":{{"value":{total},"relation":"eq"}},"max_score":null,'
                             f'"hits":[{",".join(hits[lo:end])}]}}}}'))

    return H


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--env", default="bench")
    ap.add_argument("--dataset", default="otel")
    ap.add_argument("--profile", choices=["full", "small"], default="small")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=3600)
    a = ap.parse_args()
    store = Store(a)
    server = ThreadingHTTPServer(("127.0.0.1", a.port), handler(store))
    threading.Timer(a.max_seconds, server.shutdown).start()
    print(f"replay: listening on 127.0.0.1:{a.port}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
