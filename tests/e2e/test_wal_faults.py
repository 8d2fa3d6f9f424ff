"""Durability fault tests for the write-ahead queue (issue 10): the real
binary, the real OTel Python SDK exporter, the real noida-db behind a TCP
proxy that can take it "down".

Short versions run in CI (the kill loop: 10 SIGKILLs around a 60-second
Elasticsearch outage). The long kill loop (20 SIGKILLs, twice the load) is
the same test with WAL_FAULTS_LONG=1:

    WAL_FAULTS_LONG=1 python3 -m pytest tests/e2e/test_wal_faults.py -k kill -s

Each run writes its counts to $WAL_FAULTS_REPORT (default:
<workdir>/wal-faults-report.json) and prints them.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import BINARY, es_count, forward, free_port, http, sidecar_env, wait_until, write_sidecar_config
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

LONG = os.environ.get("WAL_FAULTS_LONG") == "1"


class OutageProxy:
    """TCP forwarder to a real server. `down()` closes the listener and cuts
    every open connection (Elasticsearch crashed / unreachable); `up()`
    listens again on the same port."""

    def __init__(self, target_port: int):
        self.port = free_port()
        self.target = target_port
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._sock = None

    def up(self):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self._sock = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def down(self):
        sock, self._sock = self._sock, None
        if sock:
            sock.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, sock):
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=forward, args=(a, b), daemon=True).start()


class Restartable:
    """The real sidecar on fixed ports and a fixed data directory, so it can be
    killed and started again in place."""

    def __init__(self, workdir: Path, config: dict):
        assert BINARY.exists(), f"{BINARY} is missing: run `cargo build` first"
        self.grpc_port, self.http_port, self.admin_port = free_port(), free_port(), free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="walfault-", dir=workdir))
        self.config_path = write_sidecar_config(self.dir, (self.grpc_port, self.http_port, self.admin_port), config)
        self.log = open(self.dir / "sidecar.log", "a")
        self.proc = None
        self.starts = 0

    def start(self):
        self.log.write(f"\n===== start {self.starts} =====\n")
        self.log.flush()
        self.proc = subprocess.Popen(
            [str(BINARY), "sidecar", "--config", str(self.config_path)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=sidecar_env(),
        )
        self.starts += 1
        wait_until(lambda: self._alive() and http("GET", self.admin + "/healthz", timeout=2)[0] == 200, timeout=30, what="sidecar /healthz")

    def _alive(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"sidecar exited with {self.proc.returncode}; log: {self.dir / 'sidecar.log'}")
        return True

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            code = self.proc.wait(timeout=40)
            assert code == 0, f"exit code {code}; log: {self.dir / 'sidecar.log'}"

    def cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()

    @property
    def admin(self):
        return f"http://127.0.0.1:{self.admin_port}"

    def metric(self, name: str, **labels) -> float:
        status, text = http("GET", self.admin + "/metrics", timeout=5)
        assert status == 200
        total = 0.0
        for line in str(text).splitlines():
            head, _, value = line.rpartition(" ")
            if not head.startswith(name):
                continue
            series = head[len(name):]
            if series and not series.startswith("{"):
                continue
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total


def make_batches(n_batches: int, per_batch: int, seed: int, pad: int = 0):
    """Finished spans (in memory), in batches, each span unique."""
    rng = random.Random(seed)
    mem = InMemorySpanExporter()
    p = TracerProvider(resource=Resource.create({"service.name": "walfault"}))
    p.add_span_processor(SimpleSpanProcessor(mem))
    tracer = p.get_tracer("walfault")
    t = time.time_ns() - 5 * 3600 * 10**9 - seed * 10**9
    for i in range(n_batches * per_batch):
        t += 1_000_000
        s = tracer.start_span(f"op-{i % 7}", kind=SpanKind.SERVER, start_time=t, attributes={"i": i, "pad": "x" * pad})
        s.end(end_time=t + int(rng.uniform(5e6, 50e6)))
    spans = list(mem.get_finished_spans())
    return [spans[i * per_batch:(i + 1) * per_batch] for i in range(n_batches)]


def span_id(s) -> str:
    return f"{s.context.trace_id:032x}{s.context.span_id:016x}"


def stored_ids(es_url: str, index: str) -> list[str]:
    """Every span document's (trace_id + span_id) from its source, paged by _id."""
    http("POST", f"{es_url}/{index}/_refresh")
    out, after = [], None
    while True:
        body = {"size": 5000, "sort": [{"span_id": "asc"}, {"trace_id": "asc"}], "_source": ["trace_id", "span_id"], "query": {"match_all": {}}}
        if after:
            body["search_after"] = after
        status, resp = http("POST", f"{es_url}/{index}/_search", body)
        if status == 404:
            return out
        assert status == 200, resp
        hits = resp["hits"]["hits"]
        if not hits:
            return out
        out += [h["_source"]["trace_id"] + h["_source"]["span_id"] for h in hits]
        after = hits[-1]["sort"]


