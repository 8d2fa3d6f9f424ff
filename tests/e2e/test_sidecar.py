"""End-to-end: the real OpenTelemetry Python SDK sends to the real sidecar,
which writes scored documents into a real Elasticsearch-compatible server."""

import logging
import math
import random
import threading
import time

from conftest import GatedProxy, es_count, es_search, http, wait_until
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode


def es_config(url, environment, **extra):
    es = {"urls": [url], "bulk": {"flush_interval": "100ms", "initial_backoff": "50ms", "max_backoff": "1s"}}
    es.update(extra)
    return {"environment": environment, "export": {"elasticsearch": es}}


def make_spans(n, services=("cart", "checkout"), names=("GET /cart", "POST /pay"), start_ns=None, rng=None):
    """Creates n finished spans (in memory) with realistic durations."""
    rng = rng or random.Random(1)
    mem = InMemorySpanExporter()
    providers = {}
    t = start_ns or time.time_ns() - 10 * 60 * 10**9
    for i in range(n):
        svc = services[i % len(services)]
        if svc not in providers:
            p = TracerProvider(resource=Resource.create({"service.name": svc}))
            p.add_span_processor(SimpleSpanProcessor(mem))
            providers[svc] = p
        tracer = providers[svc].get_tracer("e2e")
        name = names[i % len(names)]
        dur = int(rng.lognormvariate(math.log(40e6), 0.3))
        t += 10_000_000
        span = tracer.start_span(name, kind=SpanKind.SERVER, start_time=t, attributes={"i": i, "http.route": name})
        if i % 97 == 0:
            span.set_status(Status(StatusCode.ERROR, "boom"))
        span.end(end_time=t + dur)
    return mem.get_finished_spans()


def test_sdk_traces_metrics_logs_land_scored_in_es(es, sidecar_factory):
    sc = sidecar_factory(es_config(es.url, "prod"))
    spans = make_spans(300)
    # Traces over both transports.
    grpc_exp = GrpcSpanExporter(endpoint=sc.grpc_endpoint, insecure=True, timeout=30)
    http_exp = HttpSpanExporter(endpoint=sc.http_base + "/v1/traces", timeout=30)
    assert grpc_exp.export(spans[:200]) == SpanExportResult.SUCCESS
    assert http_exp.export(spans[200:]) == SpanExportResult.SUCCESS

    # Metrics: counter (cumulative sum), histogram, gauge over several collections.
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=sc.grpc_endpoint, insecure=True, timeout=30), export_interval_millis=3_600_000)
    mp = MeterProvider(resource=Resource.create({"service.name": "cart"}), metric_readers=[reader])
    meter = mp.get_meter("e2e")
    counter = meter.create_counter("orders", unit="1")
    hist = meter.create_histogram("checkout.duration", unit="ms")
    gauge = meter.create_gauge("queue.depth")
    for round_ in range(5):
        counter.add(3, {"route": "/cart"})
        hist.record(40 + round_, {"route": "/cart"})
        gauge.set(10 + round_, {"queue": "orders"})
        assert mp.force_flush(timeout_millis=10_000)
    mp.shutdown()

    # Logs over HTTP, some at ERROR.
    lp = LoggerProvider(resource=Resource.create({"service.name": "cart"}))
    lp.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=sc.http_base + "/v1/logs", timeout=30)))
    logger = logging.getLogger("e2e-cart")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = LoggingHandler(level=logging.INFO, logger_provider=lp)
    logger.addHandler(handler)
    for i in range(40):
        (logger.error if i % 10 == 0 else logger.info)("request %d done", i)
    assert lp.force_flush(timeout_millis=10_000)
    logger.removeHandler(handler)
    lp.shutdown()

    received_points = wait_until(lambda: sc.metric("otel_anomaly_received_records_total", signal="metrics"), what="metric points received")
    assert received_points >= 15
    # Everything lands, in the environment's data streams.
    wait_until(lambda: es_count(es.url, "traces-otel-prod") == 300, what="300 spans in traces-otel-prod")
    wait_until(lambda: es_count(es.url, "logs-otel-prod") == 40, what="40 logs in logs-otel-prod")
    wait_until(lambda: es_count(es.url, "metrics-otel-prod") == received_points, what="every received point in metrics-otel-prod")
    for index in ("traces-otel-prod", "metrics-otel-prod", "logs-otel-prod"):
        missing = es_count(es.url, index, {"bool": {"must_not": [{"exists": {"field": "anomaly.score"}}]}})
        assert missing == 0, f"{missing} documents in {index} without anomaly.score"
        assert es_count(es.url, index, {"exists": {"field": "anomaly.severity"}}) == es_count(es.url, index)
    # Every span is there exactly once, under its deterministic id.
    docs = es_search(es.url, "traces-otel-prod", {"match_all": {}})
    want = {f"{s.context.trace_id:032x}{s.context.span_id:016x}" for s in spans}
    assert {d["_id"] for d in docs} == want
    one = next(d for d in docs if d["name"] == "GET /cart")
    assert one["resource"]["attributes"]["service.name"] in ("cart", "checkout")
    assert one["kind"] == "Server" and one["data_stream"]["namespace"] == "prod"
    names = {d["metric"]["name"] for d in es_search(es.url, "metrics-otel-prod", {"match_all": {}})}
    assert {"orders", "checkout.duration", "queue.depth"} <= names
    assert es_count(es.url, "logs-otel-prod", {"term": {"severity_text": "ERROR"}}) == 4
    # Nothing went to another environment.
    assert es_count(es.url, "traces-otel-staging") == 0
    sc.stop()


