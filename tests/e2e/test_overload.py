"""Overload and cardinality (issue 10), against the real binary.

- Overload: `otel-anomaly loadgen` offers 10x the sidecar's measured
  saturation rate for a bounded time, with the write-ahead queue on and a
  small `wal.max_bytes`. Peak RSS stays under RSS_BOUND_MIB, the sidecar
  refuses quickly with RESOURCE_EXHAUSTED (RetryInfo), and afterwards it
  drains, accepts again, and the output has every acknowledged record.
- Cardinality explosion: spans with distinct names (CARD_SPANS of them; a
  million with OVERLOAD_LONG=1) against `detect.spans.max_keys`: the key
  count stays at the cap, the overflow is counted, memory stays bounded.
"""

import json
import os
import subprocess
import time

from conftest import BINARY, free_port, http, wait_until
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from test_wal_faults import Restartable, report

LONG = os.environ.get("OVERLOAD_LONG") == "1"
# Peak RSS allowed under overload (debug build; the WAL holds the excess on disk).
RSS_BOUND_MIB = 600
CARD_SPANS = 1_000_000 if LONG else 200_000
MAX_KEYS = 10_000


def rss_peak_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


class Sink:
    def __init__(self, workdir):
        self.port = free_port()
        self.log = open(workdir / f"sink-{self.port}.log", "w")
        self.proc = subprocess.Popen([str(BINARY), "bench-sink", "--listen", f"127.0.0.1:{self.port}"],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(lambda: http("GET", self.url + "/_sink/stats", timeout=2)[0] == 200, what="bench-sink")

    def docs(self) -> int:
        status, body = http("GET", self.url + "/_sink/stats")
        assert status == 200, body
        return int(body["bulk_docs"])

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()


def loadgen(port: int, *extra) -> dict:
    out = subprocess.run([str(BINARY), "loadgen", "--target", f"127.0.0.1:{port}", "--json", *extra],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_overload_at_10x_saturation_stays_bounded_refuses_fast_and_recovers(workdir):
    sink = Sink(workdir)
    sc = Restartable(workdir, {
        "environment": "overload",
        # A small queue, so that 8 s of overload fill it even on a loaded machine.
        "receiver": {"max_request_bytes": 4 << 20, "max_decompressed_bytes": 4 << 20},
        "wal": {"max_bytes": 8 << 20, "segment_bytes": 1 << 20},
        "export": {"elasticsearch": {"urls": [sink.url], "bulk": {"flush_interval": "100ms"}}},
    })
    try:
        sc.start()
        wait_until(lambda: http("GET", sc.admin + "/readyz")[0] == 200, what="ready")
        # Saturation: what the sidecar scores and delivers per second, flat out, for a few seconds.
        before = sink.docs()
        t0 = time.monotonic()
        sat_run = loadgen(sc.grpc_port, "--duration", "4s", "--concurrency", "4")
        wait_until(lambda: sink.docs() - before >= sat_run["records_acked"], timeout=120, what="saturation run delivered")
        sat = (sink.docs() - before) / (time.monotonic() - t0)
        # 10x that, for a bounded time.
        over = loadgen(sc.grpc_port, "--rate", str(int(10 * sat)), "--duration", "8s", "--concurrency", "32", "--timeout", "5s")
        peak = rss_peak_mib(sc.proc.pid)
        refused = sc.metric("otel_anomaly_rejected_records_total", reason="wal_full")
        wal_bytes_max = 8 << 20
        assert over["requests_refused"] > 0, over
        assert refused > 0
        assert over["requests_failed"] == 0, over["error_samples"]
        assert sc.metric("otel_anomaly_wal_bytes") <= wal_bytes_max
        assert peak < RSS_BOUND_MIB, f"peak RSS {peak:.0f} MiB"
        # Recovers: drains what it acknowledged, then accepts again.
        acked = sat_run["records_acked"] + over["records_acked"]
        wait_until(lambda: sink.docs() - before >= acked, timeout=240, interval=0.5, what="every acknowledged record delivered")
        after = loadgen(sc.grpc_port, "--requests", "20", "--rate", "2000", "--concurrency", "2")
        assert after["requests_ok"] == 20 and after["requests_refused"] == 0, after
        counts = {
            "saturation_records_per_s": round(sat),
            "offered_records_per_s": int(10 * sat),
            "requests_ok": over["requests_ok"],
            "requests_refused": over["requests_refused"],
            "latency_p50_us": over["latency"].get("p50_us"),
            "latency_p99_us": over["latency"].get("p99_us"),
            "peak_rss_mib": round(peak),
            "rss_bound_mib": RSS_BOUND_MIB,
            "delivered": sink.docs() - before,
            "acknowledged": acked + after["records_acked"],
        }
        report("overload_10x", counts, workdir)
        wait_until(lambda: sink.docs() - before >= counts["acknowledged"], timeout=60, what="last run delivered")
        sc.stop()
    finally:
        sc.cleanup()
        sink.stop()


def test_cardinality_explosion_is_capped_and_counted(workdir):
    sink = Sink(workdir)
    sc = Restartable(workdir, {
        "environment": "cardinality",
        "detect": {"spans": {"max_keys": MAX_KEYS}},
        "export": {"elasticsearch": {"urls": [sink.url], "bulk": {"flush_interval": "100ms"}}},
    })
    try:
        sc.start()
        url = f"http://127.0.0.1:{sc.http_port}/v1/traces"
        per_req = 5000
        now = time.time_ns()
        sent = 0
        rss_at_cap = None
        while sent < CARD_SPANS:
            spans = [
                Span(trace_id=(i + 1).to_bytes(16, "big"), span_id=(i + 1).to_bytes(8, "big"), name=f"op-{i}",
                     kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=now - 10**9, end_time_unix_nano=now - 10**9 + 5_000_000)
                for i in range(sent, sent + per_req)
            ]
            req = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
                resource=Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="card"))]),
                scope_spans=[ScopeSpans(spans=spans)])])
            body = req.SerializeToString()
            for _ in range(50):
                status, _ = http("POST", url, body, headers={"Content-Type": "application/x-protobuf"}, timeout=30)
                if status == 200:
                    break
                assert status in (429, 503), status
                time.sleep(0.2)
            assert status == 200
            sent += per_req
            if rss_at_cap is None and sent >= 4 * MAX_KEYS:
                rss_at_cap = rss_peak_mib(sc.proc.pid)
        wait_until(lambda: sink.docs() >= CARD_SPANS, timeout=600, interval=1.0, what="every span delivered")
        wait_until(lambda: sc.metric("otel_anomaly_detector_overflow_records_total", signal="traces") > 0, timeout=10, what="overflow counted")
        keys = sc.metric("otel_anomaly_detector_keys", signal="traces")
        overflow = sc.metric("otel_anomaly_detector_overflow_records_total", signal="traces")
        evicted = sc.metric("otel_anomaly_detector_evicted_keys_total", signal="traces")
        peak = rss_peak_mib(sc.proc.pid)
        counts = {"distinct_span_names": CARD_SPANS, "max_keys": MAX_KEYS, "keys_tracked": keys,
                  "overflow_records": overflow, "evicted_keys": evicted,
                  "peak_rss_mib_after_4x_cap": round(rss_at_cap), "peak_rss_mib_end": round(peak)}
        report("cardinality", counts, workdir)
        assert keys <= MAX_KEYS + 16  # the cap is split over 16 shards, rounded up
        assert overflow + evicted > 0 and overflow > 0
        assert overflow + keys + evicted >= CARD_SPANS * 0.5
        # Memory is bounded by the cap, not the names: growing the names 5x
        # after the cap was reached adds little.
        assert peak < rss_at_cap + 150, counts
        sc.stop()
    finally:
        sc.cleanup()
        sink.stop()
