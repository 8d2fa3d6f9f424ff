"""Processor mode end to end (issue 9): the real OpenTelemetry Python SDK →
sidecar A (processor mode, forwards over OTLP) → a real collector hop (Rotel,
from PyPI) → sidecar B (NDJSON file sink). Every record arrives once, with the
anomaly attributes A added and its own attributes intact.
"""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, free_port, wait_until
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind

ANOMALY_KEYS = ("anomaly.score", "anomaly.severity", "anomaly.explanation")


def rotel_agent() -> Path:
    """The rotel-agent binary, installed into the benchmark venv on first use
    (the same pinned version the benchmarks use)."""
    sys.path.insert(0, str(ROOT / "benches"))
    try:
        import e2e  # type: ignore
    finally:
        sys.path.pop(0)
    return Path(e2e.ensure_rotel())


class Rotel:
    """A real Rotel agent: OTLP in (gRPC and HTTP), `--exporter otlp` out."""

    def __init__(self, workdir: Path, exporter_endpoint: str):
        self.grpc_port, self.http_port = free_port(), free_port()
        self.log_path = workdir / f"rotel-{self.grpc_port}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(rotel_agent()), "start",
             "--otlp-grpc-endpoint", f"127.0.0.1:{self.grpc_port}",
             "--otlp-http-endpoint", f"127.0.0.1:{self.http_port}",
             "--pid-file", str(workdir / f"rotel-{self.grpc_port}.pid"),
             "--log-file", str(workdir / f"rotel-{self.grpc_port}.file.log"),
             "--batch-timeout", "100ms",
             "--exporter", "otlp", "--otlp-exporter-endpoint", exporter_endpoint],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        import socket

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"rotel exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.grpc_port)) == 0

        wait_until(listening, timeout=30, what="rotel to listen")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()


@pytest.fixture
def rotel_factory(workdir):
    started = []

    def make(endpoint):
        r = Rotel(workdir, endpoint)
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


def ndjson(sidecar, prefix):
    out = []
    for f in sorted((sidecar.dir / "data" / "ndjson").glob(prefix + "*.ndjson")):
        for line in f.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line still being written
    return out


def make_spans(n):
    mem = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": "cart", "deployment.tier": "gold"}))
    tp.add_span_processor(SimpleSpanProcessor(mem))
    tracer = tp.get_tracer("chain", "1.2.3")
    first = None
    for i in range(n):
        links = [Link(first.get_span_context(), {"link.kind": "retry-of"})] if first is not None and i % 10 == 0 else []
        span = tracer.start_span("GET /cart" if i % 2 else "POST /pay", kind=SpanKind.SERVER,
                                 attributes={"test.seq": i, "http.route": "/cart", "ratio": i / 7}, links=links)
        span.add_event("cache.miss", {"key": f"k{i}"})
        span.end()
        first = first or span
    return mem.get_finished_spans()