def test_forced_resend_makes_no_duplicates(es, sidecar_factory):
    sc = sidecar_factory(es_config(es.url, "resend"))
    spans = make_spans(120, start_ns=time.time_ns() - 3600 * 10**9)
    exp = GrpcSpanExporter(endpoint=sc.grpc_endpoint, insecure=True, timeout=30)
    assert exp.export(spans) == SpanExportResult.SUCCESS
    wait_until(lambda: es_count(es.url, "traces-otel-resend") == 120, what="first delivery")
    # The collector retried after a timeout: the same spans again, over HTTP this time.
    assert HttpSpanExporter(endpoint=sc.http_base + "/v1/traces").export(spans) == SpanExportResult.SUCCESS
    wait_until(lambda: sc.metric("otel_anomaly_exported_documents_total", outcome="duplicate") == 120, what="120 duplicates recognised")
    assert es_count(es.url, "traces-otel-resend") == 120
    sc.stop()


def test_latency_shift_scores_only_the_shifted_endpoint(es, sidecar_factory):
    sc = sidecar_factory(es_config(es.url, "shift"))
    rng = random.Random(7)
    mem = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    tp.add_span_processor(SimpleSpanProcessor(mem))
    tracer = tp.get_tracer("e2e")
    t = time.time_ns() - 2 * 3600 * 10**9
    shifted_from = None
    for i in range(6000):
        t += 50_000_000
        for name in ("GET /cart", "GET /item"):
            median = 50e6
            if i >= 5600 and name == "GET /cart":
                median = 250e6  # 5× slower
                shifted_from = shifted_from or t
            dur = int(rng.lognormvariate(math.log(median), 0.3))
            s = tracer.start_span(name, kind=SpanKind.SERVER, start_time=t)
            s.end(end_time=t + dur)
    spans = mem.get_finished_spans()
    exp = GrpcSpanExporter(endpoint=sc.grpc_endpoint, insecure=True, timeout=30)
    for i in range(0, len(spans), 1000):
        assert exp.export(spans[i : i + 1000]) == SpanExportResult.SUCCESS
    wait_until(lambda: es_count(es.url, "traces-otel-shift") == len(spans), timeout=60, what="all spans stored")
    after = {"range": {"@timestamp": {"gte": shifted_from // 10**6, "format": "epoch_millis"}}}
    shifted = es_search(es.url, "traces-otel-shift", {"bool": {"filter": [after, {"term": {"name": "GET /cart"}}]}})
    others = es_search(es.url, "traces-otel-shift", {"bool": {"filter": [after, {"term": {"name": "GET /item"}}]}})
    assert len(shifted) == 400 and len(others) == 400
    mean = lambda docs: sum(d["anomaly"]["score"] for d in docs) / len(docs)
    assert mean(shifted) > 50, f"shifted spans mean score {mean(shifted):.1f}"
    assert mean(others) < 5, f"unshifted spans mean score {mean(others):.1f}"
    assert sum(d["anomaly"]["score"] >= 50 for d in others) <= 2
    top = max(shifted, key=lambda d: d["anomaly"]["score"])
    assert "GET /cart" in top["anomaly"]["explanation"] and "×" in top["anomaly"]["explanation"]
    sc.stop()


def test_full_queue_is_refused_and_the_sdk_retries_until_it_drains(es, sidecar_factory):
    es_port = int(es.url.rsplit(":", 1)[1])
    gate = GatedProxy(es_port)  # Elasticsearch "down" until opened
    sc = sidecar_factory(
        {
            **es_config(f"http://127.0.0.1:{gate.port}", "backpressure"),
            "pipeline": {"max_queued_records": 100},
            # The in-memory cap alone (the WAL would hold these on disk: test_wal_faults.py).
            "wal": {"enabled": False},
        }
    )
    try:
        assert http("GET", sc.admin + "/readyz")[0] == 503
        spans = make_spans(150, start_ns=time.time_ns() - 3 * 3600 * 10**9)
        exp = GrpcSpanExporter(endpoint=sc.grpc_endpoint, insecure=True, timeout=30)
        assert exp.export(spans[:100]) == SpanExportResult.SUCCESS  # fills the queue; waits in memory
        result = {}
        sender = threading.Thread(target=lambda: result.setdefault("r", exp.export(spans[100:])))
        sender.start()
        wait_until(lambda: sc.metric("otel_anomaly_rejected_records_total", reason="queue_full") > 0, what="a queue_full refusal")
        assert http("GET", sc.admin + "/healthz")[0] == 200
        gate.open()  # Elasticsearch is back
        sender.join(timeout=40)
        assert not sender.is_alive()
        assert result["r"] == SpanExportResult.SUCCESS, "the SDK did not get its retried batch through"
        wait_until(lambda: es_count(es.url, "traces-otel-backpressure") == 150, what="all 150 spans delivered")
        wait_until(lambda: http("GET", sc.admin + "/readyz")[0] == 200, what="ready once Elasticsearch was reached")
        sc.stop()
    finally:
        gate.close()


def test_sigterm_drains_and_exits_zero(es, sidecar_factory):
    sc = sidecar_factory(es_config(es.url, "drain", bulk={"flush_interval": "2s"}))
    spans = make_spans(500, start_ns=time.time_ns() - 4 * 3600 * 10**9)
    assert GrpcSpanExporter(endpoint=sc.grpc_endpoint, insecure=True).export(spans) == SpanExportResult.SUCCESS
    sc.stop()  # SIGTERM right away; asserts exit code 0
    assert es_count(es.url, "traces-otel-drain") == 500


def test_plain_indices_on_a_server_without_data_streams(opensearch, sidecar_factory):
    sc = sidecar_factory(es_config(opensearch.url, "legacy", mode="index"))
    spans = make_spans(50)
    assert HttpSpanExporter(endpoint=sc.http_base + "/v1/traces").export(spans) == SpanExportResult.SUCCESS
    wait_until(lambda: es_count(opensearch.url, "traces-otel-legacy") == 50, what="50 spans in the plain index")
    sc.stop()


def test_spans_are_scored_while_their_fsync_runs(es, sidecar_factory):
    """With the write-ahead queue on, a request's answer waits for its fsync,
    but its scoring and export do not: the fsync is not part of the added
    latency. A 1-second `wal.sync: interval` (the longest allowed) holds every
    answer for a second, long enough to find the documents stored while the
    answer is still pending."""
    cfg = es_config(es.url, "fsyncprobe")
    cfg["wal"] = {"sync": "interval", "sync_interval": "1s"}
    sc = sidecar_factory(cfg)
    wait_until(lambda: http("GET", sc.admin + "/readyz")[0] == 200, timeout=30, what="sidecar /readyz")
    index = "traces-otel-fsyncprobe"

    exp = HttpSpanExporter(endpoint=sc.http_base + "/v1/traces", timeout=30)
    # Warm-up: the index exists and the fsync thread is idle again afterwards.
    assert exp.export(make_spans(5, services=("fsync-warmup",))) == SpanExportResult.SUCCESS
    wait_until(lambda: es_count(es.url, index) == 5, timeout=30, what="5 warm-up spans stored")

    answer = {}

    def send():
        answer["result"] = exp.export(make_spans(20, services=("fsync-probe",)))
        answer["at"] = time.monotonic()

    sent_at = time.monotonic()
    t = threading.Thread(target=send)
    t.start()
    seen_pending = []

    def stored():
        n = es_count(es.url, index)
        seen_pending.append("result" not in answer)
        return n == 25

    wait_until(stored, timeout=30, what="the 20 probe spans stored after the 5 warm-up ones")
    # The answer had not come when the documents were found stored ...
    assert seen_pending[-1], "the documents were stored only after the answer"
    t.join(30)
    assert answer.get("result") == SpanExportResult.SUCCESS
    # ... and it did wait for the interval's fsync.
    assert answer["at"] - sent_at >= 0.9, f"answered after {answer['at'] - sent_at:.2f} s, before the fsync"
    exp.shutdown()
