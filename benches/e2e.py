#!/usr/bin/env python3
"""End-to-end benchmark: the sidecar against Rotel on the same OTLP load.

Starts a null bulk/OTLP sink (`otel-anomaly bench-sink`), then, one target
at a time, the sidecar (gzip on / off, 1 or 2 workers) and Rotel (forwarding
OTLP to the sink, and to its blackhole exporter), drives each with
`otel-anomaly loadgen`, and reports per target:

- records per CPU-second of the target process (utime+stime from
  /proc/<pid>/stat over the measured window, which ends when the sink has
  every acknowledged record),
- peak RSS (VmHWM),
- the added latency at 50 % of the saturation rate (age of each record when
  it reaches the sink: the load generator stamps records with the send time),

and the ratios the issue sets targets for, side by side. `--smoke` is a short
run for CI: it asserts only that every run completed and that the sink
counted every acknowledged record (no timing assertions).

The target is pinned to the last CPU, the load generator and the sink to
the others (taskset), when the machine has at least two.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROTEL_VERSION = "0.0.1a15"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


_next_port = 20000 + (os.getpid() * 7919) % 12000


def free_port():
    """A port below the ephemeral range (32768-60999): one from bind(0) may be
    taken by an outgoing connection before the child process binds it."""
    global _next_port
    for _ in range(12000):
        port, _next_port = _next_port, 20000 + (_next_port + 1 - 20000) % 12000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise SystemExit("no free loopback port in 20000-32000")


def wait_port(port, proc, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on port {port} within {timeout}s")


def http_json(method, url, body=None):
    req = urllib.request.Request(url, method=method, data=body)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def cpu_ticks(pid):
    """utime + stime of the whole process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    return int(fields[11]) + int(fields[12])


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def taskset(cpus):
    if cpus is None or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", cpus]


