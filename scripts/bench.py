#!/usr/bin/env python3
"""`make bench`: the end-to-end benchmarks of issue 5, run side by side on this machine.

Called by scripts/bench.sh after the release build (it passes --target-dir). Python 3 standard
library only. Stages (each can be picked with --only):

  gate       criterion micro-bench of the request path (cargo bench --bench gate)
  footprint  RSS and CPU of the gateway idling 60 s with N routes, all napping (N stopped containers)
  warm       wrk against (a) bare Pingora, (b) idlewatcher with N routes, (c) nginx; interleaved
  herd       10,000 concurrent requests on a sleeping route (real Docker)
  cold       cold-start tax over >= 20 wakes, stop/start and pause/unpause
  sse        10,000 subscribers of one route's events; time for `ready` to reach them all
  streams    TCP splice throughput and connection rate: a ready stream route vs the echo backend
             directly vs the same splice without the gate (examples/bare_splice.rs); interleaved
  scale      bytes per napping route at 1, 10,000 and 100,000 routes (no containers: their
             engine is unreachable, so each route naps with no resync; the gateway's own cost)
  held       memory per held request by carrier (HTTP/1.1 in clear and over TLS, HTTP/2 over
             TLS): tests/tls.rs's ignored `memory_per_held_request`, built in release by
             scripts/bench.sh (--tls-test), run against this profile's gateway (IDLEWATCHER_BIN)
  builds     build profile and allocator compared (builds each variant), then Pingora's
             runtime settings on the shipped build

Everything it creates (containers labelled idlewatcher-test=1 and idlewatcher-bench=RUN,
processes, temp dirs) is removed at the end, on failure and on Ctrl-C too. The figures go into
BENCHMARKS.md (the sections between the make-bench markers; the rest of the file is kept) and,
in full, into TARGET/bench/latest.json.
"""

import argparse
import datetime
import glob
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ["gate", "footprint", "warm", "herd", "cold", "sse", "streams", "scale", "held", "builds"]
LABEL = "idlewatcher-test=1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# How long a backend that just woke takes its requests through the slow start (`WARM_UP`,
# src/backend/watcher.rs).
WARM_UP_S = 3

# Pingora server keys, the same for idlewatcher and the bare proxy (the shipped conf's values).
SERVER_KEYS = """version: 1
threads: 2
grace_period_seconds: 1
graceful_shutdown_timeout_seconds: 3
upstream_keepalive_pool_size: 1024
"""

# The builds the `builds` stage compares (name, cargo profile, features): the release profile
# the tests use, and the `dist` profile (fat LTO, one codegen unit) with each allocator.
BUILD_VARIANTS = [
    ("release + glibc", "release", ""),
    ("dist + glibc", "dist", ""),
    ("dist + mimalloc", "dist", "mimalloc"),
    ("dist + jemalloc", "dist", "jemalloc"),
]
# What `make run` and `scripts/bench.sh` build (Makefile SHIPPED_BUILD): the variant the
# `builds` stage chose; its runtime settings are compared on it.
SHIPPED_VARIANT = "dist + glibc"
# Pingora runtime settings compared on the shipped build (replacing SERVER_KEYS' `threads: 2`).
RUNTIME_VARIANTS = [
    ("threads 2, work stealing (shipped)", "threads: 2\n"),
    ("threads 1", "threads: 1\n"),
    ("threads 2, no work stealing", "threads: 2\nwork_stealing: false\n"),
]

# The bench's backend image: FROM scratch + Debian's static busybox. `serve` waits
# $LISTEN_DELAY seconds (a backend that takes a while to listen), then runs busybox httpd, and
# exits at once on SIGTERM (a bare httpd as PID 1 would ignore it).
SERVE_SCRIPT = """#!/bin/sh
trap 'exit 0' TERM INT
if [ -n "$LISTEN_DELAY" ]; then sleep "$LISTEN_DELAY"; fi
httpd -f -p "${PORT:-80}" -h /www &
wait
"""
INDEX_HTML = "idlewatcher bench backend: hello\n"
STATIC_BODY = ("idlewatcher bench static upstream. " * 16)[:512] + "\n"


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(cmd, timeout=None, check=True, capture=True, env=None):
    """Runs a command; returns its stdout (text)."""
    result = subprocess.run(
        cmd,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed ({result.returncode}):\n{(result.stderr or '')[-3000:]}"
        )
    return result.stdout if capture else ""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, timeout, what, log_path=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = open(log_path).read()[-3000:] if log_path else ""
            raise RuntimeError(f"{what} exited ({proc.returncode}) before listening:\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} never listened on port {port}")


def http_get(port, host, path="/", timeout=10):
    """One GET over a fresh connection: (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head else 0
    return status, body


def keepalive_gets(port, host, connections, per_connection):
    """`connections` × `per_connection` GETs, each connection kept alive; all must be 200."""
    failures = []

    def one_connection():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            for _ in range(per_connection):
                conn.request("GET", "/", headers={"Host": host})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(response.status)
        except OSError as e:
            failures.append(repr(e))
        finally:
            conn.close()

    threads = [threading.Thread(target=one_connection) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} failed requests, e.g. {failures[:3]}")


def proc_stat(pid):
    """(utime+stime seconds, RSS KiB, peak KiB, threads, context switches) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    switches = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split(":")[1])
        except OSError:
            pass
    kib = lambda key: int(status.get(key, "0 kB").split()[0])
    return {
        "cpu_s": cpu,
        "rss_kib": kib("VmRSS"),
        "hwm_kib": kib("VmHWM"),
        "threads": int(status.get("Threads", "0")),
        "ctx_switches": switches,
    }


def bootstrap_ratio_ci(b, a, resamples=4000):
    """95 % interval of median(b) / median(a), resampling whole rounds (a, b pairs)."""
    import random

    rng = random.Random(1)
    n = len(a)
    ratios = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        ratios.append(statistics.median(b[i] for i in idx) / statistics.median(a[i] for i in idx))
    ratios.sort()
    return [ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]]


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def busy_processes(exclude_pids):
    """The few processes (not ours) using CPU right now, for the report."""
    out = run(["ps", "-eo", "pid,pcpu,comm", "--sort=-pcpu"], check=False)
    rows = []
    for line in out.splitlines()[1:]:
        parts = line.split(None, 2)
        if len(parts) < 3 or int(parts[0]) in exclude_pids or float(parts[1]) < 5:
            continue
        rows.append(f"{parts[2]} ({parts[1]}% CPU)")
    return rows[:6]