def test_chain_sdk_to_processor_to_rotel_to_sidecar(sidecar_factory, rotel_factory):
    # Sidecar B: the end of the chain, writing NDJSON.
    b = sidecar_factory({"environment": "downstream"})
    rotel = rotel_factory(f"http://127.0.0.1:{b.grpc_port}")
    # Sidecar A: processor mode, forwarding to Rotel over gRPC; no files of its own.
    a = sidecar_factory({
        "environment": "upstream",
        "export": {"otlp": {"protocol": "grpc", "endpoint": f"http://127.0.0.1:{rotel.grpc_port}",
                            "retry": {"initial_backoff": "100ms", "max_backoff": "1s"}}},
    })

    spans = make_spans(300)
    # Protobuf over HTTP (A splices into the sender's bytes) and over gRPC (A re-encodes).
    assert HttpSpanExporter(endpoint=a.http_base + "/v1/traces", timeout=30).export(spans[:200]) == SpanExportResult.SUCCESS
    assert GrpcSpanExporter(endpoint=a.grpc_endpoint, insecure=True, timeout=30).export(spans[200:]) == SpanExportResult.SUCCESS

    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=a.grpc_endpoint, insecure=True, timeout=30),
                                           export_interval_millis=3_600_000)
    mp = MeterProvider(resource=Resource.create({"service.name": "cart"}), metric_readers=[reader])
    meter = mp.get_meter("chain")
    counter = meter.create_counter("orders")
    hist = meter.create_histogram("checkout.duration", unit="ms")
    for round_ in range(3):
        counter.add(2, {"route": "/cart"})
        hist.record(30 + round_, {"route": "/cart"})
        assert mp.force_flush(timeout_millis=10_000)
    mp.shutdown()

    lp = LoggerProvider(resource=Resource.create({"service.name": "cart"}))
    lp.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=a.http_base + "/v1/logs", timeout=30)))
    logger = logging.getLogger("chain-cart")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = LoggingHandler(level=logging.INFO, logger_provider=lp)
    logger.addHandler(handler)
    for i in range(20):
        logger.info("request %d done", i, extra={"test.seq": i})
    assert lp.force_flush(timeout_millis=10_000)
    logger.removeHandler(handler)
    lp.shutdown()

    points = wait_until(lambda: a.metric("otel_anomaly_received_records_total", signal="metrics"), what="points at A")
    assert points >= 6
    wait_until(lambda: len(ndjson(b, "traces-")) >= 300, timeout=60, what="300 spans at the end of the chain")
    wait_until(lambda: len(ndjson(b, "logs-")) >= 20, timeout=60, what="20 logs at the end of the chain")
    wait_until(lambda: len(ndjson(b, "metrics-")) >= points, timeout=60, what="every point at the end of the chain")
    wait_until(lambda: a.metric("otel_anomaly_queued_records") == 0, what="A settled everything")

    # Exactly once, each with A's attributes and its own intact.
    docs = ndjson(b, "traces-")
    assert len(docs) == 300
    by_seq = {}
    for d in docs:
        by_seq.setdefault(d["attributes"]["test.seq"], []).append(d)
    assert sorted(by_seq) == list(range(300))
    want = {s.attributes["test.seq"]: s for s in spans}
    for seq, [d] in by_seq.items():
        attrs = d["attributes"]
        for k in ANOMALY_KEYS:
            assert k in attrs, (k, d)
        assert isinstance(attrs["anomaly.score"], (int, float)) and 0 <= attrs["anomaly.score"] <= 100
        s = want[seq]
        assert attrs["http.route"] == "/cart" and attrs["ratio"] == pytest.approx(seq / 7)
        assert d["name"] == s.name
        assert d["trace_id"] == f"{s.context.trace_id:032x}" and d["span_id"] == f"{s.context.span_id:016x}"
        assert d["resource"]["attributes"]["deployment.tier"] == "gold"
        assert d["scope"]["name"] == "chain" and d["scope"]["version"] == "1.2.3"
        assert [e["name"] for e in d["events"]] == ["cache.miss"]
        assert d["events"][0]["attributes"]["key"] == f"k{seq}"
        if seq % 10 == 0 and seq:
            assert d["links"][0]["attributes"]["link.kind"] == "retry-of"
        # B scored it again in its own environment: A's attributes are not B's verdict.
        assert d["data_stream"]["namespace"] == "downstream"
    logs = ndjson(b, "logs-")
    assert len(logs) == 20
    assert sorted(l["attributes"]["test.seq"] for l in logs) == list(range(20))
    assert all(all(k in l["attributes"] for k in ANOMALY_KEYS) for l in logs)
    metrics = ndjson(b, "metrics-")
    assert len(metrics) == points
    assert all(all(k in m["attributes"] for k in ANOMALY_KEYS) for m in metrics)
    assert {m["metric"]["name"] for m in metrics} == {"orders", "checkout.duration"}

    # A counted what it forwarded, per signal, and gave up on nothing.
    assert a.metric("otel_anomaly_otlp_exported_records_total", signal="traces") == 300
    assert a.metric("otel_anomaly_otlp_exported_records_total", signal="logs") == 20
    assert a.metric("otel_anomaly_otlp_exported_records_total", signal="metrics") == points
    assert a.metric("otel_anomaly_otlp_dead_lettered_records_total") == 0
    # A scored every record although it encodes no documents.
    assert a.metric("otel_anomaly_scored_records_total", signal="traces") == 300
    assert a.metric("otel_anomaly_scored_records_total", signal="logs") == 20
    # A wrote no NDJSON of its own (the OTLP hop is its only output).
    assert not (a.dir / "data" / "ndjson").exists() or not any((a.dir / "data" / "ndjson").iterdir())
    a.stop()
    b.stop()
