"""Benchmark ModelGate: direct to each service vs through the gateway (both upstream transports), and
the same sentiment model served by LitServe and by a tutorial-style FastAPI app.

    python scripts/bench.py            # the full run (~10 minutes): concurrency 1, 8, 32, 64; 6 s a point
    python scripts/bench.py --quick    # ~2 minutes: concurrency 1 and 32; 3 s a point

Everything runs on this machine: the three services (one worker each), two gateways in front of them
(UPSTREAM_TRANSPORT=aiohttp and =httpx; auth, JSON access logs, request IDs and rate limiting all on,
with a limit too generous to refuse anything), the two peer servers, and Debian's `wrk` as the load
generator (C, one thread, a Lua script for the POST bodies and the API key; installed with apt-get if
missing). The targets of one route are measured back to back at each concurrency, so slow drift of a
shared machine hits them alike: read the ratios, not the absolute figures.

Writes `results/bench-<timestamp>/` (report.md, results.json, img/*.png, log tails) and copies the
report to docs/benchmarks.md and docs/img/ (unless --no-docs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from devstack import SERVICES, LocalStack, free_port

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "tests" / "assets"
PEERS = REPO / "scripts" / "peers"
LITSERVE_PIN = "litserve==0.2.19"

# The gateway with every feature on; the limit is there (and checked on every request) but never bites.
GATEWAY_ENV = {
    "RATE_LIMIT_ENABLED": "true",
    "RATE_LIMIT_PER_SECOND": "1000000",
    "RATE_LIMIT_BURST": "1000000",
    "LOG_LEVEL": "INFO",
    "LOG_JSON": "true",
}
TRANSPORTS = ("aiohttp", "httpx")
SENTENCE = "The delivery was quick and the headphones sound great, I would happily buy from them again."
IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}

# wrk's Lua side: a fixed POST (body read from a file), then one JSON line with the summary.
WRK_LUA = r"""
function init(args)
  wrk.method = "POST"
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = args[2]
  if args[3] ~= nil and args[3] ~= "" then wrk.headers["X-API-Key"] = args[3] end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p95":%d,"p99":%d,"max":%d,"mean":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean))
end
"""


# ----------------------------------------------------------------------------------------------------
# What is measured


@dataclass(frozen=True)
class Route:
    name: str
    path: str
    service: str  # the ModelGate service behind it
    content_type: str
    body: bytes
    check: Callable[[Any], bool]  # is a 200 answer's JSON the right shape?


@dataclass
class Target:
    """Something that answers a route: a service directly, a gateway, or a peer server."""

    name: str
    kind: str  # direct | gateway | peer
    base_url: str
    api_key: str = ""
    path_override: str | None = None  # peers answer on their own path
    pids: Callable[[], list[int]] = field(default=lambda: [])  # processes whose CPU it spends
    pause: Callable[[bool], None] | None = None  # SIGSTOP/SIGCONT for peers when not measured

    def url(self, route: Route) -> str:
        return self.base_url + (self.path_override or route.path)


@dataclass
class Point:
    route: str
    target: str
    kind: str
    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # non-2xx answers, socket errors and timeouts
    cpu_ms_per_req: dict[str, float]  # process group -> CPU ms per request
    cpu_cores: dict[str, float]  # process group -> cores used on average
    wrk_cores: float
    foreign_cores: float  # CPU used by processes that are not part of the benchmark


@dataclass
class Report:
    started: str
    quick: bool
    duration_s: float
    concurrencies: list[int]
    machine: dict[str, Any]
    load_before: str
    load_after: str = ""
    points: list[Point] = field(default_factory=list)
    cold_start_s: dict[str, float] = field(default_factory=dict)
    memory_idle: dict[str, dict[str, float]] = field(default_factory=dict)
    memory_loaded: dict[str, dict[str, float]] = field(default_factory=dict)
    hop_breakdown: dict[str, dict[str, float]] = field(default_factory=dict)
    peers: dict[str, str] = field(default_factory=dict)  # name -> "ok" or why it could not run
    # gateway transport -> the top frames of a py-spy profile of its worker under iris load
    profiles: dict[str, dict[str, list[tuple[str, float]]]] = field(default_factory=dict)
    models: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # service -> what it serves
    idle_cpu_pct: dict[str, float] = field(default_factory=dict)  # process tree -> % of a core when idle
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------
# Tools: wrk and litserve


def ensure_wrk() -> tuple[str, str]:
    """Path and version of wrk; installs Debian's package when it is missing and we are root."""
    path = shutil.which("wrk")
    if path is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise SystemExit("wrk is missing: install it (sudo apt-get install -y wrk) and run again")
        print("==> wrk is missing: installing Debian's package (apt-get install -y wrk)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "wrk"], check=True, env=env, stdout=subprocess.DEVNULL
        )
        path = shutil.which("wrk")
        if path is None:
            raise SystemExit("apt-get installed wrk but it is not on PATH")
    version = subprocess.run([path, "-v"], capture_output=True, text=True).stdout.splitlines()
    found = version[0].split(" Copyright")[0] if version else "wrk"
    print(f"==> load generator: {path} ({found})", flush=True)
    return path, found


def ensure_litserve() -> tuple[bool, str]:
    """Whether litserve imports in this interpreter (pip-installing it when missing), and its version
    or the reason it cannot be used."""

    def probe() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "import litserve; print(litserve.__version__)"],
            capture_output=True,
            text=True,
        )

    found = probe()
    if found.returncode != 0:
        print(f"==> litserve is missing: pip install {LITSERVE_PIN}", flush=True)
        installed = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", LITSERVE_PIN], capture_output=True, text=True
        )
        if installed.returncode != 0:
            tail = (installed.stderr or installed.stdout).strip().splitlines()[-3:]
            return False, f"`pip install {LITSERVE_PIN}` failed: {' / '.join(tail)}"
        found = probe()
        if found.returncode != 0:
            tail = found.stderr.strip().splitlines()[-1:] or ["no output"]
            return False, f"litserve installed but does not import: {tail[0]}"
    return True, found.stdout.strip()


