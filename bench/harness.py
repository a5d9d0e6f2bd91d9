"""What every benchmark here shares: the processes (started, paused, stopped, their CPU and memory),
the requests each route sends, and wrk as the load generator with one Lua script.

CPU accounting: a `Point` is one wrk run against one target; the CPU seconds each named process group
(a Gunicorn master and its workers, a peer's processes) spent during it, divided by the answered
requests, is its CPU ms per request; the cores busy outside those groups and wrk are *other load*.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "scripts") not in sys.path:  # devstack.py: how the local stack is started
    sys.path.append(str(REPO / "scripts"))

from bench.tools import require_py_spy  # noqa: E402
from devstack import SERVICES, LocalStack  # noqa: E402

ASSETS = REPO / "tests" / "assets"
PEERS = REPO / "scripts" / "peers"
RESULTS = REPO / "results"

# The gateway with every feature on; the limit is there (and checked on every request) but never bites.
GATEWAY_ENV = {
    "RATE_LIMIT_ENABLED": "true",
    "RATE_LIMIT_PER_SECOND": "1000000",
    "RATE_LIMIT_BURST": "1000000",
    "LOG_LEVEL": "INFO",
    "LOG_JSON": "true",
}
SENTENCE = "The delivery was quick and the headphones sound great, I would happily buy from them again."
IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
FLOWER = [IRIS["sepal_length"], IRIS["sepal_width"], IRIS["petal_length"], IRIS["petal_width"]]
INFERENCE_HEADER = "Inference-Header-Content-Length"

# wrk's Lua side: a fixed POST (body read from a file, extra headers from `<body file>.headers`, one
# "Name: value" a line), then one JSON line with the summary.
WRK_LUA = r"""
function init(args)
  wrk.method = "POST"
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = args[2]
  if args[3] ~= nil and args[3] ~= "" then wrk.headers["X-API-Key"] = args[3] end
  local h = io.open(args[1] .. ".headers", "rb")
  if h ~= nil then
    for line in h:lines() do
      local name, value = line:match("^([^:]+):%s*(.-)%s*$")
      if name ~= nil then wrk.headers[name] = value end
    end
    h:close()
  end
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
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request besides the body's type


@dataclass
class Target:
    """Something that answers a route: a service directly, a gateway, or a peer server."""

    name: str
    kind: str  # direct | gateway | peer | ...
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
    cpu_ms_per_req: dict[str, float]  # process group -> CPU ms per answered request
    cpu_cores: dict[str, float]  # process group -> cores used on average
    wrk_cores: float
    foreign_cores: float  # CPU used by processes that are not part of the benchmark


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


