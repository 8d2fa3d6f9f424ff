#!/usr/bin/env python3
"""Seeds an Elasticsearch-compatible server with synthetic history in the
sidecar's document layout (spans 70 %, metric points 25 %, logs 5 %), spread
over the last 14 days, for `benches/train.sh`. Uses only the standard
library; writes with the bulk API in chunks, bounded by --docs.

--profile full: ~760 B documents with every resource attribute, scope and
explanation the sidecar writes; --profile small: ~400 B documents with only
what the detectors read (service.name as the resource, no scope, no
explanation text, no data_stream object), as a sidecar with a minimal SDK
resource writes them. --connections N: N processes, each generating and
sending its own contiguous slice of the history over its own connection.
--lean-mapping: install index templates that map the fields `train` checks
(@timestamp, duration, severity_number) and the sidecar's keyword fields,
with dynamic mapping off (everything else stays in _source, unindexed), for
servers whose memory per indexed field is the limit."""

import argparse
import json
import math
import random
import sys
import time
import urllib.request

DAY = 86_400


def rfc3339_ns(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def resource(service: str, env: str) -> dict:
    return {"attributes": {
        "service.name": service,
        "service.version": "1.4.2",
        "host.name": f"{service}-7d9f8b-x2k4p",
        "deployment.environment": env,
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
    }}


def docs(n: int, env: str, dataset: str, seed: int, lo: int = 0, hi: int | None = None,
         small: bool = False):
    """Documents lo..hi of a history of n (the same timeline whatever the slice)."""
    for index, doc in full_docs(n, env, dataset, seed, lo, n if hi is None else hi):
        if small:
            doc["resource"] = {"attributes": {"service.name": doc["resource"]["attributes"]["service.name"]}}
            doc.pop("scope", None)
            doc.pop("data_stream", None)
            doc["anomaly"].pop("explanation", None)
        yield index, doc


def full_docs(n: int, env: str, dataset: str, seed: int, lo: int, hi: int):
    rnd = random.Random(seed * 1_000_003 + lo)
    services = [f"svc-{i:02d}" for i in range(20)]
    ops = ["GET /items", "GET /items/{id}", "POST /orders", "GET /cart", "rpc Charge"]
    end = time.time_ns() - 60_000_000_000
    start = end - 14 * DAY * 1_000_000_000
    step = (end - start) // n
    for i in range(lo, hi):
        t = start + i * step
        svc = services[i % len(services)]
        hour = (t // 1_000_000_000 % DAY) / 3600
        season = 1.0 + 0.3 * math.sin(2 * math.pi * hour / 24)
        r = i % 20
        if r < 14:
            op = ops[(i // 20) % len(ops)]
            dur = int(30e6 * season * rnd.lognormvariate(0, 0.25))
            err = rnd.random() < 0.01
            yield f"traces-{dataset}-{env}", {
                "@timestamp": rfc3339_ns(t),
                "data_stream": {"type": "traces", "dataset": dataset, "namespace": env},
                "trace_id": f"{rnd.getrandbits(128):032x}",
                "span_id": f"{rnd.getrandbits(64):016x}",
                "name": op,
                "kind": "Server",
                "duration": dur,
                "status": {"code": "Error" if err else "Unset"},
                "attributes": {"http.request.method": op.split(" ")[0], "http.route": op.split(" ")[-1],
                               "http.response.status_code": 500 if err else 200},
                "resource": resource(svc, env),
                "scope": {"name": "opentelemetry.instrumentation.flask", "version": "0.48b0"},
                "anomaly": {"score": 0, "severity": "normal",
                            "explanation": f"duration {dur / 1e6:.1f} ms is within the usual range (below the p99 of 52.0 ms seen for {op} over the last 10 min)"},
            }
        elif r < 19:
            name = ["queue.depth", "process.cpu.utilization", "db.pool.usage"][i % 3]
            v = 100 * season + rnd.gauss(0, 5)
            yield f"metrics-{dataset}-{env}", {
                "@timestamp": rfc3339_ns(t),
                "data_stream": {"type": "metrics", "dataset": dataset, "namespace": env},
                "metric": {"name": name, "type": "gauge"},
                "metrics": {name: v},
                "attributes": {"pool": f"p{i % 4}"},
                "resource": resource(svc, env),
                "scope": {"name": "app"},
                "anomaly": {"score": 0, "severity": "normal", "explanation": f"{name} value {v:.1f} vs baseline 100 ± 5"},
            }
        else:
            sev = 17 if rnd.random() < 0.05 else 9
            yield f"logs-{dataset}-{env}", {
                "@timestamp": rfc3339_ns(t),
                "data_stream": {"type": "logs", "dataset": dataset, "namespace": env},
                "severity_text": "ERROR" if sev == 17 else "INFO",
                "severity_number": sev,
                "body": {"text": f"request {i} handled"},
                "attributes": {},
                "resource": resource(svc, env),
                "scope": {"name": "app"},
                "anomaly": {"score": 0, "severity": "normal", "explanation": "not scored: info"},
            }


def post(url: str, path: str, body: bytes, ctype: str = "application/x-ndjson", method: str = "POST"):
    req = urllib.request.Request(url + path, data=body, headers={"Content-Type": ctype}, method=method)
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read() or b"{}")


def lean_templates(url: str, dataset: str) -> None:
    keyword = {"type": "keyword"}
    extra = {
        "traces": {"trace_id": keyword, "span_id": keyword, "parent_span_id": keyword, "name": keyword,
                   "kind": keyword, "duration": {"type": "long"}, "status": {"properties": {"code": keyword}}},
        "metrics": {"metric": {"properties": {"name": keyword, "type": keyword, "unit": keyword}}},
        "logs": {"severity_text": keyword, "severity_number": {"type": "integer"}, "trace_id": keyword,
                 "span_id": keyword},
    }
    for signal, fields in extra.items():
        props = {"@timestamp": {"type": "date_nanos"},
                 "anomaly": {"properties": {"score": {"type": "float"}, "severity": keyword}}}
        props.update(fields)
        body = {"index_patterns": [f"{signal}-{dataset}-*"], "priority": 250,
                "template": {"mappings": {"dynamic": False, "properties": props}}}
        post(url, f"/_index_template/otel-anomaly-bench-{signal}", json.dumps(body).encode(),
             "application/json", "PUT")


def send_slice(a, k: int) -> int:
    """Worker k of a.connections: generates and sends its slice; returns documents sent."""
    lo, hi = a.docs * k // a.connections, a.docs * (k + 1) // a.connections
    body, sent, started = [], 0, time.monotonic()

    def flush():
        nonlocal body
        if not body:
            return
        reply = post(a.url, "/_bulk", ("\n".join(body) + "\n").encode())
        if reply.get("errors"):
            bad = next(i for i in reply["items"] if list(i.values())[0].get("error"))
            raise SystemExit(f"bulk item failed: {bad}")
        body = []

    for index, doc in docs(a.docs, a.env, a.dataset, a.seed, lo, hi, a.profile == "small"):
        body.append(json.dumps({"create": {"_index": index}}))
        body.append(json.dumps(doc, separators=(",", ":")))
        sent += 1
        if sent % a.chunk == 0:
            flush()
            if k == 0:
                el = time.monotonic() - started
                done = sent * a.connections
                print(f"\r~{done}/{a.docs} documents, {done / el:.0f}/s", end="", file=sys.stderr)
    flush()
    return sent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True)
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--env", default="bench")
    ap.add_argument("--dataset", default="otel")
    ap.add_argument("--chunk", type=int, default=5000, help="documents per bulk request")
    ap.add_argument("--connections", type=int, default=1, help="concurrent bulk connections (processes)")
    ap.add_argument("--profile", choices=["full", "small"], default="full")
    ap.add_argument("--lean-mapping", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.lean_mapping:
        lean_templates(a.url, a.dataset)
    started = time.monotonic()
    if a.connections > 1:
        import multiprocessing
        with multiprocessing.Pool(a.connections) as pool:
            sent = sum(pool.starmap(send_slice, [(a, k) for k in range(a.connections)]))
    else:
        sent = send_slice(a, 0)
    post(a.url, "/_refresh", b"", "application/json")
    el = time.monotonic() - started
    print(f"\nseeded {sent} documents ({a.profile}) with {a.connections} connection(s) in {el:.0f} s "
          f"({sent / el:.0f}/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