def report(name: str, counts: dict, workdir: Path):
    path = Path(os.environ.get("WAL_FAULTS_REPORT", workdir / "wal-faults-report.json"))
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = counts
    path.write_text(json.dumps(data, indent=2))
    print(f"\n{name}: {json.dumps(counts)}")


def es_cfg(url: str, env: str) -> dict:
    return {
        "environment": env,
        "export": {"elasticsearch": {"urls": [url], "bulk": {"flush_interval": "100ms", "initial_backoff": "50ms", "max_backoff": "1s", "timeout": "5s"}}},
    }


def test_kill9_loop_loses_and_duplicates_nothing_acknowledged(es, workdir):
    kills = 20 if LONG else 10
    # The 60-second Elasticsearch outage, in the CI version too.
    outage_s = 60
    env = "walkill" + ("long" if LONG else "")
    es_port = int(es.url.rsplit(":", 1)[1])
    proxy = OutageProxy(es_port)
    proxy.up()
    sc = Restartable(workdir, es_cfg(f"http://127.0.0.1:{proxy.port}", env))
    batches = make_batches(600 if LONG else 300, 25, seed=7 if LONG else 3)
    acked: set[str] = set()
    sent = {"batches": 0, "spans": 0, "acked_batches": 0}
    stop = threading.Event()

    def sender():
        # One real OTLP/gRPC exporter, as an SDK's batch processor uses it.
        exp = GrpcSpanExporter(endpoint=f"127.0.0.1:{sc.grpc_port}", insecure=True, timeout=4)
        for b in batches:
            if stop.is_set():
                break
            sent["batches"] += 1
            sent["spans"] += len(b)
            if exp.export(b) == SpanExportResult.SUCCESS:
                sent["acked_batches"] += 1
                acked.update(span_id(s) for s in b)
            time.sleep(0.05)

    try:
        sc.start()
        t = threading.Thread(target=sender, daemon=True)
        t.start()
        rng = random.Random(11)
        outage_at = kills // 2
        outage_until = None
        for k in range(kills):
            if k == outage_at:
                proxy.down()
                outage_until = time.monotonic() + outage_s
            time.sleep(rng.uniform(0.3, 2.0))
            sc.kill9()
            sc.start()
            if outage_until and time.monotonic() >= outage_until:
                proxy.up()
                outage_until = None
        if outage_until:
            time.sleep(max(0.0, outage_until - time.monotonic()))
            proxy.up()
        time.sleep(1.0)
        stop.set()
        t.join(timeout=60)
        assert not t.is_alive()
        assert sent["acked_batches"] > 0

        def all_acked_stored():
            got = set(stored_ids(es.url, f"traces-otel-{env}"))
            return acked <= got

        wait_until(all_acked_stored, timeout=180, interval=1.0, what="every acknowledged span stored")
        # Let anything replayed but not acknowledged settle too, then look for duplicates.
        wait_until(lambda: sc.metric("otel_anomaly_wal_spilled_requests") == 0, timeout=60, what="write-ahead queue drained")
        ids = stored_ids(es.url, f"traces-otel-{env}")
        distinct = set(ids)
        counts = {
            "kills": kills,
            "es_outage_seconds": outage_s,
            "sent_spans": sent["spans"],
            "sent_batches": sent["batches"],
            "acknowledged_spans": len(acked),
            "acknowledged_batches": sent["acked_batches"],
            "stored_spans": len(ids),
            "stored_distinct": len(distinct),
            "duplicated": len(ids) - len(distinct),
            "acknowledged_missing": len(acked - distinct),
            "stored_not_acknowledged": len(distinct - acked),
            "truncated_tails_last_start": sc.metric("otel_anomaly_wal_truncated_tails_total"),
        }
        report("kill9_loop_long" if LONG else "kill9_loop", counts, workdir)
        assert counts["acknowledged_missing"] == 0
        assert counts["duplicated"] == 0
        # Every stored span was sent by this test (nothing invented).
        sent_ids = {span_id(s) for b in batches[: sent["batches"]] for s in b}
        assert distinct <= sent_ids
        assert es_count(es.url, f"traces-otel-{env}") == len(distinct)
        sc.stop()
    finally:
        stop.set()
        sc.cleanup()
        proxy.down()