def out_dir_for(prefix: str, explicit: str | None) -> Path:
    """`--out`, or results/<prefix>-<timestamp>/ (with img/)."""
    out = Path(explicit or RESULTS / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")
    (out / "img").mkdir(parents=True, exist_ok=True)
    return out


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
    """A server that is not one of the LocalStack's (a peer, a baseline gateway), in its own process
    group so that stopping it takes its workers too."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return tree_pids(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pause(self, stop: bool) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGSTOP if stop else signal.SIGCONT)

    def stop(self) -> None:
        if self.alive():
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


def start_process(
    name: str, argv: list[str], port: int, log: Path, env: dict[str, str], cwd: Path = REPO
) -> PeerProcess:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return PeerProcess(name, port, proc)


def save_log_tails(run_dir: Path, dest: Path, limit: int = 64 * 1024) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for log in run_dir.rglob("*.log"):
        data = log.read_bytes()[-limit:]
        name = str(log.relative_to(run_dir)).replace("/", "_")
        (dest / name).write_bytes(data)


def log_tails(logs: Sequence[Path], lines: int = 6, width: int = 300) -> str:
    """The last few error lines of each log: ModelGate's JSON records at ERROR (with the exception's last
    line), or the plain last lines of a log that is not JSON (MLServer's)."""
    parts: list[str] = []
    for log in logs:
        with suppress(OSError):
            picked: list[str] = []
            for line in log.read_text(errors="replace").strip().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    picked.append(line)
                    continue
                if isinstance(record, dict) and record.get("level") in ("ERROR", "CRITICAL"):
                    cause = str(record.get("exc_info", "")).strip().splitlines()[-1:]
                    picked.append(" | ".join([str(record.get("message", "")), *cause]))
            if picked:
                shown = "\n".join(f"    {line[:width]}" for line in picked[-lines:])
                parts.append(f"  {log.name}:\n{shown}")
    return "\n".join(parts)


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


def oip_json_body(input_name: str = "input") -> bytes:
    """An OIP infer body for the flower: one FP64 [1, 4] tensor, JSON."""
    tensor = {"name": input_name, "shape": [1, len(FLOWER)], "datatype": "FP64", "data": FLOWER}
    return json.dumps({"inputs": [tensor]}, separators=(",", ":")).encode()


def oip_binary_body(output_names: Sequence[str], input_name: str = "input") -> tuple[bytes, int]:
    """The binary tensor extension's body (JSON header, then the four float64s little-endian) and the
    header's length (sent as Inference-Header-Content-Length). Outputs are asked for by name with
    `binary_data: true`, or all of them with the request-level `binary_data_output` when the model's
    metadata lists none."""
    import struct

    raw = struct.pack(f"<{len(FLOWER)}d", *FLOWER)
    tensor = {
        "name": input_name,
        "shape": [1, len(FLOWER)],
        "datatype": "FP64",
        "parameters": {"binary_data_size": len(raw)},
    }
    header: dict[str, Any] = {"inputs": [tensor]}
    if output_names:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in output_names]
    else:
        header["parameters"] = {"binary_data_output": True}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return encoded + raw, len(encoded)


def model_outputs(base_url: str, api_key: str, model: str = "iris") -> list[str]:
    """Output names from ModelGate's model metadata (empty when it lists none or does not answer)."""
    request = urllib.request.Request(f"{base_url}/v2/models/{model}", headers={"x-api-key": api_key})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return [str(o["name"]) for o in json.loads(resp.read()).get("outputs", [])]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def make_routes() -> list[Route]:
    """The /v1 routes, one fixed request each, and what a right answer looks like."""
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
                and set(b.get("probabilities", {})) == {"setosa", "versicolor", "virginica"}
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