class Bench:
    def __init__(self, opts):
        self.opts = opts
        self.target = opts.target_dir
        self.run_id = f"{os.getpid()}{int(time.time()) % 100000}"
        self.prefix = f"iwb{self.run_id}"
        self.run_label = f"idlewatcher-bench={self.run_id}"
        self.tmp = tempfile.mkdtemp(prefix="idlewatcher-bench-")
        os.chmod(self.tmp, 0o755)  # nginx workers (nobody) read the static file here
        self.procs = []  # (name, Popen)
        self.created_containers = False
        self.results = {"stages": {}, "timings": {"build": opts.build_seconds}}
        self.started = time.time()
        self.image = None

    # -- binaries ---------------------------------------------------------------------------
    def bin(self, name, profile=None):
        profile = profile or self.opts.profile
        path = os.path.join(self.target, profile, name)
        if not os.path.exists(path):
            path = os.path.join(self.target, profile, "examples", name)
        if not os.path.exists(path):
            raise RuntimeError(f"{name} is not built under {self.target}/{profile} (run scripts/bench.sh)")
        return path

    def build_variant(self, name, profile, features, reuse=False):
        """Builds the gateway and the bare proxy as `name` (a cargo profile and features) and
        copies both aside: how long the build took and where the two binaries are. `reuse`
        takes the copies an earlier run left (the build time is then that run's)."""
        where = os.path.join(self.target, "bench", "variants", re.sub(r"\W+", "-", name))
        os.makedirs(where, exist_ok=True)
        cmd = ["cargo", "build", "--profile", profile, "--bin", "idlewatcher", "--example", "bare_proxy"]
        if features:
            cmd += ["--features", features]
        record = os.path.join(where, "build.json")
        if reuse and os.path.exists(record):
            with open(record) as f:
                return json.load(f)
        log("$ " + " ".join(cmd))
        t0 = time.time()
        run(cmd, timeout=3600, capture=False, env=dict(os.environ, CARGO_TARGET_DIR=self.target))
        seconds = time.time() - t0
        binaries = {}
        for binary in ["idlewatcher", "bare_proxy"]:
            copy = os.path.join(where, binary)
            shutil.copy2(self.bin(binary, profile), copy)
            binaries[binary] = copy
        built = {"build_s": seconds, "command": " ".join(cmd), "binaries": binaries,
                 "size_bytes": os.path.getsize(binaries["idlewatcher"])}
        with open(record, "w") as f:
            json.dump(built, f)
        return built

    def loadgen(self, *args, timeout=600):
        cmd = [self.bin("loadgen"), *map(str, args)]
        log("$ " + " ".join(cmd[1:]))
        result = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"loadgen {args[0]} failed ({result.returncode})")
        return json.loads(result.stdout.strip().splitlines()[-1])

    # -- processes --------------------------------------------------------------------------
    def spawn(self, name, cmd, env=None):
        log_path = os.path.join(self.tmp, f"{name}.log")
        out = open(log_path, "w")
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        self.procs.append((name, proc))
        return proc, log_path

    def stop(self, proc, sig=signal.SIGINT, timeout=10):
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def cleanup(self):
        for name, proc in reversed(self.procs):
            try:
                self.stop(proc, timeout=5)
            except Exception as e:  # noqa: BLE001 (clean up what can be)
                log(f"could not stop {name}: {e}")
        if self.created_containers:
            try:
                removed = self.loadgen("remove", "--label", self.run_label, "--concurrency", 16, timeout=900)
                self.results["timings"]["remove_containers"] = removed
                log(f"removed {removed['removed']} containers in {removed['seconds']:.1f} s")
            except Exception as e:  # noqa: BLE001
                log(f"container removal failed ({e}); falling back to the docker CLI")
                ids = run(["docker", "ps", "-aq", "--filter", f"label={self.run_label}"], check=False).split()
                for i in range(0, len(ids), 200):
                    run(["docker", "rm", "-f", *ids[i : i + 200]], check=False)
        logs = os.path.join(self.target, "bench", "logs")
        shutil.rmtree(logs, ignore_errors=True)
        os.makedirs(logs, exist_ok=True)
        for root, _, files in os.walk(self.tmp):
            for name in files:
                if name.endswith((".log", ".yaml", ".conf")) or name.startswith("callgrind-"):
                    rel = os.path.relpath(os.path.join(root, name), self.tmp).replace(os.sep, "-")
                    shutil.copy(os.path.join(root, name), os.path.join(logs, rel))
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the machine ------------------------------------------------------------------------
    def machine(self):
        cpu = "unknown"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        docker = run(["docker", "version", "--format", "{{.Server.Version}}"], check=False).strip()
        driver = run(["docker", "info", "--format", "{{.Driver}}"], check=False).strip()
        rustc = run(["rustc", "--version"], check=False).strip()
        mem = 0
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024 // 1024
        return {
            "nproc": os.cpu_count(),
            "cpu": cpu,
            "kernel": os.uname().release,
            "memory_gib": mem,
            "docker": docker,
            "docker_storage": driver,
            "rustc": rustc,
            "nginx": run(["nginx", "-v"], check=False) or subprocess.run(
                ["nginx", "-v"], stderr=subprocess.PIPE, text=True).stderr.strip(),
            "wrk": "wrk (Debian)",
            "loadavg_start": loadavg(),
        }

    # -- the backend image ------------------------------------------------------------------
    def build_image(self):
        busybox = "/bin/busybox"
        digest = hashlib.sha256(SERVE_SCRIPT.encode() + INDEX_HTML.encode())
        with open(busybox, "rb") as f:
            digest.update(f.read())
        image = f"idlewatcher-bench:{digest.hexdigest()[:16]}"
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0:
            self.image = image
            return
        context = os.path.join(self.tmp, "image")
        os.makedirs(os.path.join(context, "bin"))
        os.makedirs(os.path.join(context, "www"))
        shutil.copy(busybox, os.path.join(context, "bin", "busybox"))
        for applet in ["sh", "httpd", "sleep"]:
            os.symlink("busybox", os.path.join(context, "bin", applet))
        with open(os.path.join(context, "bin", "serve"), "w") as f:
            f.write(SERVE_SCRIPT)
        os.chmod(os.path.join(context, "bin", "serve"), 0o755)
        with open(os.path.join(context, "www", "index.html"), "w") as f:
            f.write(INDEX_HTML)
        with open(os.path.join(context, "Dockerfile"), "w") as f:
            f.write(
                "FROM scratch\nCOPY bin /bin\nCOPY www /www\nEXPOSE 80\n"
                f'LABEL {LABEL.replace("=", "=")}\nCMD ["/bin/serve"]\n'
            )
        env = dict(os.environ, DOCKER_BUILDKIT="0")
        run(["docker", "build", "-q", "-t", image, context], env=env, timeout=300)
        self.image = image

    def create(self, name, count=None, env=(), max_seconds=None):
        args = ["create", "--image", self.image, *(["--name", name] if count is None else
                                                   ["--prefix", name, "--count", count]),
                "--concurrency", self.opts.create_concurrency,
                "--label", LABEL, "--label", self.run_label]
        for e in env:
            args += ["--env", e]
        if max_seconds:
            args += ["--max-seconds", int(max_seconds)]
        self.created_containers = True
        return self.loadgen(*args, timeout=1200)

    # -- nginx ------------------------------------------------------------------------------
    def nginx(self, name, body):
        root = os.path.join(self.tmp, name)
        os.makedirs(os.path.join(root, "tmp"), exist_ok=True)
        temps = "".join(
            f"    {kind}_temp_path {root}/tmp/{kind};\n"
            for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        )
        conf = os.path.join(root, "nginx.conf")
        with open(conf, "w") as f:
            f.write(body.replace("@TEMPS@", temps).replace("@ROOT@", root))
        proc, log_path = self.spawn(name, ["nginx", "-p", root, "-c", conf])
        return proc, log_path, conf

    def nginx_proxy(self, name, upstream_port):
        """nginx as a reverse proxy to `upstream_port` with its best settings here (2 workers,
        upstream keepalive, access log off): the listening port and the configuration's path."""
        nginx_port = free_port()
        _, _, nginx_conf = self.nginx(name, f"""daemon off;
worker_processes 2;
worker_rlimit_nofile 20000;
pid @ROOT@/nginx.pid;
error_log @ROOT@/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
@TEMPS@    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream static {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{nginx_port} backlog=4096;
        location / {{
            proxy_pass http://static;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
""")
        wait_listening(nginx_port, None, 10, "the nginx proxy")
        return nginx_port, nginx_conf

    def static_upstream(self):
        port = free_port()
        www = os.path.join(self.tmp, "www")
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, "index.html"), "w") as f:
            f.write(STATIC_BODY)
        os.chmod(www, 0o755)
        os.chmod(os.path.join(www, "index.html"), 0o644)
        body = f"""daemon off;
worker_processes 1;
pid @ROOT@/nginx.pid;
error_log @ROOT@/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
@TEMPS@    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location / {{ }}
    }}
}}
"""
        proc, log_path, conf = self.nginx("static", body)
        wait_listening(port, proc, 10, "the static nginx", log_path)
        return port, conf

    # -- idlewatcher ------------------------------------------------------------------------
    def gateway_config(self, name, listen, routes_yaml, extra="", server_keys=SERVER_KEYS):
        path = os.path.join(self.tmp, f"{name}.yaml")
        with open(path, "w") as f:
            f.write(server_keys)
            f.write("idlewatcher:\n")
            f.write(f'  listen: ["{listen}"]\n')
            f.write(extra)
            f.write("  routes:\n")
            f.write(routes_yaml)
        return path

    def start_gateway(self, name, config, port, wait_resync=True, timeout=300, binary=None):
        env = dict(os.environ, RUST_LOG=os.environ.get("BENCH_RUST_LOG", "info"))
        t0 = time.time()
        proc, log_path = self.spawn(name, [binary or self.bin("idlewatcher"), "-c", config], env=env)
        wait_listening(port, proc, timeout, f"idlewatcher ({name})", log_path)
        listening = time.time() - t0
        resynced = None
        if wait_resync:
            deadline = time.time() + timeout
            while time.time() < deadline:
                with open(log_path) as f:
                    if "watched containers resynced" in f.read():
                        resynced = time.time() - t0
                        break
                if proc.poll() is not None:
                    raise RuntimeError(f"idlewatcher ({name}) exited:\n{open(log_path).read()[-3000:]}")
                time.sleep(0.1)
            if resynced is None:
                raise RuntimeError(f"idlewatcher ({name}) never resynced its containers")
        return proc, log_path, {"listening_s": listening, "resynced_s": resynced}

    def wait_state(self, port, host, state, timeout=60):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                status, body = http_get(port, host, "/.idlewatcher/status")
                start, end = body.find(b"{"), body.rfind(b"}")
                last = json.loads(body[start : end + 1])["state"]
                if status == 200 and last == state:
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"route {host} is {last!r}, not {state!r}, after {timeout} s")

    # -- stages -----------------------------------------------------------------------------
    def stage_gate(self):
        cmd = ["cargo", "bench", "--bench", "gate", "--", "--warm-up-time", "1", "--measurement-time", "3"]
        log("$ " + " ".join(cmd))
        out = run(cmd, timeout=900)
        result = {"command": " ".join(cmd), "benches": {}}
        m = re.search(r"([\d.]+) heap allocations per request \((\d+) for ([\d,]+) requests, (\d+) for ([\d,]+)\)", out)
        if m:
            result["allocations_per_request"] = float(m.group(1))
            result["allocations"] = (f"{m.group(2)} allocations for {m.group(3)} requests, "
                                     f"{m.group(4)} for {m.group(5)}: the difference per request")
        for m in re.finditer(r"^(\S+)\s*\n?\s*time:\s+\[([\d.]+ \S+) ([\d.]+ \S+) ([\d.]+ \S+)\]", out, re.M):
            result["benches"][m.group(1)] = {"low": m.group(2), "median": m.group(3), "high": m.group(4)}
        if not result["benches"]:
            raise RuntimeError("no criterion figures in the gate bench's output:\n" + out[-2000:])
        return result

    def big_routes(self, count, upstream_port):
        """`count` napping routes (r0…) on the created containers, plus the warm-path target."""
        lines = []
        for i in range(count - 1):
            lines.append(
                f"    - {{ name: r{i}, hosts: [r{i}.bench], docker: {{ container: {self.prefix}-{i} }}, port: 80 }}\n"
            )
        lines.append(
            f"    - {{ name: target, hosts: [target.bench], docker: {{ container: {self.prefix}-target }}, "
            f'upstream: "127.0.0.1:{upstream_port}", health: {{ tcp: true }} }}\n'
        )
        return "".join(lines)

    def stage_footprint(self, routes, upstream_port):
        """Creates the containers, starts the big gateway (left running for the warm path)."""
        log(f"creating {routes} stopped containers through the engine API")
        budget = self.opts.create_budget
        created = self.create(self.prefix, routes - 1, max_seconds=budget)
        target = self.create(f"{self.prefix}-target")
        self.results["timings"]["create_containers"] = created
        made = created["created"] + target["created"]
        note = None
        if made < routes:
            note = (f"only {made} of {routes} containers were created within the {budget} s "
                    f"creation budget; the footprint and warm path use {made} routes")
            log(note)
            routes = made
        port = free_port()
        config = self.gateway_config(
            "big", f"127.0.0.1:{port}", self.big_routes(routes, upstream_port),
            "  defaults: { idle_timeout: 1h, wake_timeout: 60s, stop_method: stop }\n",
        )
        t0 = time.time()
        check = run([self.bin("idlewatcher"), "-t", "-c", config], timeout=300)
        validate_s = time.time() - t0
        log(check.strip())
        proc, log_path, startup = self.start_gateway("big", config, port)
        startup["validate_s"] = validate_s
        log(f"big gateway: listening after {startup['listening_s']:.1f} s, resynced after {startup['resynced_s']:.1f} s")
        self.wait_state(port, "target.bench", "napping")
        self.wait_state(port, "r0.bench", "napping")
        time.sleep(2)
        seconds = self.opts.idle_seconds
        before = proc_stat(proc.pid)
        busy_before = busy_processes({proc.pid})
        load_before = loadavg()
        window_start = time.time()
        time.sleep(seconds)
        after = proc_stat(proc.pid)
        window_end = time.time()
        # Every engine event the gateway's stream receives (its filter: these actions, any container).
        events = run(["docker", "events", "--since", f"{window_start:.6f}", "--until", f"{window_end:.6f}",
                      "--filter", "type=container", *sum((["--filter", f"event={a}"] for a in
                      ["start", "unpause", "die", "pause", "destroy", "create"]), []),
                      "--format", "{{.Action}}"], timeout=60, check=False).split()
        cpu = after["cpu_s"] - before["cpu_s"]
        result = {
            "routes": routes,
            "containers": created,
            "note": note,
            "startup": startup,
            "idle_seconds": seconds,
            "rss_kib": after["rss_kib"],
            "startup_peak_kib": after["hwm_kib"],
            "engine_events_in_window": len(events),
            "rss_per_route_bytes": after["rss_kib"] * 1024 / routes,
            "cpu_seconds": cpu,
            "cpu_percent": 100 * cpu / seconds,
            "ctx_switches_per_s": (after["ctx_switches"] - before["ctx_switches"]) / seconds,
            "threads": after["threads"],
            "loadavg": [load_before, loadavg()],
            "others_busy": busy_before,
            "config": config,
        }
        return result, (proc, port, routes, config)

    def wrk(self, port, host, seconds):
        cmd = ["wrk", "-t", str(self.opts.wrk_threads), "-c", str(self.opts.wrk_connections),
               "-d", f"{seconds}s", "--latency", "-H", f"Host: {host}", f"http://127.0.0.1:{port}/"]
        out = run(cmd, timeout=seconds + 60)

        def duration(text):
            value, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()
            return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        requests = int(re.search(r"(\d+) requests in", out).group(1))
        p50 = duration(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
        p99 = duration(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
        errors = re.search(r"Socket errors: (.*)", out)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        return {
            "rps": rps, "requests": requests, "p50_ms": p50, "p99_ms": p99,
            "socket_errors": errors.group(1) if errors else None,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "command": " ".join(cmd[:-3]) + f" -H 'Host: {host}' http://127.0.0.1:PORT/",
        }

    def stage_warm(self, big, upstream_port):
        gw_proc, gw_port, routes, gw_config = big
        # (a) the bare Pingora proxy, with the same server keys.
        bare_port = free_port()
        server_conf = os.path.join(self.tmp, "bare.yaml")
        with open(server_conf, "w") as f:
            f.write(SERVER_KEYS)
        bare_cmd = [self.bin("bare_proxy"), "-c", server_conf, "--listen", f"127.0.0.1:{bare_port}",
                    "--upstream", f"127.0.0.1:{upstream_port}"]
        bare, bare_log = self.spawn("bare", bare_cmd)
        wait_listening(bare_port, bare, 30, "bare_proxy", bare_log)
        # (c) nginx as a reverse proxy with upstream keepalive.
        nginx_port, nginx_conf = self.nginx_proxy("proxy", upstream_port)
        # (b) the target route becomes ready: its container is started by hand and adopted.
        run(["docker", "start", f"{self.prefix}-target"], timeout=60)
        self.wait_state(gw_port, "target.bench", "ready")
        targets = {
            "a_bare_pingora": bare_port,
            "b_idlewatcher": gw_port,
            "c_nginx": nginx_port,
        }
        for name, port in targets.items():
            status, body = http_get(port, "target.bench")
            if status != 200 or body.decode(errors="replace").strip() != STATIC_BODY.strip():
                raise RuntimeError(f"{name} answered {status} {body[:200]!r}, not the static file")
        log("warm-up: 2 s each")
        for port in targets.values():
            self.wrk(port, "target.bench", 2)
        nginx_proc = next(p for n, p in self.procs if n == "proxy")
        pids = {
            "a_bare_pingora": lambda: [bare.pid],
            "b_idlewatcher": lambda: [gw_proc.pid],
            "c_nginx": lambda: [nginx_proc.pid] + children(nginx_proc.pid),
        }

        def cpu(pid_list):
            return sum(proc_stat(pid)["cpu_s"] for pid in pid_list)

        rounds = {name: [] for name in targets}
        busy = busy_processes({gw_proc.pid, bare.pid})
        load_before = loadavg()
        for r in range(self.opts.rounds):
            for name, port in targets.items():
                before = cpu(pids[name]())
                res = self.wrk(port, "target.bench", self.opts.wrk_seconds)
                res["cpu_s"] = cpu(pids[name]()) - before
                res["cpu_us_per_request"] = 1e6 * res["cpu_s"] / max(res["requests"], 1)
                rounds[name].append(res)
                log(f"round {r + 1}/{self.opts.rounds} {name}: {res['rps']:.0f} req/s, "
                    f"p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, "
                    f"{res['cpu_us_per_request']:.1f} µs CPU per request")
        summary = {}
        for name, res in rounds.items():
            summary[name] = {
                "rps_median": statistics.median(x["rps"] for x in res),
                "rps_all": [x["rps"] for x in res],
                "p50_ms_median": statistics.median(x["p50_ms"] for x in res),
                "p99_ms_median": statistics.median(x["p99_ms"] for x in res),
                "cpu_us_per_request_median": statistics.median(x["cpu_us_per_request"] for x in res),
                "cpu_us_per_request_all": [x["cpu_us_per_request"] for x in res],
                "errors": [x["socket_errors"] for x in res if x["socket_errors"]],
                "non_2xx": sum(x["non_2xx"] for x in res),
            }
        a, b, c = (summary[k]["rps_median"] for k in targets)
        cpu_a, cpu_b, cpu_c = (summary[k]["cpu_us_per_request_median"] for k in targets)
        per_round_ba = [rb["rps"] / ra["rps"] for ra, rb in zip(rounds["a_bare_pingora"], rounds["b_idlewatcher"])]
        ci_ba = bootstrap_ratio_ci([x["rps"] for x in rounds["b_idlewatcher"]], [x["rps"] for x in rounds["a_bare_pingora"]])
        ci_cpu = bootstrap_ratio_ci([x["cpu_us_per_request"] for x in rounds["b_idlewatcher"]],
                                    [x["cpu_us_per_request"] for x in rounds["a_bare_pingora"]])
        per_round_bc = [rb["rps"] / rc["rps"] for rc, rb in zip(rounds["c_nginx"], rounds["b_idlewatcher"])]
        self.stop(bare)
        instructions = None
        if self.opts.callgrind_requests > 0:
            # The same two proxies under callgrind, one after the other: instructions per
            # request, a cost the machine's other work cannot disturb.
            self.stop(gw_proc)
            cg_port = free_port()
            with open(gw_config) as f:
                text = f.read().replace(f"127.0.0.1:{gw_port}", f"127.0.0.1:{cg_port}")
            cg_config = os.path.join(self.tmp, "callgrind-idlewatcher.yaml")
            with open(cg_config, "w") as f:
                f.write(text)
            cg_bare_port = free_port()
            bare_cg_cmd = [c if c != f"127.0.0.1:{bare_port}" else f"127.0.0.1:{cg_bare_port}" for c in bare_cmd]
            # Two launches of each, interleaved: a process's heap layout and hash seeds move its
            # count by a few tenths of a percent, its windows agree more closely than that.
            instructions = {"a_bare_pingora": [], "b_idlewatcher": []}
            for launch in range(2):
                instructions["a_bare_pingora"].append(
                    self.instructions_per_request("bare", bare_cg_cmd, cg_bare_port, None, launch))
                instructions["b_idlewatcher"].append(self.instructions_per_request(
                    "idlewatcher", [self.bin("idlewatcher"), "-c", cg_config], cg_port, "target.bench", launch))
            ir_a = statistics.median(x for run_ in instructions["a_bare_pingora"] for x in run_["per_request"])
            ir_b = statistics.median(x for run_ in instructions["b_idlewatcher"] for x in run_["per_request"])
            instructions["b_over_a"] = ir_b / ir_a
            instructions["throughput_b_over_a"] = ir_a / ir_b
            instructions["requests"] = self.opts.callgrind_requests
            instructions["command"] = (
                f"valgrind --tool=callgrind PROXY …; callgrind_control --zero PID; "
                f"{self.opts.callgrind_requests:,} GETs on 4 kept-alive connections; callgrind_control --dump PID; "
                "then the same for 5 s idle (background, subtracted)")
        return {
            "instructions": instructions,
            "routes": routes,
            "rounds": self.opts.rounds,
            "seconds_per_round": self.opts.wrk_seconds,
            "wrk_command": rounds["b_idlewatcher"][0]["command"],
            "bare_command": "target/release/examples/bare_proxy -c SERVER_KEYS.yaml "
                            "--listen 127.0.0.1:PORT --upstream 127.0.0.1:UPSTREAM",
            "nginx_conf": nginx_conf,
            "summary": summary,
            "ratio_b_a_of_medians": b / a,
            "ratio_b_a": statistics.median(per_round_ba),
            "ratio_b_c_of_medians": b / c,
            "ratio_b_a_of_medians_ci95": ci_ba,
            "cpu_per_request_b_over_a": cpu_b / cpu_a,
            "cpu_per_request_b_over_a_ci95": ci_cpu,
            "cpu_per_request_b_over_c": cpu_b / cpu_c,
            "ratio_b_c": statistics.median(per_round_bc),
            "ratio_b_a_per_round": per_round_ba,
            "ratio_b_c_per_round": per_round_bc,
            "loadavg": [load_before, loadavg()],
            "others_busy": busy,
        }

    def stage_builds(self, upstream_port):
        """The build profile and allocator, then Pingora's runtime settings, chosen by measurement.

        Each of BUILD_VARIANTS is built (the gateway and the bare proxy alike), then measured side
        by side: interleaved wrk rounds over every build's bare proxy (a) and gateway (b, one ready
        route) and nginx (c); instructions per request under callgrind (a and b of each build);
        RSS per napping route (1 and 10,000 routes, as the scale stage). RUNTIME_VARIANTS run the
        shipped build's gateway with other `threads`/`work_stealing` keys in the same rounds."""
        builds = {}
        for name, profile, features in BUILD_VARIANTS:
            builds[name] = self.build_variant(name, profile, features, reuse=self.opts.reuse_builds)
        self.create(f"{self.prefix}-builds")
        run(["docker", "start", f"{self.prefix}-builds"], timeout=60)
        route = (f"    - {{ name: target, hosts: [target.bench], docker: {{ container: {self.prefix}-builds }}, "
                 f'upstream: "127.0.0.1:{upstream_port}", health: {{ tcp: true }} }}\n')
        # label -> (command, port, process, is the gateway)
        targets = {}

        def slug(label):
            return re.sub(r"\W+", "-", label).strip("-")

        def add(label, binary, server_keys, gateway):
            port = free_port()
            if gateway:
                config = self.gateway_config(f"builds-{slug(label)}", f"127.0.0.1:{port}", route,
                                             "  defaults: { idle_timeout: 1h }\n", server_keys)
                cmd = [binary, "-c", config]
            else:
                keys = os.path.join(self.tmp, f"builds-{slug(label)}.yaml")
                with open(keys, "w") as f:
                    f.write(server_keys)
                cmd = [binary, "-c", keys, "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{upstream_port}"]
            proc, log_path = self.spawn(f"builds-{slug(label)}", cmd)
            wait_listening(port, proc, 60, label, log_path)
            if gateway:
                self.wait_state(port, "target.bench", "ready")
            targets[label] = (cmd, port, proc, gateway)

        for name, build in builds.items():
            add(f"{name}: a", build["binaries"]["bare_proxy"], SERVER_KEYS, False)
            add(f"{name}: b", build["binaries"]["idlewatcher"], SERVER_KEYS, True)
        shipped = builds[SHIPPED_VARIANT]["binaries"]["idlewatcher"]
        for label, keys in RUNTIME_VARIANTS[1:]:
            add(f"{SHIPPED_VARIANT}: b, {label}", shipped, SERVER_KEYS.replace("threads: 2\n", keys), True)
        nginx_port, nginx_conf = self.nginx_proxy("builds-nginx", upstream_port)
        nginx_proc = next(p for n, p in self.procs if n == "builds-nginx")
        for label, (_, port, _, _) in targets.items():
            status, _ = http_get(port, "target.bench")
            if status != 200:
                raise RuntimeError(f"{label} answered {status}")
        every = {label: (port, lambda proc=proc: [proc.pid]) for label, (_, port, proc, _) in targets.items()}
        every["c: nginx"] = (nginx_port, lambda: [nginx_proc.pid] + children(nginx_proc.pid))
        for port, _ in every.values():
            self.wrk(port, "target.bench", 2)
        rounds = {label: [] for label in every}
        load_before = loadavg()
        for r in range(self.opts.build_rounds):
            for label, (port, pids) in every.items():
                before = sum(proc_stat(pid)["cpu_s"] for pid in pids())
                res = self.wrk(port, "target.bench", self.opts.wrk_seconds)
                res["cpu_us_per_request"] = 1e6 * (sum(proc_stat(pid)["cpu_s"] for pid in pids()) - before) / max(res["requests"], 1)
                rounds[label].append(res)
                log(f"builds round {r + 1}/{self.opts.build_rounds} {label}: {res['rps']:.0f} req/s, "
                    f"{res['cpu_us_per_request']:.1f} µs CPU per request")
        load_after = loadavg()
        for _, _, proc, _ in targets.values():
            self.stop(proc)
        rps = {label: [x["rps"] for x in res] for label, res in rounds.items()}
        cpu = {label: [x["cpu_us_per_request"] for x in res] for label, res in rounds.items()}
        median = statistics.median
        rows = []
        for name, build in builds.items():
            a, b = f"{name}: a", f"{name}: b"
            row = {
                "build": name, "build_s": build["build_s"], "size_bytes": build["size_bytes"],
                "command": build["command"],
                "rps_a": median(rps[a]), "rps_b": median(rps[b]),
                "cpu_us_a": median(cpu[a]), "cpu_us_b": median(cpu[b]),
                "b_over_a": median(rps[b]) / median(rps[a]),
                "b_over_a_ci95": bootstrap_ratio_ci(rps[b], rps[a]),
                "b_over_c": median(rps[b]) / median(rps["c: nginx"]),
                "b_over_c_ci95": bootstrap_ratio_ci(rps[b], rps["c: nginx"]),
            }
            if self.opts.callgrind_requests > 0:
                for side, label in [("a", a), ("b", b)]:
                    cmd, port, _, gateway = targets[label]
                    counted = self.instructions_per_request(
                        f"builds-{slug(label)}", cmd, port, "target.bench" if gateway else None, 0)
                    row[f"instructions_{side}"] = median(counted["per_request"])
            napping = self.rss_per_route(build["binaries"]["idlewatcher"], [1, 10_000])
            row["bytes_per_napping_route"] = napping[-1].get("bytes_per_route")
            rows.append(row)
            log(f"builds: {row}")
        runtime = []
        for label, _ in RUNTIME_VARIANTS:
            key = f"{SHIPPED_VARIANT}: b" + ("" if label == RUNTIME_VARIANTS[0][0] else f", {label}")
            runtime.append({
                "settings": label, "rps": median(rps[key]), "cpu_us": median(cpu[key]),
                "over_shipped": median(rps[key]) / median(rps[f"{SHIPPED_VARIANT}: b"]),
                "over_shipped_ci95": bootstrap_ratio_ci(rps[key], rps[f"{SHIPPED_VARIANT}: b"]),
                "over_c": median(rps[key]) / median(rps["c: nginx"]),
            })
        return {
            "rows": rows, "runtime": runtime, "shipped": SHIPPED_VARIANT,
            "nginx": {"rps": median(rps["c: nginx"]), "cpu_us": median(cpu["c: nginx"]), "conf": nginx_conf},
            "rounds": self.opts.build_rounds, "seconds_per_round": self.opts.wrk_seconds,
            "per_round_rps": rps, "loadavg": [load_before, load_after],
            "wrk_command": rounds["c: nginx"][0]["command"],
        }

    def instructions_per_request(self, name, cmd, port, ready_host, launch, windows=2, idle_seconds=5):
        """`cmd` under callgrind: instructions per request over `--callgrind-requests` GETs.

        Each window's count has the process's background work (timer threads, the idle ticker),
        measured in an idle window just after, taken out in proportion to its duration: under
        valgrind a window's duration follows the machine's load, the requests' cost does not."""
        out = os.path.join(self.tmp, f"callgrind-{name}-{launch}.out")
        t0 = time.time()
        proc, log_path = self.spawn(f"callgrind-{name}-{launch}",
                                    ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd])
        wait_listening(port, proc, 600, f"{name} under callgrind", log_path)
        if ready_host:
            self.wait_state(port, ready_host, "ready", timeout=600)
            # A backend found running at start-up counts as just woken: for `WARM_UP_S` its
            # requests take the slow start. The warm path is measured past it.
            time.sleep(WARM_UP_S + 1)
        started = time.time() - t0
        host = ready_host or "target.bench"
        keepalive_gets(port, host, 4, 100)  # warm-up: connections, pools, caches, timer threads

        def window(label, load):
            run(["callgrind_control", "--zero", str(proc.pid)], timeout=60)
            began = time.time()
            load()
            run(["callgrind_control", f"--dump={label}", str(proc.pid)], timeout=60)
            seconds = time.time() - began
            dumps = sorted(glob.glob(out + ".*"), key=lambda path: int(path.rsplit(".", 1)[1]))
            with open(dumps[-1]) as f:
                return int(re.search(r"^summary:\s+(\d+)", f.read(), re.M).group(1)), seconds

        requests = self.opts.callgrind_requests // 4 * 4
        loads = [window(f"load{i}", lambda: keepalive_gets(port, host, 4, requests // 4)) for i in range(windows)]
        idle, idle_s = window("idle", lambda: time.sleep(idle_seconds))
        background = idle / idle_s
        per_request = [(total - background * seconds) / requests for total, seconds in loads]
        self.stop(proc, timeout=30)
        log(f"{name} under callgrind (launch {launch}): started in {started:.0f} s; background "
            f"{background:,.0f} instructions/s; instructions per request "
            + ", ".join(f"{x:,.0f}" for x in per_request))
        return {"per_request": per_request, "startup_s": started, "background_per_s": background,
                "window_s": [seconds for _, seconds in loads]}

    def small_gateway(self, routes_yaml, name):
        port = free_port()
        config = self.gateway_config(
            f"gateway-{name}", f"127.0.0.1:{port}", routes_yaml,
            "  defaults: { idle_timeout: 1h, wake_timeout: 60s, max_waiters: 20000 }\n"
            # Every load client connects from 127.0.0.1: the per-client and per-route caps on
            # event streams (1,024 and 4,096 by default) would refuse most of the 10,000.
            "  clients: { max_event_streams_per_ip: 20000, max_event_streams_per_route: 20000 }\n",
        )
        proc, log_path, _ = self.start_gateway(f"gateway-{name}", config, port)
        return proc, port, config

    def stage_herd(self, gateway):
        return self.many_clients(gateway, "herd", self.opts.herd)

    def many_clients(self, gateway, kind, count):
        """`loadgen herd|sse`: `count` clients at once on the sleeping route `KIND.bench`."""
        proc, port, _ = gateway
        host = f"{kind}.bench"
        self.wait_state(port, host, "napping")
        time.sleep(1)
        result = self.loadgen(kind, "--gateway", f"127.0.0.1:{port}", "--host", host,
                              "--count", count, "--container", f"{self.prefix}-{kind}",
                              "--pid", proc.pid, timeout=300)
        result["command"] = (f"loadgen {kind} --gateway 127.0.0.1:PORT --host {host} --count "
                             f"{count} --container PREFIX-{kind} --pid GATEWAY_PID")
        return result

    def stage_cold(self, gateway):
        proc, port, _ = gateway
        out = {}
        for method, host in [("stop", "cold-stop.bench"), ("pause", "cold-pause.bench")]:
            container = f"{self.prefix}-cold-{method}"
            if method == "pause":
                # Running, adopted, then paused by hand: asleep by the pause method.
                self.wait_state(port, host, "ready")
                run(["docker", "pause", container], timeout=60)
            self.wait_state(port, host, "napping")
            out[method] = self.loadgen("cold", "--gateway", f"127.0.0.1:{port}", "--host", host,
                                       "--container", container, "--method", method,
                                       "--wakes", self.opts.wakes, timeout=900)
            out[method]["command"] = (f"loadgen cold --gateway 127.0.0.1:PORT --host {host} --container "
                                      f"PREFIX-cold-{method} --method {method} --wakes {self.opts.wakes}")
        return out

    def stage_sse(self, gateway):
        return self.many_clients(gateway, "sse", self.opts.subscribers)

    def stage_scale(self):
        """RSS of a gateway with 1, 10,000 and 100,000 napping routes whose engine is unreachable
        (`tcp://127.0.0.1:1`): what the gateway itself keeps per route, without the engine's
        resync. Per route = (RSS(N) - RSS(1)) / (N - 1)."""
        return {"rows": self.rss_per_route(self.bin("idlewatcher"), self.opts.scale_routes),
                "reproduce": "scripts/bench.sh --only scale --no-write (config: one line per route, "
                             "`- { name: rN, hosts: [rN.bench], docker: { container: scale-N }, port: 80 }`, "
                             "`docker: { host: \"tcp://127.0.0.1:1\" }`)"}

    def rss_per_route(self, binary, counts):
        """The rows of `stage_scale` for the gateway `binary`, one per count of routes."""
        results = []
        base = None
        for count in counts:
            port = free_port()
            routes = "".join(
                f"    - {{ name: r{i}, hosts: [r{i}.bench], docker: {{ container: scale-{i} }}, port: 80 }}\n"
                for i in range(count)
            )
            config = self.gateway_config(
                f"scale-{count}", f"127.0.0.1:{port}", routes,
                '  docker: { host: "tcp://127.0.0.1:1" }\n'
                "  defaults: { idle_timeout: 1h }\n",
            )
            t0 = time.time()
            proc, _, _ = self.start_gateway(f"scale-{count}", config, port, wait_resync=False, binary=binary)
            self.wait_state(port, f"r{count - 1}.bench", "napping", timeout=300)
            ready_s = time.time() - t0
            time.sleep(5)
            stat = proc_stat(proc.pid)
            self.stop(proc)
            row = {"routes": count, "rss_kib": stat["rss_kib"], "peak_kib": stat["hwm_kib"],
                   "listening_and_napping_s": ready_s}
            if base is None:
                base = stat["rss_kib"]
            elif count > 1:
                row["bytes_per_route"] = (stat["rss_kib"] - base) * 1024 / (count - 1)
            results.append(row)
            log(f"scale: {row}")
        return results

    def stage_held(self):
        """Memory per held request by carrier: runs tests/tls.rs's ignored test
        `memory_per_held_request` (the release test binary scripts/bench.sh built) against this
        profile's gateway (`IDLEWATCHER_BIN`), `HELD` requests per carrier. For each carrier the
        test starts a fresh gateway in front of a container of its own that never listens (it
        creates and removes the container itself), holds the requests and prints
        `MEASURE <carrier>: N connections or requests, RSS a → b KiB: X bytes each`."""
        test = self.opts.tls_test
        if not test or not os.path.exists(test):
            raise RuntimeError(f"the tls test binary {test!r} is missing (run scripts/bench.sh, which passes --tls-test)")
        gateway = self.bin("idlewatcher")
        args = ["--ignored", "--nocapture", "--exact", "memory_per_held_request"]
        env = dict(os.environ, HELD=str(self.opts.held), IDLEWATCHER_BIN=gateway)
        log(f"$ HELD={self.opts.held} IDLEWATCHER_BIN={gateway} {test} {' '.join(args)}")
        load_before = loadavg()
        proc, log_path = self.spawn("held-test", [test, *args], env=env)
        try:
            code = proc.wait(timeout=1800)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise RuntimeError(f"memory_per_held_request did not finish in 30 min (log: {log_path}; "
                               "its test container may be left: the tests sweep it after an hour)")
        load_after = loadavg()
        with open(log_path, encoding="utf-8") as f:
            out = f.read()
        if code != 0:
            raise RuntimeError(f"memory_per_held_request failed ({code}):\n{out[-3000:]}")
        pattern = r"^MEASURE (.+?): (\d+) connections or requests, RSS (\d+) → (\d+) KiB: (\d+) bytes each$"
        bytes_per_held, rss_kib = {}, {}
        for m in re.finditer(pattern, out, re.M):
            carrier = m.group(1)
            if int(m.group(2)) != self.opts.held:
                raise RuntimeError(f"{carrier}: {m.group(2)} held, not {self.opts.held}")
            bytes_per_held[carrier] = int(m.group(5))
            rss_kib[carrier] = [int(m.group(3)), int(m.group(4))]
            log(f"held: {m.group(0)}")
        if len(bytes_per_held) < 6:
            raise RuntimeError(f"{len(bytes_per_held)} MEASURE lines, not 6, in the test's output:\n{out[-3000:]}")
        relative = lambda path: os.path.relpath(path, ROOT) if path.startswith(ROOT) else path  # noqa: E731
        return {
            "count": self.opts.held,
            "bytes_per_held": bytes_per_held,
            "rss_kib": rss_kib,
            "gateway": relative(gateway),
            "command": f"HELD={self.opts.held} IDLEWATCHER_BIN={relative(gateway)} {relative(test)} {' '.join(args)}",
            "cargo_command": (f"HELD={self.opts.held} IDLEWATCHER_BIN={relative(gateway)} cargo test --release "
                              f"--test tls -- {' '.join(args)}"),
            "loadavg": [load_before, load_after],
        }

    def stage_streams(self):
        """A ready TCP stream route in front of a host echo server (`loadgen echo`; the route's
        container only carries the backend's state), against the echo server directly and the
        same splice without the gate (`bare_splice`), interleaved round by round."""
        container = f"{self.prefix}-streams"
        self.create(container)
        run(["docker", "start", container], timeout=60)
        echo_port, gw_port, stream_port, bare_port = free_port(), free_port(), free_port(), free_port()
        echo, echo_log = self.spawn("echo", [self.bin("loadgen"), "echo", "--listen", f"127.0.0.1:{echo_port}"])
        wait_listening(echo_port, echo, 30, "loadgen echo", echo_log)
        routes = (f"    - {{ name: splice, docker: {{ container: {container} }}, idle_timeout: 1h, "
                  f"streams: [{{ listen: \"127.0.0.1:{stream_port}\", upstream: \"127.0.0.1:{echo_port}\" }}] }}\n")
        config = self.gateway_config("gateway-streams", f"127.0.0.1:{gw_port}", routes)
        gateway, _, _ = self.start_gateway("gateway-streams", config, gw_port)
        wait_listening(stream_port, gateway, 30, "idlewatcher stream")
        server_conf = os.path.join(self.tmp, "bare-splice.yaml")
        with open(server_conf, "w") as f:
            f.write(SERVER_KEYS)
        bare, bare_log = self.spawn("bare-splice", [self.bin("bare_splice"), "-c", server_conf,
                                                    "--listen", f"127.0.0.1:{bare_port}",
                                                    "--upstream", f"127.0.0.1:{echo_port}"])
        wait_listening(bare_port, bare, 30, "bare_splice", bare_log)
        targets = {"direct": echo_port, "idlewatcher": stream_port, "bare_splice": bare_port}
        # A first connection wakes nothing (the container runs) but resolves and probes: warm up.
        self.loadgen("splice", "--target", f"127.0.0.1:{stream_port}", "--mode", "connect",
                     "--seconds", 0.5, "--connections", 1)
        rounds = {mode: {name: [] for name in targets} for mode in ["throughput", "connect"]}
        for r in range(self.opts.stream_rounds):
            for mode, connections in [("throughput", 8), ("connect", 4)]:
                for name, port in targets.items():
                    res = self.loadgen("splice", "--target", f"127.0.0.1:{port}", "--mode", mode,
                                       "--seconds", self.opts.stream_seconds, "--connections", connections)
                    value = res["mib_per_s"] if mode == "throughput" else res["per_s"]
                    rounds[mode][name].append(value)
                    log(f"round {r + 1}/{self.opts.stream_rounds} {mode} {name}: {value:.0f}")
        out = {"rounds": self.opts.stream_rounds, "seconds": self.opts.stream_seconds}
        for mode, by_target in rounds.items():
            med = {name: statistics.median(values) for name, values in by_target.items()}
            out[mode] = {
                "median": med,
                "per_round": by_target,
                "idlewatcher_vs_direct": med["idlewatcher"] / med["direct"],
                "idlewatcher_vs_bare_splice": med["idlewatcher"] / med["bare_splice"],
                "ci95_idlewatcher_vs_bare_splice": bootstrap_ratio_ci(by_target["idlewatcher"],
                                                                       by_target["bare_splice"]),
            }
        out["commands"] = {
            "throughput": "loadgen splice --target 127.0.0.1:PORT --mode throughput --seconds S --connections 8",
            "connect": "loadgen splice --target 127.0.0.1:PORT --mode connect --seconds S --connections 4",
        }
        for proc in (bare, gateway, echo):
            self.stop(proc)
        return out

    # -- the whole run ----------------------------------------------------------------------
    def timed(self, name, fn, *args):
        t0 = time.time()
        log(f"== {name}")
        try:
            result = fn(*args)
        except Exception as e:
            self.results["stages"][name] = {"error": str(e)}
            self.results["timings"][name] = time.time() - t0
            log(f"{name} FAILED: {e}")
            if self.opts.keep_going:
                return None
            raise
        self.results["timings"][name] = time.time() - t0
        return result

    def main(self):
        only = set(self.opts.only.split(",")) if self.opts.only else set(STAGES)
        self.results["machine"] = self.machine()
        self.results["date"] = datetime.date.today().isoformat()
        self.results["started"] = datetime.datetime.now().isoformat(timespec="seconds")
        self.results["options"] = vars(self.opts)
        stages = self.results["stages"]
        if "gate" in only:
            result = self.timed("gate", self.stage_gate)
            if result:
                stages["gate"] = result
        docker_stages = only & {"footprint", "warm", "herd", "cold", "sse", "streams", "builds"}
        if docker_stages:
            self.build_image()
            upstream_port, _ = self.static_upstream()
        if only & {"footprint", "warm"}:
            footprint = self.timed("footprint", self.stage_footprint, self.opts.routes, upstream_port)
            if footprint:
                result, big = footprint
                if "footprint" in only:
                    stages["footprint"] = result
                if "warm" in only:
                    warm = self.timed("warm", self.stage_warm, big, upstream_port)
                    if warm:
                        stages["warm"] = warm
                self.stop(big[0])
        if only & {"herd", "cold", "sse"}:
            log("== creating the herd, cold-start and SSE containers")
            self.create(f"{self.prefix}-herd", env=[f"LISTEN_DELAY={self.opts.herd_listen_delay}"])
            self.create(f"{self.prefix}-cold-stop", env=[f"LISTEN_DELAY={self.opts.listen_delay}"])
            self.create(f"{self.prefix}-cold-pause")
            self.create(f"{self.prefix}-sse", env=[f"LISTEN_DELAY={self.opts.listen_delay}"])
            run(["docker", "start", f"{self.prefix}-cold-pause"], timeout=60)
            routes = "".join(
                f"    - {{ name: {n}, hosts: [{n}.bench], docker: {{ container: {self.prefix}-{n} }}, port: 80"
                f"{', stop_method: pause' if n == 'cold-pause' else ''} }}\n"
                for n in ["herd", "cold-stop", "cold-pause", "sse"]
            )
            # A fresh gateway for each stage: memory freed by one stage (and kept by the
            # allocator) must not hide the next one's.
            for name, fn in [("herd", self.stage_herd), ("cold", self.stage_cold), ("sse", self.stage_sse)]:
                if name in only:
                    gateway = self.small_gateway(routes, name)
                    result = self.timed(name, fn, gateway)
                    if result:
                        stages[name] = result
                    self.stop(gateway[0])
        if "scale" in only:
            result = self.timed("scale", self.stage_scale)
            if result:
                stages["scale"] = result
        if "held" in only:
            result = self.timed("held", self.stage_held)
            if result:
                stages["held"] = result
        if "builds" in only:
            result = self.timed("builds", self.stage_builds, upstream_port)
            if result:
                stages["builds"] = result
        if "streams" in only:
            result = self.timed("streams", self.stage_streams)
            if result:
                stages["streams"] = result
        self.results["machine"]["loadavg_end"] = loadavg()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target-dir", required=True, help="cargo's target directory (release build inside)")
    parser.add_argument("--build-seconds", type=float, default=0, help="how long scripts/bench.sh spent building")
    parser.add_argument("--only", help="comma-separated stages: " + ",".join(STAGES))
    parser.add_argument("--routes", type=int, default=10_000, help="routes (and stopped containers) for footprint and warm path")
    parser.add_argument("--scale-routes", type=lambda v: [int(x) for x in v.split(",")], default=[1, 10_000, 100_000],
                        help="route counts of the scale stage, comma-separated, the first being the base")
    parser.add_argument("--create-budget", type=float, default=240, help="seconds allowed for creating the containers")
    parser.add_argument("--create-concurrency", type=int, default=16)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--build-rounds", type=int, default=5, help="interleaved wrk rounds of the builds stage")
    parser.add_argument("--reuse-builds", action="store_true",
                        help="builds stage: measure the binaries an earlier run built (target/bench/variants)")
    parser.add_argument("--profile", default="release", help="the cargo profile scripts/bench.sh built")
    parser.add_argument("--tls-test", help="held stage: the release-built tests/tls.rs binary (scripts/bench.sh passes it)")
    parser.add_argument("--held", type=int, default=2000, help="held stage: requests (or connections) held per carrier")
    parser.add_argument("--wrk-seconds", type=int, default=5)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--wrk-connections", type=int, default=64)
    parser.add_argument("--callgrind-requests", type=int, default=8_000,
                        help="requests per callgrind measurement of the warm path (0: skip it)")
    parser.add_argument("--herd", type=int, default=10_000)
    parser.add_argument("--herd-listen-delay", default="0")
    parser.add_argument("--listen-delay", default="0.25", help="seconds the cold-start and SSE backends take to listen")
    parser.add_argument("--wakes", type=int, default=20)
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--stream-rounds", type=int, default=5, help="interleaved rounds of the streams stage")
    parser.add_argument("--stream-seconds", type=float, default=2, help="seconds per streams measurement")
    parser.add_argument("--keep-going", action="store_true", help="run the other stages after one fails")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    opts = parser.parse_args()

    bench = Bench(opts)

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    failed = None
    try:
        bench.main()
    except BaseException as e:  # noqa: BLE001 (report, clean up, exit non-zero)
        failed = e
        log(f"FAILED: {e!r}")
    finally:
        bench.cleanup()
    bench.results["total_seconds"] = time.time() - bench.started + opts.build_seconds
    out_dir = os.path.join(opts.target_dir, "bench")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "latest.json"), "w") as f:
        json.dump(bench.results, f, indent=2, default=str)
    import bench_report  # scripts/bench_report.py

    report = bench_report.render(bench.results)
    with open(os.path.join(out_dir, "latest.md"), "w") as f:
        f.write("\n".join(report.values()))
    # Only a complete run replaces the figures in BENCHMARKS.md.
    if not opts.no_write and failed is None and not opts.only:
        bench_report.update_benchmarks_md(os.path.join(ROOT, "BENCHMARKS.md"), report)
        log("BENCHMARKS.md updated")
    log(f"results: {out_dir}/latest.json, {out_dir}/latest.md; total {bench.results['total_seconds']:.0f} s")
    if failed is not None:
        sys.exit(1)


if __name__ == "__main__":
    main()