# ----------------------------------------------------------------------------------------------------
# Machine facts


def machine_info(wrk_version: str) -> dict[str, Any]:
    model = "unknown"
    with suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, env={"LC_ALL": "C"}).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    mem_gib = psutil.virtual_memory().total / 2**30
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO).stdout
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count() or 0,
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version,
        "git": commit + (" (uncommitted changes)" if dirty.strip() else ""),
    }


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min, {os.cpu_count()} CPUs)"


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------------------------------
# Processes


def tree_pids(root: int) -> list[int]:
    try:
        proc = psutil.Process(root)
        return [root, *(c.pid for c in proc.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def pids_of(stack: LocalStack, name: str) -> Callable[[], list[int]]:
    """The current pids of one of the stack's processes and its workers."""
    return lambda: tree_pids(stack.processes[name].pid)


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def memory_of(pids: Sequence[int]) -> dict[str, float]:
    """RSS and PSS (shared pages split between sharers) of a process tree, in MiB, and the largest
    single process's RSS (a Gunicorn worker, usually)."""
    rss = pss = largest = 0.0
    for pid in pids:
        with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            info = psutil.Process(pid).memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
            largest = max(largest, info.rss)
    return {
        "processes": len(pids),
        "rss_mib": round(rss / 2**20, 1),
        "pss_mib": round(pss / 2**20, 1),
        "largest_rss_mib": round(largest / 2**20, 1),
    }


def idle_cpu(groups: dict[str, Callable[[], list[int]]], seconds: float = 3.0) -> dict[str, float]:
    """Percent of one core each process tree uses while nobody sends it anything."""
    pids = {name: get() for name, get in groups.items()}
    before = {name: cpu_seconds(p) for name, p in pids.items()}
    time.sleep(seconds)
    return {name: round(100 * (cpu_seconds(p) - before[name]) / seconds, 1) for name, p in pids.items()}


def wait_http_ok(url: str, timeout: float, alive: Callable[[], bool]) -> float:
    """Poll `url` until it answers 200; seconds waited. Raises if `alive()` turns false or time runs out."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not alive():
            raise RuntimeError(f"the process behind {url} exited")
        with suppress(OSError, urllib.error.HTTPError), urllib.request.urlopen(url, timeout=2) as resp:
            if resp.status == 200:
                return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s")


@dataclass
class PeerProcess:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return tree_pids(self.proc.pid)

    def pause(self, stop: bool) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGSTOP if stop else signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with suppress(ProcessLookupError):  # LitServe's workers outlive a killed parent otherwise
            os.killpg(self.proc.pid, signal.SIGKILL)


def start_peer(name: str, argv: list[str], port: int, log_dir: Path) -> PeerProcess:
    log = open(log_dir / f"peer-{name}.log", "ab")  # noqa: SIM115 - the child owns it
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MODEL_DIR": str(REPO / "artifacts" / "sentiment"),
    }
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    return PeerProcess(name, port, proc)


# ----------------------------------------------------------------------------------------------------
# Requests


def multipart(field_name: str, filename: str, data: bytes, mime: str) -> tuple[bytes, str]:
    boundary = "----modelgatebench7d3f1a"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
            f"Content-Type: {mime}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def fraud_example() -> dict[str, Any]:
    """The first documented fraud example (the one the gateway's /openapi.json shows): a normal purchase."""
    from modelgate_core.schemas.fraud import FraudTransaction

    extra: Any = FraudTransaction.model_config.get("json_schema_extra")
    return dict(extra["examples"][0])


def make_routes() -> list[Route]:
    image, image_type = multipart("file", "coffee.jpg", (ASSETS / "coffee.jpg").read_bytes(), "image/jpeg")
    return [
        Route(
            "iris",
            "/v1/tabular/iris",
            "tabular",
            "application/json",
            json.dumps(IRIS).encode(),
            lambda b: (
                b.get("label") == "setosa"
                and set(b.get("probabilities", {}))
                == {
                    "setosa",
                    "versicolor",
                    "virginica",
                }
            ),
        ),
        Route(
            "fraud",
            "/v1/tabular/fraud",
            "tabular",
            "application/json",
            json.dumps(fraud_example()).encode(),
            lambda b: 0 <= float(b.get("fraud_probability", -1)) <= 1 and b.get("is_fraud") is False,
        ),
        Route(
            "sentiment",
            "/v1/nlp/sentiment",
            "nlp",
            "application/json",
            json.dumps({"text": SENTENCE}).encode(),
            lambda b: b.get("label") == "positive" and 0.5 <= float(b.get("score", -1)) <= 1,
        ),
        Route(
            "classify",
            "/v1/vision/classify?top_k=5",
            "vision",
            image_type,
            image,
            lambda b: len(b.get("predictions", [])) == 5 and b["predictions"][0]["label"] == "espresso",
        ),
    ]


def send(target: Target, route: Route) -> tuple[int, list[tuple[str, str]], Any]:
    request = urllib.request.Request(
        target.url(route),
        data=route.body,
        method="POST",
        headers={
            "content-type": route.content_type,
            **({"x-api-key": target.api_key} if target.api_key else {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, list(resp.headers.items()), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, list(exc.headers.items()), exc.read().decode(errors="replace")


def verify(target: Target, route: Route) -> None:
    """One request first: a benchmark of wrong answers is worthless."""
    status, _, body = send(target, route)
    if status != 200 or not isinstance(body, dict) or not route.check(body):
        raise SystemExit(f"{target.name} {route.name}: bad answer {status}: {str(body)[:300]}")


def run_wrk(
    wrk: str, lua: Path, body_file: Path, target: Target, route: Route, connections: int, seconds: float
) -> dict[str, Any]:
    argv = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{seconds:.0f}s",
        "--timeout",
        "30s",
        "-s",
        str(lua),
        target.url(route),
        "--",
        str(body_file),
        route.content_type,
        target.api_key,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            result: dict[str, Any] = json.loads(line[len("WRK_JSON ") :])
            return result
    raise RuntimeError(f"wrk gave no summary (rc {out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")


def measure(
    wrk: str,
    lua: Path,
    body_file: Path,
    target: Target,
    route: Route,
    connections: int,
    seconds: float,
    groups: dict[str, Callable[[], list[int]]],
) -> Point:
    pids = {name: get() for name, get in groups.items()}
    ours = [p for ps in pids.values() for p in ps]
    cpu_before = {name: cpu_seconds(ps) for name, ps in pids.items()}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before = busy_cpu_seconds()
    ours_before = cpu_seconds(ours)
    wall_before = time.monotonic()
    result = run_wrk(wrk, lua, body_file, target, route, connections, seconds)
    wall = time.monotonic() - wall_before
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    ours_cpu = cpu_seconds(ours) - ours_before
    foreign = max(0.0, busy_cpu_seconds() - busy_before - ours_cpu - wrk_cpu)
    requests = int(result["requests"])
    duration = result["duration_us"] / 1e6
    cpu = {name: cpu_seconds(ps) - cpu_before[name] for name, ps in pids.items()}
    errors = sum(int(result[k]) for k in ("connect", "read", "write", "status", "timeout"))
    return Point(
        route=route.name,
        target=target.name,
        kind=target.kind,
        connections=connections,
        duration_s=round(duration, 3),
        requests=requests,
        rps=round(requests / duration, 1) if duration else 0.0,
        p50_ms=result["p50"] / 1000,
        p90_ms=result["p90"] / 1000,
        p95_ms=result["p95"] / 1000,
        p99_ms=result["p99"] / 1000,
        max_ms=result["max"] / 1000,
        errors=errors,
        cpu_ms_per_req={n: round(c * 1000 / max(requests, 1), 3) for n, c in cpu.items()},
        cpu_cores={n: round(c / wall, 2) for n, c in cpu.items()},
        wrk_cores=round(wrk_cpu / wall, 2),
        foreign_cores=round(foreign / wall, 2),
    )


def hop_breakdown(target: Target, route: Route, n: int) -> dict[str, float]:
    """Median of the gateway's own Server-Timing over `n` sequential requests: its total time, the time
    waiting for the upstream, and what is left (the gateway's own work), in ms."""
    service = f"{SERVICES[route.service][0]}"
    totals: list[float] = []
    upstreams: list[float] = []
    services: list[float] = []
    for _ in range(n):
        _, headers, _ = send(target, route)
        values = server_timing(headers)
        if "gateway" in values and "upstream" in values:
            totals.append(values["gateway"])
            upstreams.append(values["upstream"])
            services.append(values.get(service, float("nan")))
    if not totals:
        return {}
    return {
        "samples": len(totals),
        "gateway_total_ms": round(median(totals), 3),
        "upstream_ms": round(median(upstreams), 3),
        "gateway_own_ms": round(median([t - u for t, u in zip(totals, upstreams, strict=True)]), 3),
        "service_ms": round(median(services), 3),
    }


def server_timing(headers: list[tuple[str, str]]) -> dict[str, float]:
    """Every `name;dur=ms` of every Server-Timing header (the gateway passes the service's on)."""
    timing = ", ".join(v for k, v in headers if k.lower() == "server-timing")
    return {name: float(ms) for name, ms in re.findall(r"([\w.-]+);dur=([\d.]+)", timing)}


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


# ----------------------------------------------------------------------------------------------------
# The run


@dataclass
class Deployment:
    services: LocalStack
    gateways: dict[str, LocalStack]
    key: str
    # A second nlp-service on the torch runtime, when the default one serves another runtime (ONNX):
    # the peers run torch, so this is the like-for-like comparison.
    torch_nlp: LocalStack | None = None


def served_models(base_url: str) -> list[dict[str, str]]:
    with urllib.request.urlopen(base_url + "/v1/models", timeout=10) as resp:
        models = json.loads(resp.read())["models"]
    keys = ("name", "version", "framework")
    return [
        {k: str(m.get(k)) for k in keys} | {"artifact": str(m.get("artifact", m["name"]))} for m in models
    ]


def start_timed(stack: LocalStack, name: str, label: str, report: Report, timeout: float = 300) -> None:
    started = time.monotonic()
    stack.start(name)
    stack.wait_ready(name, timeout=timeout)
    report.cold_start_s[label] = round(time.monotonic() - started, 2)
    print(f"    {label} ready in {report.cold_start_s[label]:.1f}s", flush=True)


@contextmanager
def modelgate(run_dir: Path, report: Report, torch_nlp: bool) -> Iterator[Deployment]:
    """The three services and one gateway per transport, started one at a time (for cold-start
    figures), and an API key; everything is stopped on exit."""
    ports = {name: free_port() for name in SERVICES}
    keys_file = run_dir / "api_keys.json"
    services = LocalStack(
        ports=ports, run_dir=run_dir, workers=1, extra_env={"API_KEYS_FILE": str(keys_file)}
    )
    stacks: list[LocalStack] = [services]
    deployment = Deployment(services, {}, "")
    try:
        for name in ("tabular", "vision", "nlp"):
            start_timed(services, name, SERVICES[name][0], report)
            report.models[SERVICES[name][0]] = served_models(services.url(name))
        frameworks = " ".join(m["framework"] for m in report.models["nlp-service"]).lower()
        if torch_nlp and "onnx" in frameworks:
            alt_dir = run_dir / "nlp-torch"
            alt_dir.mkdir(parents=True, exist_ok=True)
            alt = LocalStack(
                ports={**ports, "nlp": free_port()},
                run_dir=alt_dir,
                workers=1,
                extra_env={"RUNTIME": "torch"},
            )
            stacks.append(alt)
            start_timed(alt, "nlp", "nlp-service (RUNTIME=torch)", report)
            alt_models = served_models(alt.url("nlp"))
            if alt_models != report.models["nlp-service"]:
                report.models["nlp-service (RUNTIME=torch)"] = alt_models
                deployment.torch_nlp = alt
            else:
                report.notes.append("RUNTIME=torch did not change nlp-service's model: not measured twice")
                alt.stop_all()
        for transport in TRANSPORTS:
            gw_dir = run_dir / f"gateway-{transport}"
            gw_dir.mkdir(parents=True, exist_ok=True)
            gateway = LocalStack(
                ports={**ports, "gateway": free_port()},
                run_dir=gw_dir,
                workers=1,
                extra_env={**GATEWAY_ENV, "UPSTREAM_TRANSPORT": transport, "API_KEYS_FILE": str(keys_file)},
            )
            stacks.append(gateway)
            deployment.gateways[transport] = gateway
            start_timed(gateway, "gateway", f"gateway ({transport})", report, timeout=120)
        deployment.key = services.create_key("bench")
        yield deployment
    finally:
        for stack in reversed(stacks):
            stack.stop_all()


@contextmanager
def peer_servers(
    run_dir: Path, report: Report, litserve_ok: bool, enabled: bool
) -> Iterator[list[PeerProcess]]:
    """The two peers, started one after the other (cold start), then paused until their turn."""
    running: list[PeerProcess] = []
    specs: list[tuple[str, list[str]]] = []
    if not enabled:
        yield running
        return
    if litserve_ok:
        port = free_port()
        specs.append(
            ("litserve", [sys.executable, str(PEERS / "litserve_sentiment.py"), "--port", str(port)])
        )
    fastapi_port = free_port()
    specs.append(
        (
            "fastapi",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(PEERS),
                "fastapi_sentiment:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(fastapi_port),
                "--log-level",
                "warning",
            ],
        )
    )
    try:
        for name, argv in specs:
            port = int(argv[argv.index("--port") + 1])
            peer = start_peer(name, argv, port, run_dir)
            running.append(peer)
            try:
                seconds = wait_http_ok(peer.url + "/health", 300, lambda p=peer: p.proc.poll() is None)  # type: ignore[misc]
            except (RuntimeError, TimeoutError) as exc:
                report.peers[name] = f"did not start: {exc} (see peer-{name}.log)"
                peer.stop()
                running.remove(peer)
                continue
            report.cold_start_s[f"peer: {name}"] = round(seconds, 2)
            report.peers[name] = "ok"
            print(f"    peer {name} ready in {seconds:.1f}s", flush=True)
            peer.pause(True)
        yield running
    finally:
        for peer in running:
            peer.stop()


def run(args: argparse.Namespace) -> Path:
    wrk, wrk_version = ensure_wrk()
    litserve_ok, litserve_info = ensure_litserve()
    print(f"==> litserve: {litserve_info}", flush=True)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out or REPO / "results" / f"bench-{stamp}")
    (out_dir / "img").mkdir(parents=True, exist_ok=True)
    report = Report(
        started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        quick=args.quick,
        duration_s=args.duration,
        concurrencies=concurrencies,
        machine=machine_info(wrk_version),
        load_before=load_average(),
    )
    if not litserve_ok:
        report.peers["litserve"] = litserve_info
    else:
        report.notes.append(f"litserve {litserve_info}")
    routes = [r for r in make_routes() if r.name in args.routes.split(",")]
    print(f"==> machine: {report.machine['cpu_model']}, load {report.load_before}", flush=True)

    with tempfile.TemporaryDirectory(prefix="modelgate-bench-") as tmp:
        run_dir = Path(tmp)
        lua = run_dir / "bench.lua"
        lua.write_text(WRK_LUA)
        bodies = {}
        for route in routes:
            bodies[route.name] = run_dir / f"body-{route.name}"
            bodies[route.name].write_bytes(route.body)
        try:
            print("==> starting ModelGate (one worker per process)", flush=True)
            with modelgate(run_dir, report, not args.no_peers) as deployment:
                services, gateways, key = deployment.services, deployment.gateways, deployment.key
                svc_pids = {name: pids_of(services, name) for name in ("tabular", "vision", "nlp")}
                gw_pids = {t: pids_of(g, "gateway") for t, g in gateways.items()}
                alt_name = "nlp-service, torch"
                alt_pids = pids_of(deployment.torch_nlp, "nlp") if deployment.torch_nlp else None
                for name, get in svc_pids.items():
                    report.memory_idle[SERVICES[name][0]] = memory_of(get())
                if alt_pids:
                    report.memory_idle[alt_name] = memory_of(alt_pids())
                for transport, get in gw_pids.items():
                    report.memory_idle[f"gateway ({transport})"] = memory_of(get())

                idle_groups = {SERVICES[n][0]: get for n, get in svc_pids.items()}
                idle_groups |= {f"gateway ({t})": get for t, get in gw_pids.items()}
                if alt_pids:
                    idle_groups[alt_name] = alt_pids
                report.idle_cpu_pct.update(idle_cpu(idle_groups))
                with peer_servers(run_dir, report, litserve_ok, not args.no_peers) as peers:
                    for peer in peers:
                        peer.pause(False)
                        report.memory_idle[f"peer: {peer.name}"] = memory_of(peer.pids())
                        report.idle_cpu_pct.update(idle_cpu({f"peer: {peer.name}": peer.pids}))
                        peer.pause(True)
                    for route in routes:
                        service_name = route.service
                        targets = [
                            Target(
                                f"direct ({SERVICES[service_name][0]})",
                                "direct",
                                services.url(service_name),
                                pids=svc_pids[service_name],
                            )
                        ]
                        for transport, gateway in gateways.items():
                            targets.append(
                                Target(
                                    f"gateway ({transport})",
                                    "gateway",
                                    gateway.url("gateway"),
                                    key,
                                    pids=gw_pids[transport],
                                )
                            )
                        if route.name == "sentiment" and deployment.torch_nlp and alt_pids:
                            targets.insert(
                                1,
                                Target(
                                    f"direct ({alt_name})",
                                    "direct-alt",
                                    deployment.torch_nlp.url("nlp"),
                                    pids=alt_pids,
                                ),
                            )
                        if route.name == "sentiment":
                            for peer in peers:
                                targets.append(
                                    Target(
                                        f"peer: {peer.name}",
                                        "peer",
                                        peer.url,
                                        path_override="/predict",
                                        pids=peer.pids,
                                        pause=peer.pause,
                                    )
                                )
                        bench_route(wrk, lua, bodies[route.name], route, targets, svc_pids, args, report)
                        for peer in peers:
                            report.memory_loaded[f"peer: {peer.name}"] = memory_of(peer.pids())
                    for name, get in svc_pids.items():
                        report.memory_loaded[SERVICES[name][0]] = memory_of(get())
                    if alt_pids:
                        report.memory_loaded[alt_name] = memory_of(alt_pids())
                    for transport, get in gw_pids.items():
                        report.memory_loaded[f"gateway ({transport})"] = memory_of(get())
                    iris = next((r for r in routes if r.name == "iris"), None)
                    if iris is not None:
                        for transport, gateway in gateways.items():
                            target = Target(f"gateway ({transport})", "gateway", gateway.url("gateway"), key)
                            report.hop_breakdown[target.name] = hop_breakdown(target, iris, args.hop_samples)
                        direct = Target("direct", "direct", services.url("tabular"))
                        report.hop_breakdown["direct (tabular-service)"] = hop_breakdown_direct(
                            direct, iris, args.hop_samples
                        )
                        if args.profile:
                            for transport, gateway in gateways.items():
                                target = Target(transport, "gateway", gateway.url("gateway"), key)
                                worker = gw_pids[transport]()[-1]
                                report.profiles[transport] = profile_gateway(
                                    wrk, lua, bodies["iris"], target, iris, worker, out_dir, args.profile
                                )
        finally:
            save_log_tails(run_dir, out_dir / "logs")
    report.load_after = load_average()
    write_report(report, out_dir)
    if not args.no_docs:
        publish(out_dir)
    return out_dir


def hop_breakdown_direct(target: Target, route: Route, n: int) -> dict[str, float]:
    """The service's own total time (its Server-Timing entry), median over `n` requests."""
    service = f"{SERVICES[route.service][0]}"
    totals: list[float] = []
    for _ in range(n):
        _, headers, _ = send(target, route)
        values = server_timing(headers)
        if service in values:
            totals.append(values[service])
    if not totals:
        return {}
    return {"samples": len(totals), "service_total_ms": round(median(totals), 3)}


def profile_gateway(
    wrk: str,
    lua: Path,
    body_file: Path,
    target: Target,
    route: Route,
    pid: int,
    out_dir: Path,
    seconds: float,
) -> dict[str, list[tuple[str, float]]]:
    """py-spy the gateway worker for `seconds` under 32 connections of `route`; the raw stacks go to
    out_dir/profile-<transport>.txt, the top functions (self and inclusive share of samples) come back."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("    py-spy is missing (pip install py-spy): no profile", flush=True)
        return {}
    raw = out_dir / f"profile-{target.name}.txt"
    load = subprocess.Popen(
        [
            *(wrk, "-t1", "-c32", f"-d{seconds + 4:.0f}s", "--timeout", "30s", "-s", str(lua)),
            *(target.url(route), "--", str(body_file), route.content_type, target.api_key),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(2)
        subprocess.run(
            [
                *(py_spy, "record", "-d", f"{seconds:.0f}", "-r", "100", "-p", str(pid)),
                *("-f", "raw", "-o", str(raw), "--nonblocking"),
            ],
            capture_output=True,
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        print(f"    py-spy failed: {exc.stderr.decode(errors='replace')[-300:]}", flush=True)
        return {}
    finally:
        load.wait()
    print(f"    profile of gateway ({target.name}): {raw}", flush=True)
    return summarise_profile(raw)


def summarise_profile(raw: Path, top: int = 12) -> dict[str, list[tuple[str, float]]]:
    """Self and inclusive sample shares per function (file:line dropped) from py-spy's raw format."""
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        self_time[frames[-1]] = self_time.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n

    def best(counts: dict[str, int], skip: tuple[str, ...] = ()) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])
        return [(k, round(100 * v / total, 1)) for k, v in ranked if not k.startswith(skip)][:top]

    # Inclusive: skip the frames every sample has (process start-up, the server loop).
    outer = (
        *("_run_module_as_main", "_run_code", "<module>", "run (", "Application.run", "BaseApplication.run"),
        *("Arbiter.", "Worker.init_process", "UvicornWorker.run", "asyncio_run", "Runner.run"),
    )
    return {"self": best(self_time), "inclusive": best(inclusive, outer)} if total else {}


def bench_route(
    wrk: str,
    lua: Path,
    body_file: Path,
    route: Route,
    targets: list[Target],
    svc_pids: dict[str, Callable[[], list[int]]],
    args: argparse.Namespace,
    report: Report,
) -> None:
    """Each concurrency, every target back to back (alternating the order), after one warm-up each."""
    print(f"==> {route.name}: {', '.join(t.name for t in targets)}", flush=True)
    for target in targets:
        if target.pause:
            target.pause(False)
        verify(target, route)
        run_wrk(wrk, lua, body_file, target, route, min(8, max(report.concurrencies)), args.warmup)
        if target.pause:
            target.pause(True)
    for index, connections in enumerate(report.concurrencies):
        order = targets if index % 2 == 0 else list(reversed(targets))
        for target in order:
            groups: dict[str, Callable[[], list[int]]] = {}
            if target.kind in ("direct", "gateway"):
                groups[route.service] = svc_pids[route.service]
            if target.kind == "gateway":
                groups["gateway"] = target.pids
            if target.kind in ("peer", "direct-alt"):
                groups[target.kind] = target.pids
            if target.pause:
                target.pause(False)
            try:
                point = measure(wrk, lua, body_file, target, route, connections, args.duration, groups)
            finally:
                if target.pause:
                    target.pause(True)
            report.points.append(point)
            print(
                f"    c={connections:<3} {target.name:<30} {point.rps:>8.1f} req/s"
                f"  p50 {point.p50_ms:7.2f} ms  p99 {point.p99_ms:8.2f} ms  errors {point.errors}"
                f"  other load {point.foreign_cores:.2f} cores",
                flush=True,
            )


def save_log_tails(run_dir: Path, dest: Path, limit: int = 64 * 1024) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for log in run_dir.rglob("*.log"):
        data = log.read_bytes()[-limit:]
        name = str(log.relative_to(run_dir)).replace("/", "_")
        (dest / name).write_bytes(data)


# ----------------------------------------------------------------------------------------------------
# Report


def points_for(report: Report, route: str) -> list[Point]:
    return [p for p in report.points if p.route == route]


def find(
    report: Report, route: str, target_kind: str, connections: int, name: str | None = None
) -> Point | None:
    for p in report.points:
        if (p.route, p.connections, p.kind) == (route, connections, target_kind) and name in (None, p.target):
            return p
    return None


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def fmt_ms(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def goal_rows(report: Report) -> list[str]:
    rows = [
        "| goal | transport | measured | target | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    c_high = 32 if 32 in report.concurrencies else max(report.concurrencies)
    c_low = min(report.concurrencies)
    direct_high = find(report, "iris", "direct", c_high)
    direct_low = find(report, "iris", "direct", c_low)
    for transport in TRANSPORTS:
        name = f"gateway ({transport})"
        gw_high = find(report, "iris", "gateway", c_high, name)
        gw_low = find(report, "iris", "gateway", c_low, name)
        if direct_high and gw_high:
            r = gw_high.rps / direct_high.rps
            rows.append(
                f"| iris throughput, gateway / direct, {c_high} connections | {transport} | "
                f"{r:.2f} ({gw_high.rps:.0f} / {direct_high.rps:.0f} req/s) | ≥ 0.60 | "
                f"{'met' if r >= 0.60 else '**not met**'} |"
            )
        if direct_low and gw_low:
            added = gw_low.p50_ms - direct_low.p50_ms
            rows.append(
                f"| iris p50 added by the gateway, {c_low} connection | {transport} | "
                f"{added:+.2f} ms ({gw_low.p50_ms:.2f} vs {direct_low.p50_ms:.2f} ms) | ≤ 1 ms | "
                f"{'met' if added <= 1.0 else '**not met**'} |"
            )
    if direct_high:
        a = direct_high.cpu_ms_per_req.get("tabular", 0.0)
        rows.append("")
        for transport in TRANSPORTS:
            gw = find(report, "iris", "gateway", c_high, f"gateway ({transport})")
            if gw is None or not a:
                continue
            b, g = gw.cpu_ms_per_req.get("tabular", 0.0), gw.cpu_ms_per_req.get("gateway", 0.0)
            rows.append(
                f"- CPU per iris request at {c_high} connections, {transport}: service {b:.2f} ms + gateway "
                f"{g:.2f} ms, against {a:.2f} ms direct. When the CPUs are the bottleneck (they are shared "
                f"here) the ratio can be at most about {a:.2f} / ({b:.2f} + {g:.2f}) = {a / (b + g):.2f}; "
                f"with a core each for gateway and service it could reach {a:.2f} / {max(b, g):.2f} = "
                f"{min(1.0, a / max(b, g)):.2f}."
            )
    return rows


def route_table(report: Report, route: str) -> list[str]:
    rows = [
        "| conns | target | req/s | / direct | p50 ms | p95 ms | p99 ms | errors | "
        "CPU ms/req (service, gateway) or (peer) | other load (cores) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for c in report.concurrencies:
        direct = find(report, route, "direct", c)
        for p in [p for p in points_for(report, route) if p.connections == c]:
            cpu = ", ".join(f"{v:.2f}" for v in p.cpu_ms_per_req.values())
            rows.append(
                f"| {c} | {p.target} | {p.rps:.0f} | {ratio(p.rps, direct.rps) if direct else 'n/a'} | "
                f"{fmt_ms(p.p50_ms)} | {fmt_ms(p.p95_ms)} | {fmt_ms(p.p99_ms)} | {p.errors} | {cpu} | "
                f"{p.foreign_cores:.2f} |"
            )
    return rows


def peer_table(report: Report) -> list[str]:
    """Every sentiment server at each concurrency, as ratios to ModelGate's nlp-service."""
    alt = next((p.target for p in report.points if p.kind == "direct-alt"), None)
    header = (
        "| conns | server | req/s | p50 ms | p99 ms | errors | / ModelGate direct | / via gateway (aiohttp) |"
    )
    rule = "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    if alt:
        header += " / ModelGate torch direct |"
        rule += " ---: |"
    rows = [header, rule]
    for c in report.concurrencies:
        direct = find(report, "sentiment", "direct", c)
        gateway = find(report, "sentiment", "gateway", c, "gateway (aiohttp)")
        torch_direct = find(report, "sentiment", "direct-alt", c) if alt else None
        if direct is None or gateway is None:
            continue
        for p in points_for(report, "sentiment"):
            if p.connections != c or p.target == "gateway (httpx)":
                continue
            row = (
                f"| {c} | {p.target} | {p.rps:.1f} | {fmt_ms(p.p50_ms)} | {fmt_ms(p.p99_ms)} | {p.errors} | "
                f"{ratio(p.rps, direct.rps)} | {ratio(p.rps, gateway.rps)} |"
            )
            if alt:
                row += f" {ratio(p.rps, torch_direct.rps) if torch_direct else 'n/a'} |"
            rows.append(row)
    return rows


def write_plots(report: Report, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []
    for route in dict.fromkeys(p.route for p in report.points):
        pts = points_for(report, route)
        fig, (ax_rps, ax_lat) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=80)
        for target in dict.fromkeys(p.target for p in pts):
            series = sorted((p for p in pts if p.target == target), key=lambda p: p.connections)
            xs = [p.connections for p in series]
            (line,) = ax_rps.plot(xs, [p.rps for p in series], marker="o", label=target)
            ax_lat.plot(
                xs, [p.p50_ms for p in series], marker="o", color=line.get_color(), label=f"{target} p50"
            )
            ax_lat.plot(xs, [p.p99_ms for p in series], ls="--", color=line.get_color(), alpha=0.7)
        for ax in (ax_rps, ax_lat):
            ax.set_xscale("log", base=2)
            ax.set_xticks(report.concurrencies, [str(c) for c in report.concurrencies])
            ax.set_xlabel("concurrent connections")
            ax.grid(alpha=0.3)
        ax_rps.set_ylabel("requests / s")
        ax_rps.set_ylim(bottom=0)
        ax_rps.set_title(f"{route}: throughput")
        ax_lat.set_yscale("log")
        ax_lat.set_ylabel("latency ms (solid p50, dashed p99)")
        ax_lat.set_title(f"{route}: latency")
        ax_rps.legend(fontsize=7)
        fig.tight_layout()
        name = f"bench-{route}.png"
        fig.savefig(out_dir / "img" / name)
        plt.close(fig)
        names.append(name)
    return names


def write_report(report: Report, out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(asdict(report), indent=2))
    images = write_plots(report, out_dir)
    m = report.machine
    foreign = [p.foreign_cores for p in report.points]
    lines = [
        "# ModelGate benchmarks",
        "",
        f"Generated by `scripts/bench.py{' --quick' if report.quick else ''}` (`make bench`) on "
        f"{report.started}. "
        "Every figure below comes from one run on one machine; the targets of a route were measured back "
        "to back at each concurrency, so **read the ratios**, not the absolute numbers.",
        "",
        "## Machine and method",
        "",
        f"- CPU: {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable), "
        f"{m['memory_gib']} GiB RAM, Linux {m['kernel']}, Python {m['python']}; commit {m['git']}.",
        f"- Load average (uptime) before: {report.load_before}; after: {report.load_after}. The machine is "
        "shared with other engineers' builds: during the measured points, processes outside the benchmark "
        f"used {min(foreign, default=0):.2f} to {max(foreign, default=0):.2f} cores "
        f"(mean {sum(foreign) / max(len(foreign), 1):.2f}) of the {m['logical_cpus']}.",
        f"- Load generator: {m['wrk']} (C, 1 thread, closed loop, keep-alive), a Lua script for the POST "
        "body and the `X-API-Key` header; its own CPU use is in `results.json` (`wrk_cores`).",
        f"- {report.duration_s:g} s per point after one warm-up per target; concurrency "
        f"{', '.join(map(str, report.concurrencies))}. Every process runs 1 Gunicorn/Uvicorn worker; all of "
        "them, and wrk, share the same CPUs, so at high concurrency the gateway and the service compete "
        "for cores (a real deployment would give the gateway its own).",
        "- Gateway: API-key auth, JSON access log per request (to a file), request IDs, metrics and rate "
        "limiting all on (limit 1,000,000/s so it never refuses); `UPSTREAM_TRANSPORT=aiohttp` (the "
        "default) and `=httpx` are two gateways in front of the same three services.",
        "- Every target's answer was checked for the right shape before it was measured; `errors` counts "
        "non-2xx answers, socket errors and timeouts during the point.",
        "- CPU ms/req: CPU time the service (and the gateway) spent per answered request during the point. "
        "It hardly depends on what else runs on the machine, so it is the steadiest figure here. *other "
        "load*: cores used by processes outside the benchmark during that point; compare two targets' "
        "throughput only where it is similar.",
        "",
        "## Goals",
        "",
        *goal_rows(report),
        "",
    ]
    if report.hop_breakdown:
        lines += [
            "Where one iris request's time goes at 1 connection (median of sequential requests, from the "
            "`Server-Timing` headers the processes send):",
            "",
            "| path | samples | total in gateway ms | waiting for the service ms | gateway's own work ms |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, h in report.hop_breakdown.items():
            if "gateway_total_ms" in h:
                lines.append(
                    f"| {name} | {h['samples']:.0f} | {h['gateway_total_ms']:.2f} | {h['upstream_ms']:.2f} | "
                    f"{h['gateway_own_ms']:.2f} |"
                )
            elif "service_total_ms" in h:
                lines.append(
                    f"| {name} | {h['samples']:.0f} | (service alone: {h['service_total_ms']:.2f}) | | |"
                )
        lines.append("")
    for transport, profile in report.profiles.items():
        if not profile:
            continue
        lines += [
            f"py-spy profile of the gateway worker ({transport}) under iris at 32 connections, share of "
            "samples (raw stacks in `profile-<transport>.txt` next to the report). `Runner.run` is the "
            "event loop's own C code (uvloop: polling and socket calls); `Condition.wait`/`notify` are "
            "hand-offs to and waits in the thread pool (FastAPI runs sync `def` dependencies there):",
            "",
            "| self % | function | inclusive % | function |",
            "| ---: | --- | ---: | --- |",
        ]
        for (s_name, s_pct), (i_name, i_pct) in zip(profile["self"], profile["inclusive"], strict=False):
            lines.append(f"| {s_pct} | `{s_name}` | {i_pct} | `{i_name}` |")
        lines.append("")
    for route in dict.fromkeys(p.route for p in report.points):
        lines += [f"## {route}", "", *route_table(report, route), ""]
        if f"bench-{route}.png" in images:
            lines += [f"![{route}](img/bench-{route}.png)", ""]
    if any(p.route == "sentiment" for p in report.points):
        lines += [
            "## Peers: the same sentiment model served by LitServe and by a tutorial FastAPI app",
            "",
            "Same weights (`artifacts/sentiment`, MiniLM fine-tuned by `make models`), same body "
            '(`{"text": ...}`), same harness and concurrency, peers answered directly (no gateway). '
            "LitServe (`scripts/peers/litserve_sentiment.py`): a `LitAPI` with LitServe's dynamic batching "
            "(max batch 16, 10 ms batch timeout, which every request pays when traffic is light), one "
            "inference worker process. FastAPI tutorial (`scripts/peers/fastapi_sentiment.py`): model "
            "loaded at import, sync `def` endpoint, no batching, plain uvicorn. Both run torch with its "
            "default threads. ModelGate's nlp-service runs as it ships (see *Models served*: its runtime "
            "and artifact), plus, when that is not torch, a second nlp-service with `RUNTIME=torch` for a "
            "like-for-like row. Peers are paused (SIGSTOP) while other targets run.",
            "",
        ]
        for name, state in report.peers.items():
            if state != "ok":
                lines += [f"- **{name} was not measured**: {state}", ""]
        lines += [*peer_table(report), ""]
    if report.models:
        lines += [
            "## Models served",
            "",
            "What each ModelGate service answered with (its `/v1/models`) during this run.",
            "",
            "| service | model | artifact | version | framework |",
            "| --- | --- | --- | --- | --- |",
        ]
        for service, models in report.models.items():
            for m in models:
                lines.append(
                    f"| {service} | {m['name']} | {m.get('artifact', m['name'])} | {m['version']} | "
                    f"{m['framework']} |"
                )
        lines.append("")
    lines += [
        "## Memory per process",
        "",
        "Whole process tree (Gunicorn master + worker, or the peer's processes). PSS splits shared pages "
        "between the processes that share them, so it adds up; RSS counts them in each.",
        "",
        "| process | processes | idle PSS MiB | idle RSS MiB | after load PSS MiB | after load RSS MiB "
        "| idle CPU % of a core |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, idle in report.memory_idle.items():
        loaded = report.memory_loaded.get(name, {})
        lines.append(
            f"| {name} | {idle['processes']:.0f} | {idle['pss_mib']:.0f} | {idle['rss_mib']:.0f} | "
            f"{loaded.get('pss_mib', float('nan')):.0f} | {loaded.get('rss_mib', float('nan')):.0f} | "
            f"{report.idle_cpu_pct.get(name, float('nan')):.1f} |"
        )
    lines += [
        "",
        "## Cold start",
        "",
        "Process start to the first 200 from its readiness check (`/health/ready`; `/health` for the "
        "peers), started one at a time (the gateway's readiness needs its services up already).",
        "",
        "| process | seconds |",
        "| --- | ---: |",
        *(f"| {name} | {s:.1f} |" for name, s in report.cold_start_s.items()),
        "",
    ]
    if report.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in report.notes), ""]
    lines += [
        "Raw figures: `results.json` next to the report in `results/bench-<timestamp>/` (not committed). "
        "Reproduce: `make bench` (or `make bench-quick`).",
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(lines))


def load_report(path: Path) -> Report:
    data = json.loads(path.read_text())
    points = [Point(**p) for p in data.pop("points")]
    return Report(**data, points=points)


def publish(out_dir: Path, report: str = "benchmarks.md", images: str = "bench-*.png") -> None:
    """Copy a run's report to docs/`report` and its plots matching `images` to docs/img/."""
    docs = REPO / "docs"
    (docs / "img").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out_dir / "report.md", docs / report)
    for png in (out_dir / "img").glob(images):
        shutil.copyfile(png, docs / "img" / png.name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="~2 minutes: concurrency 1 and 32, 3 s a point, no fraud route"
    )
    parser.add_argument("--duration", type=float, help="seconds per point (default 6, quick 3)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per target (default 2, quick 1)")
    parser.add_argument("--concurrency", help="comma list (default 1,8,32,64; quick 1,32)")
    parser.add_argument(
        "--routes", help="comma list of iris, fraud, sentiment, classify (default all; quick: no fraud)"
    )
    parser.add_argument("--no-peers", action="store_true", help="skip the LitServe and FastAPI peers")
    parser.add_argument(
        "--hop-samples", type=int, default=300, help="sequential requests for the hop breakdown"
    )
    parser.add_argument(
        "--profile",
        type=float,
        default=None,
        metavar="SECONDS",
        help="py-spy each gateway under iris load for SECONDS (default 10 in a full run, off with --quick)",
    )
    parser.add_argument("--out", help="output folder (default results/bench-<timestamp>)")
    parser.add_argument("--no-docs", action="store_true", help="do not copy the report to docs/")
    parser.add_argument(
        "--render", metavar="RESULTS_JSON", help="only rewrite the report from a results.json"
    )
    args = parser.parse_args(argv)
    if args.render:
        source = Path(args.render)
        report = load_report(source)
        write_report(report, source.parent)
        if not args.no_docs:
            publish(source.parent)
        print(f"==> report: {source.parent / 'report.md'}")
        return 0
    # wrk takes whole seconds.
    args.duration = max(1, round(args.duration or (3 if args.quick else 6)))
    args.warmup = max(1, round(args.warmup or (1 if args.quick else 2)))
    if args.quick and args.hop_samples == 300:
        args.hop_samples = 100
    args.concurrency = args.concurrency or ("1,32" if args.quick else "1,8,32,64")
    args.routes = args.routes or (
        "iris,sentiment,classify" if args.quick else "iris,fraud,sentiment,classify"
    )
    if args.profile is None:
        args.profile = 0.0 if args.quick else 10.0
    started = time.monotonic()
    out_dir = run(args)
    print(f"==> report: {out_dir / 'report.md'} ({time.monotonic() - started:.0f}s)", flush=True)
    if not args.no_docs:
        print("==> copied to docs/benchmarks.md and docs/img/", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