class Sink:
    def __init__(self, binary, workdir, cpus):
        self.http_port, self.grpc_port = free_port(), free_port()
        self.log = open(workdir / "sink.log", "w")
        self.proc = subprocess.Popen(
            taskset(cpus) + [str(binary), "bench-sink", "--listen", f"127.0.0.1:{self.http_port}",
                             "--grpc-listen", f"127.0.0.1:{self.grpc_port}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_port(self.http_port, self.proc, "bench-sink")
        wait_port(self.grpc_port, self.proc, "bench-sink (gRPC)")
        self.url = f"http://127.0.0.1:{self.http_port}"

    def stats(self):
        return http_json("GET", self.url + "/_sink/stats")

    def reset_latency(self):
        http_json("POST", self.url + "/_sink/reset", b"")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Noida:
    """The real Elasticsearch-compatible server (second mode)."""

    def __init__(self, workdir, cpus):
        exe = shutil.which("noida-db") or str(ROOT / ".venv-bench/bin/noida-db")
        if not Path(exe).exists():
            raise SystemExit("noida-db is not installed: pip install noida-db (see tests/e2e/requirements.txt)")
        self.port = free_port()
        data = workdir / "noida"
        data.mkdir()
        self.log = open(workdir / "noida.log", "w")
        self.proc = subprocess.Popen(
            taskset(cpus) + [exe, "start", "--only", "elasticsearch", "--elasticsearch-port", str(self.port),
                             "--host", "127.0.0.1", "--data-dir", str(data)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.port, self.proc, "noida-db")
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        # The whole group: `noida-db` is a wrapper whose child is the server.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        self.log.close()


def sidecar_metric_sum(admin_port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Target:
    """A process under measurement: the sidecar or Rotel."""

    def __init__(self, kind, binary, rotel, workdir, cpus, sink, es_url=None, gzip=True, workers=0,
                 max_queued=None, wal=None):
        self.kind = kind
        self.grpc_port, self.http_port = free_port(), free_port()
        self.admin_port = free_port()
        self.sink = sink
        self.log = open(workdir / f"{kind}-{self.grpc_port}.log", "w")
        if kind == "sidecar":
            cfg = workdir / f"sidecar-{self.grpc_port}.yaml"
            cfg.write_text(json.dumps({
                "environment": "bench",
                "data_dir": str(workdir / f"data-{self.grpc_port}"),
                "receiver": {"grpc": {"listen": f"127.0.0.1:{self.grpc_port}"},
                             "http": {"listen": f"127.0.0.1:{self.http_port}"}},
                "admin": {"listen": f"127.0.0.1:{self.admin_port}"},
                "pipeline": dict({"workers": workers},
                                 **({"max_queued_records": max_queued} if max_queued else {})),
                "log": {"level": "warn"},
                **({"wal": {"enabled": wal == "on"}} if wal else {}),
                "export": {"elasticsearch": {
                    "urls": [es_url or sink.url],
                    "bulk": {"compression": "gzip" if gzip else "none"},
                }},
            }))
            argv = [str(binary), "sidecar", "--config", str(cfg)]
        else:
            argv = [str(rotel), "start", "--otlp-grpc-endpoint", f"127.0.0.1:{self.grpc_port}",
                    "--otlp-http-endpoint", f"127.0.0.1:{self.http_port}",
                    "--pid-file", str(workdir / f"rotel-{self.grpc_port}.pid"),
                    "--log-file", str(workdir / f"rotel-{self.grpc_port}.file.log")]
            if kind == "rotel-otlp":
                argv += ["--exporter", "otlp", "--otlp-exporter-endpoint", f"http://127.0.0.1:{sink.grpc_port}"]
            else:
                argv += ["--exporter", "blackhole"]
        self.proc = subprocess.Popen(taskset(cpus) + argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        wait_port(self.grpc_port, self.proc, kind)
        wait_port(self.http_port, self.proc, kind)
        if kind == "sidecar":
            # Ready = the output was reached.
            deadline = time.time() + 30
            while time.time() < deadline:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(0.1)

    def port_for(self, protocol):
        return self.grpc_port if protocol == "grpc" else self.http_port

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        return self.proc.returncode


def run_loadgen(binary, cpus, port, protocol, signal_, duration, rate=None, batch=500, concurrency=4, seed=1):
    argv = taskset(cpus) + [str(binary), "loadgen", "--target", f"127.0.0.1:{port}", "--protocol", protocol,
                            "--signal", signal_, "--duration", f"{duration}s", "--batch", str(batch),
                            "--concurrency", str(concurrency), "--payloads", "16", "--seed", str(seed), "--json"]
    if rate:
        argv += ["--rate", f"{rate:.0f}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120)
    if out.returncode != 0 or not out.stdout.strip():
        raise SystemExit(f"loadgen failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def delivered(target, es_mode):
    """Records the target has handed to the sink so far (None when it has no counted output)."""
    if target.kind == "rotel-blackhole":
        return None
    if target.kind == "sidecar" and es_mode:
        return sidecar_metric_sum(target.admin_port, "otel_anomaly_exported_documents_total")
    s = target.sink.stats()
    if target.kind == "sidecar":
        return s["bulk_docs"]
    return s["otlp_spans"] + s["otlp_points"] + s["otlp_logs"]


def wait_delivered(target, es_mode, expected, timeout=60):
    """Waits until `expected` records are delivered; returns what was."""
    deadline = time.time() + timeout
    got = delivered(target, es_mode)
    if got is None:
        time.sleep(0.5)  # blackhole: let the last batch pass
        return None
    while got < expected and time.time() < deadline:
        time.sleep(0.05)
        got = delivered(target, es_mode)
    return got


def measure(args, binary, rotel, workdir, sink, spec, target_cpus, load_cpus, es_url):
    kind, protocol, signal_ = spec["kind"], spec["protocol"], spec["signal"]
    t = Target(kind, spec.get("binary", binary), rotel, workdir, target_cpus, sink, es_url=es_url,
               gzip=spec.get("gzip", True), workers=spec.get("workers", 0), max_queued=args.max_queued,
               wal=spec.get("wal", args.wal))
    es_mode = es_url is not None
    # The sink times bulk documents and OTLP spans (not OTLP metric points).
    timed = not es_mode and kind != "rotel-blackhole" and (kind == "sidecar" or signal_ == "traces")
    try:
        port = t.port_for(protocol)
        base = delivered(t, es_mode) or 0
        acked_total = 0
        # Warm-up: flat out, then wait until all of it went through.
        w = run_loadgen(binary, load_cpus, port, protocol, signal_, args.warmup, batch=args.batch,
                        concurrency=args.concurrency, seed=11)
        acked_total += w["records_acked"]
        wait_delivered(t, es_mode, base + acked_total)
        # Saturation: flat out; CPU from the start until the sink has all of it.
        c0, t0 = cpu_ticks(t.proc.pid), time.time()
        sat = run_loadgen(binary, load_cpus, port, protocol, signal_, args.duration, batch=args.batch,
                          concurrency=args.concurrency, seed=1)
        acked_total += sat["records_acked"]
        wait_delivered(t, es_mode, base + acked_total)
        c1, t1 = cpu_ticks(t.proc.pid), time.time()
        cpu_s = (c1 - c0) / CLK_TCK
        per_cpu_s = sat["records_acked"] / cpu_s if cpu_s > 0 else float("nan")
        # Saturation = what the target got through end to end (acks can run
        # ahead of the output while the queue fills).
        sat_rate = sat["records_acked"] / (t1 - t0)
        # Latency at half the saturation rate.
        half = sat_rate * 0.5
        sink.reset_latency()
        lat = run_loadgen(binary, load_cpus, port, protocol, signal_, args.latency_duration, rate=half,
                          batch=args.batch, concurrency=args.concurrency, seed=5)
        acked_total += lat["records_acked"]
        got = wait_delivered(t, es_mode, base + acked_total)
        sink_stats = sink.stats()
        rss_kib = vm_hwm_kib(t.proc.pid)
        lost = None if got is None else (base + acked_total) - got
    finally:
        rc = t.stop()
    result = {
        "name": spec["name"], "kind": kind, "protocol": protocol, "signal": signal_,
        "gzip": spec.get("gzip"), "workers": spec.get("workers"), "before": spec.get("before", False),
        "saturation_records_per_s": sat_rate,
        "ack_rate_records_per_s": sat["records_per_s"],
        "cpu_s": cpu_s, "wall_s": t1 - t0,
        "records_per_cpu_s": per_cpu_s,
        "peak_rss_mib": rss_kib / 1024,
        "latency_rate": half,
        "latency_achieved_rate": lat["records_per_s"],
        "sink_age_p50_ms": sink_stats["latency_p50_us"] / 1000 if timed else None,
        "sink_age_p99_ms": sink_stats["latency_p99_us"] / 1000 if timed else None,
        "ack_p50_ms": lat["latency"]["p50_us"] / 1000, "ack_p99_ms": lat["latency"]["p99_us"] / 1000,
        "refused_requests": w["requests_refused"] + sat["requests_refused"] + lat["requests_refused"],
        "failed_requests": w["requests_failed"] + sat["requests_failed"] + lat["requests_failed"],
        "acked": acked_total, "lost": lost, "exit_code": rc,
        "avg_record_bytes": sat["avg_record_bytes"],
    }
    log(f"  {spec['name']:<34} {per_cpu_s:>10,.0f} rec/CPU-s  sat {sat_rate:>9,.0f}/s  "
        f"RSS {result['peak_rss_mib']:6.1f} MiB  age p50/p99 "
        f"{fmt_ms(result['sink_age_p50_ms'])}/{fmt_ms(result['sink_age_p99_ms'])} ms  lost {lost}")
    return result


def fmt_ms(v):
    return "-" if v is None else f"{v:.1f}"


def scenarios(args):
    out = []
    sig_proto = [("traces", "grpc"), ("traces", "http-protobuf"), ("metrics", "grpc")]
    if not args.smoke:
        sig_proto += [("metrics", "http-protobuf")]
    for signal_, proto in sig_proto:
        tag = f"{signal_}/{proto}"
        out.append({"name": f"sidecar gzip {tag}", "kind": "sidecar", "protocol": proto, "signal": signal_,
                    "gzip": True, "workers": 1})
        if not args.no_rotel:
            out.append({"name": f"rotel otlp {tag}", "kind": "rotel-otlp", "protocol": proto, "signal": signal_})
            out.append({"name": f"rotel blackhole {tag}", "kind": "rotel-blackhole", "protocol": proto,
                        "signal": signal_})
        if args.wal_compare:
            out.append({"name": f"sidecar gzip wal-off {tag}", "kind": "sidecar", "protocol": proto,
                        "signal": signal_, "gzip": True, "workers": 1, "wal": "off"})
        if args.before_binary:
            out.append({"name": f"sidecar(before) gzip {tag}", "kind": "sidecar", "protocol": proto,
                        "signal": signal_, "gzip": True, "workers": 1, "binary": args.before_binary,
                        "before": True})
        if not args.smoke and signal_ == "traces":
            out.append({"name": f"sidecar no-gzip {tag}", "kind": "sidecar", "protocol": proto,
                        "signal": signal_, "gzip": False, "workers": 1})
    return out


def ensure_rotel():
    venv = ROOT / ".venv-bench"
    agent = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / "rotel" / "rotel-agent"
    if agent.exists():
        return agent
    log(f"==> installing rotel {ROTEL_VERSION} into {venv}")
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--pre", f"rotel=={ROTEL_VERSION}"], check=True)
    found = list(venv.glob("lib/python*/site-packages/rotel/rotel-agent"))
    if not found:
        raise SystemExit("rotel installed but rotel/rotel-agent not found in the package")
    return found[0]


def machine():
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def ratio(a, b):
    return a / b if a and b else float("nan")


def summary(results, scaling):
    by = {r["name"]: r for r in results}
    lines = []
    lines.append(f"{'target':<36}{'rec/CPU-s':>12}{'sat rec/s':>12}{'RSS MiB':>9}{'age p50':>9}{'age p99':>9}"
                 f"{'ack p99':>9}")
    for r in results:
        lines.append(f"{r['name']:<36}{r['records_per_cpu_s']:>12,.0f}{r['saturation_records_per_s']:>12,.0f}"
                     f"{r['peak_rss_mib']:>9.1f}{fmt_ms(r['sink_age_p50_ms']):>9}{fmt_ms(r['sink_age_p99_ms']):>9}"
                     f"{r['ack_p99_ms']:>9.1f}")
    lines.append("")
    lines.append(f"{'ratio (same run)':<52}{'measured':>10}{'target':>10}")
    for r in results:
        if (r["kind"] != "sidecar" or not r.get("gzip") or r.get("workers") != 1 or r.get("before")
                or "unpinned" in r["name"]):
            continue
        tag = f"{r['signal']}/{r['protocol']}"
        fwd, bh = by.get(f"rotel otlp {tag}"), by.get(f"rotel blackhole {tag}")
        if fwd:
            lines.append(f"{'sidecar / rotel forwarding, CPU per record ' + tag:<52}"
                         f"{ratio(r['records_per_cpu_s'], fwd['records_per_cpu_s']):>10.2f}{'>= 1.3':>10}")
            lines.append(f"{'sidecar / rotel forwarding, peak RSS ' + tag:<52}"
                         f"{ratio(r['peak_rss_mib'], fwd['peak_rss_mib']):>10.2f}{'<= 2':>10}")
        if bh:
            lines.append(f"{'sidecar / rotel blackhole, CPU per record ' + tag:<52}"
                         f"{ratio(r['records_per_cpu_s'], bh['records_per_cpu_s']):>10.2f}{'>= 0.7':>10}")
        old = by.get(f"sidecar(before) gzip {tag}")
        if old:
            lines.append(f"{'sidecar this build / before-binary ' + tag:<52}"
                         f"{ratio(r['records_per_cpu_s'], old['records_per_cpu_s']):>10.2f}{'':>10}")
        ng = by.get(f"sidecar no-gzip {tag}")
        if ng:
            lines.append(f"{'sidecar gzip off / gzip on ' + tag:<52}"
                         f"{ratio(ng['records_per_cpu_s'], r['records_per_cpu_s']):>10.2f}{'':>10}")
        if r["sink_age_p99_ms"] is not None:
            lines.append(f"{'sidecar added latency p99 (ms) at 50% sat ' + tag:<52}{r['sink_age_p99_ms']:>10.1f}"
                         f"{'<= 5':>10}")
    if scaling:
        one, two = scaling
        lines.append(f"{'sidecar 2 workers / 1 worker, saturation rate':<52}"
                     f"{ratio(two['saturation_records_per_s'], one['saturation_records_per_s']):>10.2f}{'>= 1.8':>10}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="short run for CI: completes and loses nothing")
    ap.add_argument("--duration", type=float, default=None, help="measured seconds per target (default 20, smoke 2)")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up seconds (default 5, smoke 1)")
    ap.add_argument("--latency-duration", type=float, default=None, help="seconds at 50%% load (default 10, smoke 2)")
    ap.add_argument("--batch", type=int, default=500, help="records per OTLP request")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    ap.add_argument("--binary", type=Path, default=None, help="otel-anomaly binary (default: build release; smoke: debug)")
    ap.add_argument("--no-build", action="store_true", help="use the binary as it is")
    ap.add_argument("--no-rotel", action="store_true", help="skip the Rotel baseline")
    ap.add_argument("--es", choices=["null", "noida"], default="null",
                    help="sidecar output: the null bulk sink (default) or the real ES-compatible server noida-db")
    ap.add_argument("--scaling", action="store_true", help="also measure 1 vs 2 scoring workers (not pinned)")
    ap.add_argument("--before-binary", type=Path, default=None,
                    help="also measure this sidecar binary (e.g. a build of the previous commit) in the same run")
    ap.add_argument("--max-queued", type=int, default=None,
                    help="sidecar pipeline.max_queued_records (default: the sidecar's own default)")
    ap.add_argument("--wal", choices=["on", "off"], default=None,
                    help="sidecar write-ahead queue (wal.enabled; default: the sidecar's own default)")
    ap.add_argument("--wal-compare", action="store_true",
                    help="also measure the sidecar with the write-ahead queue off (wal.enabled: false)")
    ap.add_argument("--only", default=None,
                    help="run only the targets whose name contains this text (e.g. traces/grpc)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    args.duration = args.duration or (2 if args.smoke else 20)
    args.warmup = args.warmup or (1 if args.smoke else 5)
    args.latency_duration = args.latency_duration or (2 if args.smoke else 10)

    profile = "debug" if args.smoke else "release"
    binary = args.binary or ROOT / "target" / profile / "otel-anomaly"
    if not args.no_build and args.binary is None:
        log(f"==> cargo build ({profile})")
        cmd = ["cargo", "build", "--locked"] + ([] if args.smoke else ["--release"])
        subprocess.run(cmd, cwd=ROOT, check=True)
    rotel = None if args.no_rotel else ensure_rotel()

    ncpu = len(os.sched_getaffinity(0))
    cpus = sorted(os.sched_getaffinity(0))
    target_cpus = str(cpus[-1]) if ncpu >= 2 else None
    load_cpus = ",".join(map(str, cpus[:-1])) if ncpu >= 2 else None
    info = machine()
    log(f"==> machine: {info['nproc']} CPUs, {info['cpu']}; target on CPU {target_cpus}, load on {load_cpus}")

    results, scaling = [], None
    with tempfile.TemporaryDirectory(prefix="otel-anomaly-bench-") as tmp:
        workdir = Path(tmp)
        sink = Sink(binary, workdir, load_cpus)
        noida = Noida(workdir, load_cpus) if args.es == "noida" else None
        es_url = noida.url if noida else None
        try:
            for spec in scenarios(args):
                if args.only and args.only not in spec["name"]:
                    continue
                # Rotel forwards OTLP to the null sink in both modes.
                results.append(measure(args, binary, rotel, workdir, sink, spec, target_cpus, load_cpus,
                                       es_url if spec["kind"] == "sidecar" else None))
            if args.scaling and not args.smoke:
                log("==> scaling: 1 vs 2 scoring workers, sidecar on every CPU (the load shares them)")
                base = {"kind": "sidecar", "protocol": "grpc", "signal": "traces", "gzip": True}
                one = measure(args, binary, rotel, workdir, sink, dict(base, name="sidecar 1 worker (unpinned)",
                                                                       workers=1), None, None, es_url)
                two = measure(args, binary, rotel, workdir, sink, dict(base, name="sidecar 2 workers (unpinned)",
                                                                       workers=2), None, None, es_url)
                results += [one, two]
                scaling = (one, two)
        finally:
            sink.stop()
            if noida:
                noida.stop()

    text = summary(results, scaling)
    print(f"\notel-anomaly e2e benchmark — {info['date']}, {info['nproc']} CPUs ({info['cpu']}), "
          f"output: {'noida-db' if args.es == 'noida' else 'null bulk sink'}, "
          f"{args.duration:.0f}s measured per target, batch {args.batch}, concurrency {args.concurrency}")
    print(text)
    out = args.out or (ROOT / "results" / f"e2e-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                               "results": results}, indent=2))
    log(f"results written to {out}")

    problems = []
    for r in results:
        if r["lost"] not in (None, 0):
            problems.append(f"{r['name']}: {r['lost']} acknowledged records never reached the output")
        if r["acked"] == 0:
            problems.append(f"{r['name']}: no record was acknowledged")
        if r["failed_requests"]:
            problems.append(f"{r['name']}: {r['failed_requests']} requests failed")
        if r["kind"] == "sidecar" and r["exit_code"] != 0:
            problems.append(f"{r['name']}: sidecar exited with {r['exit_code']}")
    if problems:
        print("\nFAILED:\n  " + "\n  ".join(problems))
        return 1
    print(f"\nok: {len(results)} runs completed, nothing lost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
