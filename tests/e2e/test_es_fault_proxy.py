"""Elasticsearch faults through a fault-injecting HTTP proxy in front of the
real ES-compatible server (noida-db), with the write-ahead queue on (issue 10):
429 and 5xx on a share of bulk items, connection resets mid-response, slow
responses past the bulk timeout, and a full outage, while the real OTel
Python exporter sends. Nothing acknowledged is lost, nothing is stored
twice, the retry budget (export.elasticsearch.bulk.max_retries) is respected,
and only non-retryable item errors (and items past their budget) are
dead-lettered.
"""

import gzip
import http.client as httpclient
import http.server as httpserver
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from pathlib import Path

from conftest import free_port, http, wait_until
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from test_wal_faults import Restartable, make_batches, report, span_id, stored_ids

MAX_RETRIES = 3
BULK_TIMEOUT_S = 2.0


class FaultProxy:
    """HTTP/1.1 proxy to the real server; `mode` picks the fault."""

    def __init__(self, target_port: int, poison: set, bad: set, share: float = 0.25):
        self.target = target_port
        self.mode = "pass"
        self.poison, self.bad, self.share = poison, bad, share
        self.rng = random.Random(5)
        self.lock = threading.Lock()
        self.attempts = Counter()       # bulk items seen, per _id
        self.injected_retryable = Counter()  # 429/503 answered by the proxy, per _id
        self.injected_reject = Counter()
        self.faults = Counter()         # requests hit by each whole-request fault
        proxy = self

        class Handler(httpserver.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                return raw

            def _upstream(self, method, body):
                conn = httpclient.HTTPConnection("127.0.0.1", proxy.target, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("content-length", "content-encoding", "accept-encoding", "host", "connection")}
                conn.request(method, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                ctype = resp.getheader("Content-Type", "application/json")
                conn.close()
                return resp.status, ctype, data

            def _reply(self, status, ctype, data):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _reset(self, partial: bytes = b""):
                if partial:
                    self.wfile.write(partial)
                    self.wfile.flush()
                # SO_LINGER 0: close with a TCP reset.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _handle(self, method):
                body = self._body()
                mode = proxy.mode
                if mode == "outage":
                    with proxy.lock:
                        proxy.faults["outage"] += 1
                    return self._reset()
                if method == "POST" and self.path.split("?")[0].endswith("/_bulk"):
                    return self._bulk(body, mode)
                status, ctype, data = self._upstream(method, body)
                self._reply(status, ctype, data)

            def _bulk(self, body, mode):
                lines = body.split(b"\n")
                pairs = [(lines[i], lines[i + 1]) for i in range(0, len(lines) - 1, 2) if lines[i]]
                ids = [next(iter(json.loads(a).values())).get("_id") for a, _ in pairs]
                with proxy.lock:
                    proxy.attempts.update(ids)
                if mode in ("reset", "slow"):
                    # The server stores the items; the client never hears so.
                    keep = [(a, s) for (a, s), _id in zip(pairs, ids) if _id not in proxy.bad and _id not in proxy.poison]
                    status, ctype, data = self._upstream("POST", b"".join(a + b"\n" + s + b"\n" for a, s in keep))
                    with proxy.lock:
                        proxy.faults[mode] += 1
                    if mode == "reset":
                        return self._reset(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"took\":1,")
                    time.sleep(BULK_TIMEOUT_S + 1.5)
                    try:
                        return self._reply(status, ctype, data)
                    except OSError:
                        return
                fates = []
                for _id in ids:
                    if _id in proxy.bad:
                        fates.append(400)
                    elif _id in proxy.poison:
                        fates.append(429)
                    elif mode == "items" and proxy.injected_retryable[_id] < MAX_RETRIES - 1 and proxy.rng.random() < proxy.share:
                        # At most max_retries - 1 injected failures: these must end up stored.
                        fates.append(proxy.rng.choice([429, 503]))
                    else:
                        fates.append(None)
                forward = [p for p, f in zip(pairs, fates) if f is None]
                upstream_items = []
                if forward:
                    fbody = b"".join(a + b"\n" + s + b"\n" for a, s in forward)
                    status, _, data = self._upstream("POST", fbody)
                    if status != 200:
                        return self._reply(status, "application/json", data)
                    upstream_items = json.loads(data)["items"]
                items, up = [], iter(upstream_items)
                for (a, _), _id, fate in zip(pairs, ids, fates):
                    if fate is None:
                        items.append(next(up))
                        continue
                    action = next(iter(json.loads(a).keys()))
                    index = next(iter(json.loads(a).values())).get("_index")
                    err = {
                        400: {"type": "mapper_parsing_exception", "reason": "failed to parse (injected)"},
                        429: {"type": "es_rejected_execution_exception", "reason": "rejected execution (injected)"},
                        503: {"type": "unavailable_shards_exception", "reason": "primary shard not active (injected)"},
                    }[fate]
                    with proxy.lock:
                        (proxy.injected_reject if fate == 400 else proxy.injected_retryable)[_id] += 1
                    items.append({action: {"_index": index, "_id": _id, "status": fate, "error": err}})
                out = json.dumps({"took": 1, "errors": any(f is not None for f in fates), "items": items}).encode()
                self._reply(200, "application/json", out)

            def do_GET(self):
                self._handle("GET")

            def do_PUT(self):
                self._handle("PUT")

            def do_POST(self):
                self._handle("POST")

            def do_HEAD(self):
                self._handle("HEAD")

        self.port = free_port()
        self.server = httpserver.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_es_faults_via_proxy_lose_nothing_duplicate_nothing(es, workdir):
    env = "esfaultproxy"
    batches = make_batches(48, 50, seed=41)
    spans = [s for b in batches for s in b]
    rng = random.Random(9)
    chosen = rng.sample(spans, 8)
    poison = {span_id(s) for s in chosen[:3]}  # always 429: dead-lettered when the budget runs out
    bad = {span_id(s) for s in chosen[3:]}  # 400: dead-lettered at once
    proxy = FaultProxy(int(es.url.rsplit(":", 1)[1]), poison, bad)
    cfg = {
        "environment": env,
        "export": {"elasticsearch": {"urls": [f"http://127.0.0.1:{proxy.port}"], "bulk": {
            "compression": "none", "flush_interval": "100ms", "max_docs": 200, "timeout": f"{BULK_TIMEOUT_S}s",
            "max_retries": MAX_RETRIES, "initial_backoff": "50ms", "max_backoff": "400ms"}}},
    }
    sc = Restartable(workdir, cfg)
    acked = set()
    try:
        sc.start()
        exp = GrpcSpanExporter(endpoint=f"127.0.0.1:{sc.grpc_port}", insecure=True, timeout=30)
        schedule = [("items", 3.0), ("reset", 2.0), ("slow", 5.0), ("outage", 3.0), ("items", 3.0), ("pass", 0.0)]

        def faults():
            for mode, secs in schedule:
                proxy.mode = mode
                time.sleep(secs)

        ft = threading.Thread(target=faults, daemon=True)
        ft.start()
        per = max(0.05, 15.0 / len(batches))
        for b in batches:
            assert exp.export(b) == SpanExportResult.SUCCESS
            acked.update(span_id(s) for s in b)
            time.sleep(per)
        ft.join(timeout=30)
        assert proxy.mode == "pass"
        want = acked - poison - bad
        wait_until(lambda: set(stored_ids(es.url, f"traces-otel-{env}")) >= want, timeout=120, interval=1.0, what="every retryable span stored")
        dl_path = Path(sc.dir) / "data" / "dead-letter.ndjson"
        wait_until(lambda: dl_path.exists() and len(dl_path.read_text().splitlines()) >= len(poison | bad), timeout=60, what="dead letters written")
        time.sleep(1.0)
        ids = stored_ids(es.url, f"traces-otel-{env}")
        dead = [json.loads(line) for line in dl_path.read_text().splitlines()]
        dead_ids = Counter(d["_id"] for d in dead)
        counts = {
            "sent_spans": len(spans),
            "acknowledged": len(acked),
            "stored": len(ids),
            "duplicated": len(ids) - len(set(ids)),
            "dead_lettered": len(dead),
            "injected_item_retryable": sum(proxy.injected_retryable.values()),
            "injected_item_rejects": sum(proxy.injected_reject.values()),
            "request_faults": dict(proxy.faults),
        }
        report("es_fault_proxy", counts, workdir)
        # Nothing lost, nothing duplicated.
        assert set(ids) == want, f"missing {len(want - set(ids))}, unexpected {len(set(ids) - want)}"
        assert counts["duplicated"] == 0
        # Every fault actually happened.
        assert counts["injected_item_retryable"] > 0 and all(proxy.faults[m] > 0 for m in ("reset", "slow", "outage"))
        # Dead letters: only the non-retryable items and the ones past their budget, each once.
        assert set(dead_ids) == poison | bad and all(n == 1 for n in dead_ids.values()), dead_ids
        for d in dead:
            if d["_id"] in bad:
                assert "400" in d["reason"] or "mapper_parsing_exception" in d["reason"], d["reason"]
            else:
                assert "retries exhausted" in d["reason"], d["reason"]
        # Retry budget: an always-429 item is answered 429 exactly max_retries + 1 times.
        for _id in poison:
            assert proxy.injected_retryable[_id] == MAX_RETRIES + 1, (_id, proxy.injected_retryable[_id])
        # Randomly failed items were retried within the budget and stored.
        assert http("GET", sc.admin + "/readyz")[0] == 200
        assert sc.metric("otel_anomaly_dead_lettered_documents_total") == len(poison | bad)
        # Everything settled: the write-ahead queue holds nothing waiting.
        wait_until(lambda: sc.metric("otel_anomaly_queued_records") == 0, timeout=30, what="queue drained")
        sc.stop()
    finally:
        sc.cleanup()
        proxy.close()
