"""Harness for end-to-end tests: real servers on loopback.

Starts an Elasticsearch-compatible server (noida-db, with data streams; and
osmem-server, OpenSearch-compatible without data streams) and the real
otel-anomaly binary, which the tests drive with the real OpenTelemetry Python
SDK and exporters.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BINARY = Path(os.environ.get("OTEL_ANOMALY_BIN", TARGET_DIR / "debug" / "otel-anomaly"))


# Ports handed to child processes come from below the kernel's ephemeral
# range (32768-60999 by default). A port taken with bind(0) and released is an
# ephemeral one, which any outgoing connection on the machine (the ES server's,
# the SDK's, Rotel's) may take before the child binds it: that race made a
# sidecar fail with "Address already in use". Below the range only listeners
# compete, and this process never hands out the same port twice.
_PORT_LO, _PORT_HI = 20000, 32000
_next_port = _PORT_LO + (os.getpid() * 7919) % (_PORT_HI - _PORT_LO)
_handed_out: set[int] = set()


def free_port() -> int:
    global _next_port
    for _ in range(_PORT_HI - _PORT_LO):
        port = _next_port
        _next_port = _PORT_LO + (_next_port + 1 - _PORT_LO) % (_PORT_HI - _PORT_LO)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {_PORT_LO}-{_PORT_HI}")


def http(method: str, url: str, body=None, headers=None, timeout=10):
    """Returns (status, parsed JSON or text)."""
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw = e.read()
        status = e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_until(pred, timeout=30.0, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except (OSError, urllib.error.URLError) as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Server:
    """A server started in a session of its own (start_new_session=True), so
    that stopping it stops its whole process group: the `noida-db` command is a
    Python wrapper that runs the real server as its child, and terminating the
    wrapper alone left the server running after the tests."""

    def __init__(self, proc, url, logfile):
        self.proc, self.url, self.logfile = proc, url, logfile

    def stop(self):
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout=5)
        # The wrapper may be gone while its child still runs.
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig):
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass


def start_noida(tmp: Path) -> Server:
    port = free_port()
    data = tmp / f"noida-{port}"
    data.mkdir(parents=True)
    exe = shutil.which("noida-db")
    assert exe, "noida-db is not installed (pip install noida-db); .ci/run installs it"
    log = open(tmp / f"noida-{port}.log", "w")
    proc = subprocess.Popen(
        [exe, "start", "--only", "elasticsearch", "--elasticsearch-port", str(port), "--host", "127.0.0.1", "--data-dir", str(data)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http("GET", url + "/")[0] == 200, timeout=60, what="noida-db to start")
    return Server(proc, url, log)


def start_osmem(tmp: Path) -> Server:
    import osmem_server  # type: ignore

    port = free_port()
    log = open(tmp / f"osmem-{port}.log", "w")
    proc = subprocess.Popen(
        [osmem_server.resolve_binary(), "--addr", f"127.0.0.1:{port}", "--no-stdin-watch", "--no-ja"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http("GET", url + "/")[0] == 200, timeout=60, what="osmem-server to start")
    return Server(proc, url, log)


@pytest.fixture(scope="session")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="otel-anomaly-e2e-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def es(workdir):
    s = start_noida(workdir)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def opensearch(workdir):
    s = start_osmem(workdir)
    yield s
    s.stop()


def write_sidecar_config(dir: Path, ports: tuple[int, int, int], config: dict) -> Path:
    """Writes `dir/config.yaml`: the sidecar on loopback ports (gRPC, HTTP,
    admin) with its data under `dir/data`, overlaid with `config` (a dict
    section is merged one level deep, anything else replaces)."""
    grpc, http_port, admin = ports
    cfg = {
        "data_dir": str(dir / "data"),
        "shutdown_timeout": "20s",
        "receiver": {
            "grpc": {"listen": f"127.0.0.1:{grpc}"},
            "http": {"listen": f"127.0.0.1:{http_port}"},
        },
        "admin": {"listen": f"127.0.0.1:{admin}"},
    }
    for k, v in config.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    path = dir / "config.yaml"
    # JSON is valid YAML.
    path.write_text(json.dumps(cfg, indent=2))
    return path


def sidecar_env(extra: dict | None = None) -> dict:
    """The environment of a sidecar process. OTEL_ANOMALY_BIN names the binary
    for this harness; the sidecar would read it as a configuration key (every
    OTEL_ANOMALY_* is one)."""
    inherited = {k: v for k, v in os.environ.items() if k != "OTEL_ANOMALY_BIN"}
    return {**inherited, "RUST_LOG": "info", **(extra or {})}


class Sidecar:
    """The real binary, started with a YAML config on free loopback ports."""

    def __init__(self, workdir: Path, config: dict, env: dict | None = None):
        assert BINARY.exists(), f"{BINARY} is missing: run `cargo build` first (scripts/test.sh does)"
        self.grpc_port, self.http_port, self.admin_port = free_port(), free_port(), free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sidecar-", dir=workdir))
        self.config_path = write_sidecar_config(self.dir, (self.grpc_port, self.http_port, self.admin_port), config)
        self.log_path = self.dir / "sidecar.log"
        self.log = open(self.log_path, "w")
        full_env = sidecar_env(env)
        self.proc = subprocess.Popen(
            [str(BINARY), "sidecar", "--config", str(self.config_path)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env,
        )
        wait_until(lambda: self.alive() and http("GET", self.admin + "/healthz")[0] == 200, timeout=30, what="sidecar /healthz")

    def alive(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"sidecar exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
        return True

    @property
    def admin(self):
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def grpc_endpoint(self):
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_base(self):
        return f"http://127.0.0.1:{self.http_port}"

    def metric(self, name: str, **labels) -> float:
        """Sum of a /metrics series matching the labels."""
        status, text = http("GET", self.admin + "/metrics")
        assert status == 200
        total = 0.0
        for line in str(text).splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            series = head[len(name):]
            if series and not series.startswith("{"):
                continue
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total

    def stop(self, expect_code=0):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise AssertionError("sidecar did not stop within 30 s of SIGTERM")
        else:
            code = self.proc.returncode
        self.log.close()
        assert code == expect_code, f"sidecar exit code {code}:\n{self.log_path.read_text()[-3000:]}"


@pytest.fixture
def sidecar_factory(workdir):
    started = []

    def make(config, env=None):
        s = Sidecar(workdir, config, env)
        started.append(s)
        return s

    yield make
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(timeout=10)


def es_count(url: str, index: str, query: dict | None = None) -> int:
    http("POST", f"{url}/{index}/_refresh")
    body = {"query": query} if query else None
    status, resp = http("POST" if body else "GET", f"{url}/{index}/_count", body)
    if status == 404:
        return 0
    assert status == 200, resp
    return resp["count"]


def es_search(url: str, index: str, query: dict, size: int = 10000) -> list:
    http("POST", f"{url}/{index}/_refresh")
    status, resp = http("POST", f"{url}/{index}/_search", {"query": query, "size": size})
    assert status == 200, resp
    return [h["_source"] | {"_id": h["_id"]} for h in resp["hits"]["hits"]]


def forward(a, b):
    """Copies bytes from socket a to socket b until either side closes."""
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class GatedProxy:
    """A TCP forwarder to a real server that refuses connections until opened:
    Elasticsearch that is down, then comes back."""

    def __init__(self, target_port: int):
        self.port = free_port()
        self.target = target_port
        self._sock = None
        self._stop = threading.Event()

    def open(self):
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=forward, args=(a, b), daemon=True).start()

    def close(self):
        self._stop.set()
        if self._sock:
            self._sock.close()