def post_spans(url: str, spans, timeout=10):
    body = encode_spans(spans).SerializeToString()
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/x-protobuf"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a tmpfs needs root (CI runs as root)")
def test_disk_full_refuses_clearly_keeps_the_queue_and_recovers(es, workdir):
    es_port = int(es.url.rsplit(":", 1)[1])
    proxy = OutageProxy(es_port)  # down: nothing is delivered, so the queue only grows
    mnt = Path(tempfile.mkdtemp(prefix="walfull-", dir=workdir))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    env = "waldiskfull"
    cfg = es_cfg(f"http://127.0.0.1:{proxy.port}", env)
    cfg["receiver"] = {"max_request_bytes": 256 << 10, "max_decompressed_bytes": 256 << 10}
    cfg["wal"] = {"dir": str(mnt / "wal"), "max_bytes": 64 << 20, "segment_bytes": 128 << 10}
    sc = Restartable(workdir, cfg)
    try:
        sc.start()
        url = f"http://127.0.0.1:{sc.http_port}/v1/traces"
        batches = make_batches(120, 20, seed=21, pad=1000)
        acked, refused = [], None
        for b in batches:
            status, headers, body = post_spans(url, b)
            if status == 200:
                acked.append(b)
                continue
            refused = (status, headers, body)
            break
        assert refused, "a 1 MiB disk never filled"
        status, headers, body = refused
        assert status == 503, refused
        assert headers.get("retry-after") == "1"
        assert b"write-ahead queue" in body and b"wal.dir" in body, body
        assert sc.metric("otel_anomaly_rejected_records_total", reason="storage_error") > 0
        assert sc.metric("otel_anomaly_wal_write_errors_total") > 0
        # Still refusing (not crashing, not acknowledging) while the disk stays full.
        assert post_spans(url, batches[len(acked)])[0] == 503
        assert http("GET", sc.admin + "/healthz")[0] == 200
        # A crash while the disk is full: the queue must open cleanly, with every acknowledged request.
        sc.kill9()
        subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)  # space returns
        sc.start()
        assert sc.metric("otel_anomaly_wal_truncated_tails_total") == 0
        assert sc.metric("otel_anomaly_wal_replayed_requests_total") == len(acked)
        # Accepting again.
        more = batches[len(acked):len(acked) + 5]
        for b in more:
            assert post_spans(url, b)[0] == 200
        proxy.up()  # Elasticsearch back: everything acknowledged arrives, once
        want = {span_id(s) for b in acked + more for s in b}
        wait_until(lambda: set(stored_ids(es.url, f"traces-otel-{env}")) >= want, timeout=90, interval=1.0, what="acknowledged spans delivered")
        ids = stored_ids(es.url, f"traces-otel-{env}")
        assert len(ids) == len(set(ids))
        report("disk_full", {"acknowledged_batches_before_full": len(acked), "spans_delivered": len(ids), "duplicated": len(ids) - len(set(ids))}, workdir)
        sc.stop()
    finally:
        sc.cleanup()
        proxy.down()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_wal_cap_refuses_with_429_and_retry_after_then_drains(es, workdir):
    es_port = int(es.url.rsplit(":", 1)[1])
    proxy = OutageProxy(es_port)  # down until the queue is full
    env = "walcap"
    cfg = es_cfg(f"http://127.0.0.1:{proxy.port}", env)
    cfg["receiver"] = {"max_request_bytes": 256 << 10, "max_decompressed_bytes": 256 << 10}
    cfg["wal"] = {"max_bytes": 1 << 20, "segment_bytes": 128 << 10}
    sc = Restartable(workdir, cfg)
    try:
        sc.start()
        url = f"http://127.0.0.1:{sc.http_port}/v1/traces"
        batches = make_batches(120, 20, seed=31, pad=1000)
        acked, refused = [], None
        for b in batches:
            status, headers, body = post_spans(url, b)
            if status != 200:
                refused = (status, headers, body)
                break
            acked.append(b)
        assert refused and refused[0] == 429, refused
        assert refused[1].get("retry-after") == "1"
        assert b"wal.max_bytes" in refused[2]
        assert sc.metric("otel_anomaly_wal_bytes") <= 1 << 20
        # The same over gRPC: RESOURCE_EXHAUSTED with RetryInfo, which the SDK retries.
        result = {}
        exp = GrpcSpanExporter(endpoint=f"127.0.0.1:{sc.grpc_port}", insecure=True, timeout=30)
        rest = batches[len(acked)]
        t = threading.Thread(target=lambda: result.setdefault("r", exp.export(rest)))
        t.start()
        wait_until(lambda: sc.metric("otel_anomaly_rejected_records_total", reason="wal_full") > 40, what="a gRPC wal_full refusal")
        proxy.up()
        t.join(timeout=40)
        assert result.get("r") == SpanExportResult.SUCCESS
        want = {span_id(s) for b in acked + [rest] for s in b}
        wait_until(lambda: set(stored_ids(es.url, f"traces-otel-{env}")) >= want, timeout=90, interval=1.0, what="queued spans delivered")
        # Delivered segments are deleted.
        wait_until(lambda: sc.metric("otel_anomaly_wal_deleted_segments_total") > 0, what="delivered segments deleted")
        sc.stop()
    finally:
        sc.cleanup()
        proxy.down()