def send(target: Target, route: Route) -> tuple[int, list[tuple[str, str]], bytes]:
    request = urllib.request.Request(
        target.url(route),
        data=route.body,
        method="POST",
        headers={
            "content-type": route.content_type,
            **route.headers,
            **({"x-api-key": target.api_key} if target.api_key else {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, list(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, list(exc.headers.items()), exc.read()


def verify(target: Target, route: Route) -> None:
    """One request first: a benchmark of wrong answers is worthless."""
    status, _, raw = send(target, route)
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")
    if status != 200 or not isinstance(body, dict) or not route.check(body):
        raise SystemExit(f"{target.name} {route.name}: bad answer {status}: {str(body)[:300]}")


def server_timing(headers: list[tuple[str, str]]) -> dict[str, float]:
    """Every `name;dur=ms` of every Server-Timing header (the gateway passes the service's on)."""
    timing = ", ".join(v for k, v in headers if k.lower() == "server-timing")
    return {name: float(ms) for name, ms in re.findall(r"([\w.-]+);dur=([\d.]+)", timing)}


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def service_label(route: Route) -> str:
    return SERVICES[route.service][0]


# ----------------------------------------------------------------------------------------------------
# wrk


@dataclass
class Wrk:
    """Debian's wrk (C, one thread, closed loop, keep-alive) with the one Lua script, and the body files
    it reads, in `run_dir`."""

    path: str
    version: str
    run_dir: Path
    _bodies: dict[str, Path] = field(default_factory=dict)

    @property
    def lua(self) -> Path:
        script = self.run_dir / "bench.lua"
        if not script.exists():
            script.write_text(WRK_LUA)
        return script

    def body_file(self, route: Route) -> Path:
        """The route's body (and its extra headers) on disk, written once."""
        path = self._bodies.get(route.name)
        if path is None:
            path = self.run_dir / f"body-{route.name}"
            path.write_bytes(route.body)
            if route.headers:
                lines = (f"{k}: {v}" for k, v in route.headers.items())
                (self.run_dir / f"body-{route.name}.headers").write_text("\n".join(lines) + "\n")
            self._bodies[route.name] = path
        return path

    def argv(self, target: Target, route: Route, connections: int, seconds: float) -> list[str]:
        return [
            *(self.path, "-t1", f"-c{connections}", f"-d{seconds:.0f}s", "--timeout", "30s"),
            *("-s", str(self.lua), target.url(route), "--"),
            *(str(self.body_file(route)), route.content_type, target.api_key),
        ]

    def run(self, target: Target, route: Route, connections: int, seconds: float) -> dict[str, Any]:
        argv = self.argv(target, route, connections, seconds)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        for line in out.stdout.splitlines():
            if line.startswith("WRK_JSON "):
                result: dict[str, Any] = json.loads(line[len("WRK_JSON ") :])
                return result
        raise RuntimeError(
            f"wrk gave no summary (rc {out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}"
        )

    def background(
        self, target: Target, route: Route, connections: int, seconds: float
    ) -> subprocess.Popen[bytes]:
        """Load for `seconds` while something else (a profiler) looks on."""
        return subprocess.Popen(self.argv(target, route, connections, seconds), stdout=subprocess.DEVNULL)

    def measure(
        self,
        target: Target,
        route: Route,
        connections: int,
        seconds: float,
        groups: dict[str, Callable[[], list[int]]],
    ) -> Point:
        """One wrk run, and the CPU each process group spent during it."""
        pids = {name: get() for name, get in groups.items()}
        ours = [p for ps in pids.values() for p in ps]
        cpu_before = {name: cpu_seconds(ps) for name, ps in pids.items()}
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy_before = busy_cpu_seconds()
        ours_before = cpu_seconds(ours)
        wall_before = time.monotonic()
        result = self.run(target, route, connections, seconds)
        wall = time.monotonic() - wall_before
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        wrk_cpu = (children_after.ru_utime + children_after.ru_stime) - (
            children_before.ru_utime + children_before.ru_stime
        )
        ours_cpu = cpu_seconds(ours) - ours_before
        foreign = max(0.0, busy_cpu_seconds() - busy_before - ours_cpu - wrk_cpu)
        requests = int(result["requests"])
        answered = max(requests - int(result["status"]), 1)  # wrk counts non-2xx answers as requests
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
            cpu_ms_per_req={n: round(c * 1000 / answered, 3) for n, c in cpu.items()},
            cpu_cores={n: round(c / wall, 2) for n, c in cpu.items()},
            wrk_cores=round(wrk_cpu / wall, 2),
            foreign_cores=round(foreign / wall, 2),
        )


# ----------------------------------------------------------------------------------------------------
# Profiles


def profile_under_load(
    wrk: Wrk, target: Target, route: Route, pid: int, raw: Path, seconds: float, connections: int = 32
) -> dict[str, list[tuple[str, float]]]:
    """py-spy one process for `seconds` under `connections` of `route`; the raw stacks go to `raw`, the top
    functions (self and inclusive share of samples) come back (empty when py-spy is missing or fails)."""
    py_spy = require_py_spy()
    if py_spy is None:
        print("    py-spy is missing (it is in requirements-dev.txt: make venv): no profile", flush=True)
        return {}
    load = wrk.background(target, route, connections, seconds + 4)
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
    print(f"    profile of {target.name}: {raw}", flush=True)
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
