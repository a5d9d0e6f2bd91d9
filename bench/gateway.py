"""Benchmark ModelGate's gateway: direct to each service vs through the gateway (both upstream transports,
and a baseline gateway from an earlier commit in front of the same services), and the same sentiment
model served by LitServe and by a tutorial-style FastAPI app.

    python -m bench.gateway            # the full run (~15 minutes): concurrency 1, 8, 32, 64; 6 s a point
    python -m bench.gateway --quick    # ~4 minutes: concurrency 1 and 32; 3 s a point; results/ only
    # What tracing costs: off (this checkout's gateways against REV, the commit before tracing), and on
    python -m bench.gateway --quick --no-peers --routes iris,iris-v2-json --baseline REV --tracing

Method. Everything runs on this machine: the three services (one worker each), the gateways in front of
them (UPSTREAM_TRANSPORT=httptools, =aiohttp and =httpx from this checkout, and `--baseline <rev>`'s own
gateway code with its own gunicorn.conf.py; auth, JSON access logs, request IDs and rate limiting all
on, with a limit too generous to refuse anything), the two peer servers, and wrk. The targets of one route are
measured back to back at each concurrency, in an order that alternates, so slow drift of a shared
machine hits them alike: read the ratios, not the absolute figures.

The iris model is reached three ways (`/v1/tabular/iris`, and `/v2/models/iris/infer` with a JSON and
with a binary tensor body): on those, the gateway's CPU per proxied request (CPU seconds of its master
and worker ÷ answered requests, at 32 connections) and the p50 it adds at 1 connection are the figures
the goals are set on, for the gateway now and the baseline.

Writes `results/bench-<timestamp>/` (report.md, results.json, img/*.png, log tails); a full run also
copies the report to docs/benchmarks.md and docs/img/ (unless --no-docs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, get_args

from bench import report as md
from bench.harness import (
    GATEWAY_ENV,
    INFERENCE_HEADER,
    PEERS,
    REPO,
    PeerProcess,
    Point,
    Route,
    Target,
    Wrk,
    idle_cpu,
    load_average,
    machine_info,
    make_routes,
    median,
    memory_of,
    model_outputs,
    oip_binary_body,
    oip_json_body,
    out_dir_for,
    pids_of,
    profile_under_load,
    save_log_tails,
    send,
    server_timing,
    service_label,
    start_process,
    verify,
    wait_http_ok,
)
from bench.tools import litserve_version, require_wrk
from devstack import SERVICES, LocalStack, free_port
from gateway.config import GatewaySettings

# Every UPSTREAM_TRANSPORT the gateway accepts, and its default, as its settings declare them.
_TRANSPORT_FIELD = GatewaySettings.model_fields["upstream_transport"]
TRANSPORTS: tuple[str, ...] = get_args(_TRANSPORT_FIELD.annotation)
DEFAULT_TRANSPORT: str = _TRANSPORT_FIELD.default
NOW = f"gateway ({DEFAULT_TRANSPORT})"
# `--tracing`: one more gateway (the default transport) with OpenTelemetry on, exporting every span.
TRACING_GATEWAY = f"{DEFAULT_TRANSPORT}-tracing"
DEFAULT_BASELINE = "34b0545"  # the commit before the gateway's performance work (#11)
BASELINE_DIR = REPO / "build" / "bench-baseline"
IRIS_ROUTES = ("iris", "iris-v2-json", "iris-v2-binary")
# scripts/peers/bare_proxy.py on the iris routes: what the server and the HTTP client cost before any feature,
# with the gateway's own client and with aiohttp's (BARE_PROXY_CLIENT).
FLOORS = {
    "httptools": "floor: Uvicorn + gateway.http1, no features",
    "aiohttp": "floor: Uvicorn + aiohttp, no features",
}
ROUTE_ORDER = (*IRIS_ROUTES, "fraud", "sentiment", "classify")
GATEWAY_CPU_GOAL_MS = 0.30  # gateway CPU per proxied request, 32 connections
ADDED_P50_GOAL_MS = 0.5  # p50 added by the gateway, 1 connection


# ----------------------------------------------------------------------------------------------------
# What is measured


@dataclass
class Report:
    started: str
    quick: bool
    duration_s: float
    concurrencies: list[int]
    machine: dict[str, Any]
    load_before: str
    load_after: str = ""
    baseline: dict[str, str] = field(default_factory=dict)  # rev, commit, source, imports
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


def oip_routes(outputs: Sequence[str]) -> list[Route]:
    """iris over /v2: the same flower as a JSON tensor and as a binary one (the answer's outputs binary
    too), checked for a setosa either way."""
    binary, header_length = oip_binary_body(outputs)

    def json_check(body: Any) -> bool:
        return any(o.get("data") in (["setosa"], [0]) for o in body.get("outputs", []))

    return [
        Route(
            "iris-v2-json",
            "/v2/models/iris/infer",
            "tabular",
            "application/json",
            oip_json_body(),
            json_check,
        ),
        Route(
            "iris-v2-binary",
            "/v2/models/iris/infer",
            "tabular",
            "application/octet-stream",
            binary,
            lambda _: True,  # checked by check_binary: the answer is not JSON
            {INFERENCE_HEADER: str(header_length)},
        ),
    ]


def check_binary(target: Target, route: Route) -> None:
    """A binary answer: 200, a JSON header of the length it names, outputs with binary_data_size."""
    status, headers, raw = send(target, route)
    found = {k.lower(): v for k, v in headers}
    length = found.get(INFERENCE_HEADER.lower())
    try:
        header = json.loads(raw[: int(length or 0)])
        sizes = [int(o["parameters"]["binary_data_size"]) for o in header["outputs"]]
        ok = status == 200 and len(raw) == int(length or 0) + sum(sizes)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise SystemExit(f"{target.name} {route.name}: bad binary answer {status}: {raw[:300]!r}")


def check(target: Target, route: Route) -> None:
    if route.headers.get(INFERENCE_HEADER):
        check_binary(target, route)
    else:
        verify(target, route)


class OtlpSink:
    """An OTLP/HTTP endpoint that takes every export and throws it away (`--tracing`): the cost
    measured is the gateway's (spans, processor, exporter), not a collector's."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")  # an empty ExportTraceServiceResponse
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> OtlpSink:
        threading.Thread(target=self._server.serve_forever, name="otlp-sink", daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# ----------------------------------------------------------------------------------------------------
# The baseline gateway: an earlier commit's gateway and core packages, first on its PYTHONPATH


def baseline_source(rev: str) -> tuple[str, Path]:
    """The commit `rev` names and a folder with its core/ and gateway/ (git archive, made once)."""
    found = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], capture_output=True, text=True, cwd=REPO
    )
    if found.returncode != 0:
        raise SystemExit(f"--baseline {rev}: not a commit here ({found.stderr.strip()})")
    commit = found.stdout.strip()
    folder = BASELINE_DIR / commit[:12]
    stamp = folder / ".complete"
    if not stamp.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit, "core", "gateway"], capture_output=True, cwd=REPO
        )
        if archive.returncode != 0:
            raise SystemExit(f"git archive {commit}: {archive.stderr.decode(errors='replace')}")
        with tempfile.TemporaryFile() as tmp:
            tmp.write(archive.stdout)
            tmp.seek(0)
            with tarfile.open(fileobj=tmp) as tar:
                tar.extractall(folder, filter="data")
        stamp.write_text(commit)
    return commit, folder


def baseline_env(source: Path, stack: LocalStack, keys_file: Path) -> dict[str, str]:
    env = stack.env_for("gateway") | GATEWAY_ENV | {"API_KEYS_FILE": str(keys_file)}
    env["PYTHONPATH"] = os.pathsep.join([str(source / "gateway"), str(source / "core")])
    return env


def baseline_imports(source: Path, env: dict[str, str], cwd: Path) -> dict[str, str]:
    """Where the baseline's interpreter, started in `cwd`, finds `gateway` and `modelgate_core` (the
    packages are installed editable in .venv: PYTHONPATH must win, or the baseline would run this
    checkout's code)."""
    probe = (
        "import json, gateway, modelgate_core; print(json.dumps([gateway.__file__, modelgate_core.__file__]))"
    )
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the baseline's packages do not import: {out.stderr.strip()[-300:]}")
    gateway_file, core_file = json.loads(out.stdout)
    for path in (gateway_file, core_file):
        if path is None or not Path(path).resolve().is_relative_to(source.resolve()):
            raise SystemExit(f"the baseline would import {path}, not the copy in {source}")
    return {"gateway": gateway_file, "modelgate_core": core_file}


@dataclass
class Baseline:
    name: str
    process: PeerProcess
    key: str


@contextmanager
def baseline_gateway(
    rev: str, services: LocalStack, run_dir: Path, report: Report
) -> Iterator[Baseline | None]:
    """`rev`'s gateway (its own gunicorn.conf.py, its own key store) in front of `services`."""
    if not rev:
        yield None
        return
    commit, source = baseline_source(rev)
    own_dir = run_dir / "gateway-baseline"
    own_dir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(ports={**services.ports, "gateway": free_port()}, run_dir=own_dir, workers=1)
    keys_file = own_dir / "api_keys.json"
    env = baseline_env(source, stack, keys_file)
    imports = baseline_imports(source, env, own_dir)
    name = f"gateway @ {commit[:7]}"
    report.baseline = {
        "rev": rev,
        "commit": commit,
        "source": str(source.relative_to(REPO)),
        **{f"imports {k}": str(Path(v).relative_to(REPO)) for k, v in imports.items()},
    }
    print(
        f"    {name}: imports {', '.join(v for k, v in report.baseline.items() if k.startswith('imports'))}"
    )
    created = subprocess.run(
        [sys.executable, "-m", "gateway.keys", "create", "--name", "bench", "--scopes", "*"],
        env=env,
        cwd=own_dir,
        capture_output=True,
        text=True,
    )
    if created.returncode != 0:
        raise SystemExit(f"the baseline's key store: {created.stderr.strip()[-300:]}")
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(source / "gateway" / "gunicorn.conf.py"),
        "gateway.app:app",
    ]
    started = time.monotonic()
    # Started outside the source tree: its folders (core/, gateway/) are not packages to find from cwd.
    process = start_process(name, argv, stack.ports["gateway"], own_dir / "gateway.log", env, cwd=own_dir)
    try:
        wait_http_ok(process.url + "/health/ready", 120, process.alive)
        report.cold_start_s[name] = round(time.monotonic() - started, 2)
        print(f"    {name} ready in {report.cold_start_s[name]:.1f}s", flush=True)
        yield Baseline(name, process, created.stdout.strip())
    finally:
        process.stop()


@contextmanager
def floor_proxies(
    services: LocalStack, run_dir: Path, report: Report, enabled: bool
) -> Iterator[dict[str, PeerProcess]]:
    """scripts/peers/bare_proxy.py in front of the tabular service, once per client (FLOORS), on the
    same loop and parser as the gateway's workers (uvloop, httptools), one process each."""
    running: dict[str, PeerProcess] = {}
    try:
        for client, name in FLOORS.items() if enabled else ():
            port = free_port()
            argv = [
                *(sys.executable, "-m", "uvicorn", "--app-dir", str(PEERS), "bare_proxy:app"),
                *("--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"),
                *("--host", "127.0.0.1", "--port", str(port)),
            ]
            env = {**os.environ, "UPSTREAM": services.url("tabular"), "BARE_PROXY_CLIENT": client}
            started = time.monotonic()
            process = running[name] = start_process(name, argv, port, run_dir / f"floor-{client}.log", env)
            wait_http_ok(process.url + "/health/ready", 60, process.alive)
            report.cold_start_s[name] = round(time.monotonic() - started, 2)
        yield running
    finally:
        for process in running.values():
            process.stop()


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
def modelgate(
    run_dir: Path, report: Report, torch_nlp: bool, tracing_endpoint: str | None = None
) -> Iterator[Deployment]:
    """The three services and one gateway per transport, started one at a time (for cold-start
    figures), and an API key; everything is stopped on exit. With `tracing_endpoint`, one more gateway
    (the default transport) traces every request and exports to it; the others run with tracing off."""
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
        if tracing_endpoint is not None:
            gw_dir = run_dir / f"gateway-{TRACING_GATEWAY}"
            gw_dir.mkdir(parents=True, exist_ok=True)
            otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": tracing_endpoint, "OTEL_TRACES_SAMPLER": "always_on"}
            gateway = LocalStack(
                ports={**ports, "gateway": free_port()},
                run_dir=gw_dir,
                workers=1,
                extra_env={
                    **GATEWAY_ENV,
                    "UPSTREAM_TRANSPORT": DEFAULT_TRANSPORT,
                    "API_KEYS_FILE": str(keys_file),
                }
                | otel,
            )
            stacks.append(gateway)
            deployment.gateways[TRACING_GATEWAY] = gateway
            start_timed(gateway, "gateway", f"gateway ({TRACING_GATEWAY})", report, timeout=120)
            report.notes.append(
                f"gateway ({TRACING_GATEWAY}): tracing on (OTEL_EXPORTER_OTLP_ENDPOINT set, every request "
                "sampled), spans exported over OTLP/HTTP to a sink in the bench process that only "
                "answers 200; the services trace nothing. The other gateways run with tracing off."
            )
        deployment.key = services.create_key("bench")
        yield deployment
    finally:
        for stack in reversed(stacks):
            stack.stop_all()


def peer_specs(litserve_ok: bool) -> list[tuple[str, list[str]]]:
    specs: list[tuple[str, list[str]]] = []
    if litserve_ok:
        specs.append(
            ("litserve", [sys.executable, str(PEERS / "litserve_sentiment.py"), "--port", str(free_port())])
        )
    specs.append(
        (
            "fastapi",
            [
                *(sys.executable, "-m", "uvicorn", "--app-dir", str(PEERS), "fastapi_sentiment:app"),
                *("--host", "127.0.0.1", "--port", str(free_port()), "--log-level", "warning"),
            ],
        )
    )
    return specs


@contextmanager
def peer_servers(
    run_dir: Path, report: Report, litserve_ok: bool, enabled: bool
) -> Iterator[list[PeerProcess]]:
    """The two peers, started one after the other (cold start), then paused until their turn."""
    running: list[PeerProcess] = []
    if not enabled:
        yield running
        return
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MODEL_DIR": str(REPO / "artifacts" / "sentiment"),
    }
    try:
        for name, argv in peer_specs(litserve_ok):
            port = int(argv[argv.index("--port") + 1])
            peer = start_process(name, argv, port, run_dir / f"peer-{name}.log", env)
            running.append(peer)
            try:
                seconds = wait_http_ok(peer.url + "/health", 300, peer.alive)
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


def route_targets(
    route: Route,
    deployment: Deployment,
    baseline: Baseline | None,
    floors: dict[str, PeerProcess],
    peers: Sequence[PeerProcess],
    svc_pids: dict[str, Callable[[], list[int]]],
) -> list[Target]:
    """Who answers `route`: the service directly, each gateway, and (sentiment) the peers."""
    services = deployment.services
    targets = [
        Target(
            f"direct ({service_label(route)})",
            "direct",
            services.url(route.service),
            pids=svc_pids[route.service],
        )
    ]
    for transport, gateway in deployment.gateways.items():
        gw_pids = pids_of(gateway, "gateway")
        targets.append(
            Target(f"gateway ({transport})", "gateway", gateway.url("gateway"), deployment.key, pids=gw_pids)
        )
    if baseline is not None and route.name in IRIS_ROUTES:
        process = baseline.process
        targets.append(Target(baseline.name, "baseline", process.url, baseline.key, pids=process.pids))
    if route.name in IRIS_ROUTES:
        targets += [Target(name, "gateway", floor.url, pids=floor.pids) for name, floor in floors.items()]
    if route.name == "sentiment" and deployment.torch_nlp:
        alt = deployment.torch_nlp
        targets.insert(
            1, Target("direct (nlp-service, torch)", "direct-alt", alt.url("nlp"), pids=pids_of(alt, "nlp"))
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
    return targets


def bench_route(
    wrk: Wrk,
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
        check(target, route)
        wrk.run(target, route, min(8, max(report.concurrencies)), args.warmup)
        if target.pause:
            target.pause(True)
    for index, connections in enumerate(report.concurrencies):
        order = targets if index % 2 == 0 else list(reversed(targets))
        for target in order:
            groups: dict[str, Callable[[], list[int]]] = {}
            if target.kind in ("direct", "gateway", "baseline"):
                groups[route.service] = svc_pids[route.service]
            if target.kind in ("gateway", "baseline"):
                groups["gateway"] = target.pids
            if target.kind in ("peer", "direct-alt"):
                groups[target.kind] = target.pids
            if target.pause:
                target.pause(False)
            try:
                point = wrk.measure(target, route, connections, args.duration, groups)
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


def hop_breakdown(target: Target, route: Route, n: int) -> dict[str, float]:
    """Median of the gateway's own Server-Timing over `n` sequential requests: its total time, the time
    waiting for the upstream, and what is left (the gateway's own work), in ms."""
    service = service_label(route)
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


def hop_breakdown_direct(target: Target, route: Route, n: int) -> dict[str, float]:
    """The service's own total time (its Server-Timing entry), median over `n` requests."""
    service = service_label(route)
    totals: list[float] = []
    for _ in range(n):
        _, headers, _ = send(target, route)
        values = server_timing(headers)
        if service in values:
            totals.append(values[service])
    if not totals:
        return {}
    return {"samples": len(totals), "service_total_ms": round(median(totals), 3)}


def run(args: argparse.Namespace) -> Path:
    wrk_path, wrk_version = require_wrk()
    litserve_ok, litserve_info = litserve_version()
    if not args.no_peers:
        print(f"==> litserve: {litserve_info}", flush=True)
    out_dir = out_dir_for("bench", args.out)
    report = Report(
        started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        quick=args.quick,
        duration_s=args.duration,
        concurrencies=[int(c) for c in args.concurrency.split(",")],
        machine=machine_info(wrk_version),
        load_before=load_average(),
    )
    if not litserve_ok:
        report.peers["litserve"] = litserve_info
    else:
        report.notes.append(f"litserve {litserve_info}")
    wanted = args.routes.split(",")
    print(f"==> machine: {report.machine['cpu_model']}, load {report.load_before}", flush=True)

    with tempfile.TemporaryDirectory(prefix="modelgate-bench-") as tmp:
        run_dir = Path(tmp)
        wrk = Wrk(wrk_path, wrk_version, run_dir)
        try:
            print("==> starting ModelGate (one worker per process)", flush=True)
            with (
                OtlpSink() if args.tracing else contextlib.nullcontext() as sink,
                modelgate(run_dir, report, not args.no_peers, sink.endpoint if sink else None) as deployment,
                baseline_gateway(args.baseline, deployment.services, run_dir, report) as baseline,
                floor_proxies(deployment.services, run_dir, report, not args.no_floor) as floors,
            ):
                services, gateways, key = deployment.services, deployment.gateways, deployment.key
                outputs = model_outputs(gateways[DEFAULT_TRANSPORT].url("gateway"), key)
                by_name = {r.name: r for r in make_routes() + oip_routes(outputs)}
                routes = [by_name[name] for name in ROUTE_ORDER if name in wanted]
                svc_pids = {name: pids_of(services, name) for name in ("tabular", "vision", "nlp")}
                groups = {SERVICES[n][0]: get for n, get in svc_pids.items()}
                groups |= {f"gateway ({t})": pids_of(g, "gateway") for t, g in gateways.items()}
                if deployment.torch_nlp:
                    groups["nlp-service, torch"] = pids_of(deployment.torch_nlp, "nlp")
                if baseline is not None:
                    groups[baseline.name] = baseline.process.pids
                for name, floor in floors.items():
                    groups[name] = floor.pids
                for name, get in groups.items():
                    report.memory_idle[name] = memory_of(get())
                report.idle_cpu_pct.update(idle_cpu(groups))
                with peer_servers(run_dir, report, litserve_ok, not args.no_peers) as peers:
                    for peer in peers:
                        peer.pause(False)
                        report.memory_idle[f"peer: {peer.name}"] = memory_of(peer.pids())
                        report.idle_cpu_pct.update(idle_cpu({f"peer: {peer.name}": peer.pids}))
                        peer.pause(True)
                    for route in routes:
                        targets = route_targets(route, deployment, baseline, floors, peers, svc_pids)
                        bench_route(wrk, route, targets, svc_pids, args, report)
                        for peer in peers:
                            report.memory_loaded[f"peer: {peer.name}"] = memory_of(peer.pids())
                    for name, get in groups.items():
                        report.memory_loaded[name] = memory_of(get())
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
                                worker = pids_of(gateway, "gateway")()[-1]
                                raw = out_dir / f"profile-{transport}.txt"
                                report.profiles[transport] = profile_under_load(
                                    wrk, target, iris, worker, raw, args.profile
                                )
        finally:
            save_log_tails(run_dir, out_dir / "logs")
    report.load_after = load_average()
    write_report(report, out_dir)
    md.publish(out_dir, "benchmarks.md", images(report), full_run=not (args.quick or args.no_docs))
    return out_dir


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


def images(report: Report) -> list[str]:
    return [f"img/bench-{route}.png" for route in dict.fromkeys(p.route for p in report.points)]


def c_high(report: Report) -> int:
    return 32 if 32 in report.concurrencies else max(report.concurrencies)


def gateway_names(report: Report) -> list[tuple[str, str]]:
    """(kind, target name) of every gateway measured: the transports, then the baseline."""
    names = [("gateway", f"gateway ({t})") for t in TRANSPORTS]
    extra = {p.target for p in report.points if p.kind == "gateway"} - {name for _, name in names}
    names += [("gateway", name) for name in sorted(extra)]  # `--tracing`'s
    baseline = next((p.target for p in report.points if p.kind == "baseline"), None)
    return names + ([("baseline", baseline)] if baseline else [])


@dataclass(frozen=True)
class GatewayCost:
    """One gateway on one route: its CPU per proxied request and the latency it adds."""

    route: str
    gateway: str
    cpu_ms: float  # the gateway's processes, per answered request, at c_high
    service_cpu_ms: float  # the service's, in the same point
    direct_service_cpu_ms: float  # the service's when called directly
    added_p50_ms: float  # at the lowest concurrency
    rps: float  # at c_high
    direct_rps: float


def gateway_costs(report: Report) -> list[GatewayCost]:
    high, low = c_high(report), min(report.concurrencies)
    costs: list[GatewayCost] = []
    for route in IRIS_ROUTES:
        direct_high, direct_low = find(report, route, "direct", high), find(report, route, "direct", low)
        for kind, name in gateway_names(report):
            gw_high, gw_low = find(report, route, kind, high, name), find(report, route, kind, low, name)
            if not (direct_high and direct_low and gw_high and gw_low):
                continue
            costs.append(
                GatewayCost(
                    route=route,
                    gateway=name,
                    cpu_ms=gw_high.cpu_ms_per_req.get("gateway", float("nan")),
                    service_cpu_ms=gw_high.cpu_ms_per_req.get("tabular", float("nan")),
                    direct_service_cpu_ms=direct_high.cpu_ms_per_req.get("tabular", float("nan")),
                    added_p50_ms=gw_low.p50_ms - direct_low.p50_ms,
                    rps=gw_high.rps,
                    direct_rps=direct_high.rps,
                )
            )
    return costs


def goal_rows(report: Report) -> list[str]:
    rows = ["| goal | transport | measured | target | verdict |", "| --- | --- | --- | --- | --- |"]
    high, low = c_high(report), min(report.concurrencies)
    direct_high = find(report, "iris", "direct", high)
    direct_low = find(report, "iris", "direct", low)
    for transport in TRANSPORTS:
        name = f"gateway ({transport})"
        gw_high = find(report, "iris", "gateway", high, name)
        gw_low = find(report, "iris", "gateway", low, name)
        if direct_high and gw_high:
            r = gw_high.rps / direct_high.rps
            rows.append(
                f"| iris throughput, gateway / direct, {high} connections | {transport} | "
                f"{r:.2f} ({gw_high.rps:.0f} / {direct_high.rps:.0f} req/s) | ≥ 0.60 | "
                f"{md.verdict(r >= 0.60)} |"
            )
        if direct_low and gw_low:
            added = gw_low.p50_ms - direct_low.p50_ms
            rows.append(
                f"| iris p50 added by the gateway, {low} connection | {transport} | "
                f"{added:+.2f} ms ({gw_low.p50_ms:.2f} vs {direct_low.p50_ms:.2f} ms) | ≤ 1 ms | "
                f"{md.verdict(added <= 1.0)} |"
            )
    for cost in gateway_costs(report):
        if cost.gateway not in {f"gateway ({t})" for t in TRANSPORTS}:
            continue
        transport = cost.gateway.removeprefix("gateway (").removesuffix(")")
        rows.append(
            f"| gateway CPU per proxied request, {cost.route}, {high} connections | {transport} | "
            f"{cost.cpu_ms:.3f} ms (service {cost.service_cpu_ms:.3f} ms) | ≤ {GATEWAY_CPU_GOAL_MS:.2f} ms | "
            f"{md.verdict(cost.cpu_ms <= GATEWAY_CPU_GOAL_MS)} |"
        )
        rows.append(
            f"| p50 added by the gateway, {cost.route}, {low} connection | {transport} | "
            f"{cost.added_p50_ms:+.2f} ms | ≤ {ADDED_P50_GOAL_MS} ms | "
            f"{md.verdict(cost.added_p50_ms <= ADDED_P50_GOAL_MS)} |"
        )
    for cost in gateway_costs(report):
        if cost.gateway in FLOORS.values():
            side = "below" if cost.cpu_ms <= GATEWAY_CPU_GOAL_MS else "above"
            rows.append(
                f"| {cost.gateway.removeprefix('floor: ')}: the floor's CPU per proxied request, "
                f"{cost.route}, {high} connections | - | {cost.cpu_ms:.3f} ms | what a gateway on this "
                f"server and client costs at least | {side} the {GATEWAY_CPU_GOAL_MS:.2f} ms goal |"
            )
    if direct_high:
        a = direct_high.cpu_ms_per_req.get("tabular", 0.0)
        rows.append("")
        for transport in TRANSPORTS:
            gw = find(report, "iris", "gateway", high, f"gateway ({transport})")
            if gw is None or not a:
                continue
            b, g = gw.cpu_ms_per_req.get("tabular", 0.0), gw.cpu_ms_per_req.get("gateway", 0.0)
            rows.append(
                f"- CPU per iris request at {high} connections, {transport}: service {b:.2f} ms + gateway "
                f"{g:.2f} ms, against {a:.2f} ms direct. When the CPUs are the bottleneck (they are shared "
                f"here) the ratio can be at most about {a:.2f} / ({b:.2f} + {g:.2f}) = {a / (b + g):.2f}; "
                f"with a core each for gateway and service it could reach {a:.2f} / {max(b, g):.2f} = "
                f"{min(1.0, a / max(b, g)):.2f}."
            )
    return rows


def cost_rows(report: Report) -> list[str]:
    """Every gateway on the three iris routes: CPU per proxied request next to the service's own."""
    high, low = c_high(report), min(report.concurrencies)
    return md.table(
        (
            "route",
            "gateway",
            f"gateway CPU ms/req ({high} conns)",
            "service CPU ms/req via gateway",
            "service CPU ms/req direct",
            f"p50 added ms ({low} conn)",
            f"req/s via gateway ({high})",
            "req/s direct",
        ),
        "llrrrrrr",
        (
            (
                c.route,
                c.gateway,
                f"{c.cpu_ms:.3f}",
                f"{c.service_cpu_ms:.3f}",
                f"{c.direct_service_cpu_ms:.3f}",
                f"{c.added_p50_ms:+.2f}",
                f"{c.rps:.0f}",
                f"{c.direct_rps:.0f}",
            )
            for c in gateway_costs(report)
        ),
    )


def before_after_rows(report: Report) -> list[str]:
    """The baseline gateway against the gateway now (default transport), route by route."""
    costs = {(c.route, c.gateway): c for c in gateway_costs(report)}
    baseline = next((name for kind, name in gateway_names(report) if kind == "baseline"), None)
    rows = []
    for route in IRIS_ROUTES:
        before, now = costs.get((route, baseline or "")), costs.get((route, NOW))
        if before is None or now is None:
            continue
        rows.append(
            (
                route,
                f"{before.cpu_ms:.3f} → {now.cpu_ms:.3f} ({now.cpu_ms / before.cpu_ms:.2f}x)",
                f"{before.added_p50_ms:+.2f} → {now.added_p50_ms:+.2f}",
                f"{before.rps:.0f} → {now.rps:.0f} ({md.ratio(now.rps, before.rps)}x)",
            )
        )
    high, low = c_high(report), min(report.concurrencies)
    return md.table(
        (
            "route",
            f"gateway CPU ms/request ({high} conns), baseline → now",
            f"p50 added ms ({low} conn), baseline → now",
            f"req/s via gateway ({high} conns), baseline → now",
        ),
        "lrrr",
        rows,
    )


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
                f"| {c} | {p.target} | {p.rps:.0f} | {md.ratio(p.rps, direct.rps) if direct else 'n/a'} | "
                f"{md.fmt_ms(p.p50_ms)} | {md.fmt_ms(p.p95_ms)} | {md.fmt_ms(p.p99_ms)} | {p.errors} | "
                f"{cpu} | "
                f"{p.foreign_cores:.2f} |"
            )
    return rows


def peer_table(report: Report) -> list[str]:
    """Every sentiment server at each concurrency, as ratios to ModelGate's nlp-service."""
    alt = next((p.target for p in report.points if p.kind == "direct-alt"), None)
    header = f"| conns | server | req/s | p50 ms | p99 ms | errors | / ModelGate direct | / via {NOW} |"
    rule = "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    if alt:
        header += " / ModelGate torch direct |"
        rule += " ---: |"
    rows = [header, rule]
    for c in report.concurrencies:
        direct = find(report, "sentiment", "direct", c)
        gateway = find(report, "sentiment", "gateway", c, NOW)
        torch_direct = find(report, "sentiment", "direct-alt", c) if alt else None
        if direct is None or gateway is None:
            continue
        for p in points_for(report, "sentiment"):
            if p.connections != c or p.target == "gateway (httpx)":
                continue
            row = (
                f"| {c} | {p.target} | {p.rps:.1f} | {md.fmt_ms(p.p50_ms)} | {md.fmt_ms(p.p99_ms)} | "
                f"{p.errors} | "
                f"{md.ratio(p.rps, direct.rps)} | {md.ratio(p.rps, gateway.rps)} |"
            )
            if alt:
                row += f" {md.ratio(p.rps, torch_direct.rps) if torch_direct else 'n/a'} |"
            rows.append(row)
    return rows


def write_plots(report: Report, out_dir: Path) -> None:
    for route in dict.fromkeys(p.route for p in report.points):
        pts = points_for(report, route)
        series = []
        for target in dict.fromkeys(p.target for p in pts):
            ordered = sorted((p for p in pts if p.target == target), key=lambda p: p.connections)
            series.append(
                md.Series(
                    target,
                    [p.connections for p in ordered],
                    [p.rps for p in ordered],
                    [p.p50_ms for p in ordered],
                    [p.p99_ms for p in ordered],
                )
            )
        md.plot_connections(
            out_dir / "img" / f"bench-{route}.png",
            series,
            report.concurrencies,
            rps_title=f"{route}: throughput",
            latency_title=f"{route}: latency",
        )


def write_report(report: Report, out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(asdict(report), indent=2))
    write_plots(report, out_dir)
    m = report.machine
    foreign = [p.foreign_cores for p in report.points]
    lines = [
        "# ModelGate benchmarks",
        "",
        f"Generated by `python -m bench.gateway{' --quick' if report.quick else ''}` (`make bench`) on "
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
        "limiting all on (limit 1,000,000/s so it never refuses); `UPSTREAM_TRANSPORT=httptools` (the "
        "default: the gateway's own HTTP/1.1 client, gateway/http1.py), `=aiohttp` and `=httpx` are three "
        "gateways in front of the same three services.",
        "- Every target's answer was checked for the right shape before it was measured; `errors` counts "
        "non-2xx answers, socket errors and timeouts during the point.",
        "- CPU ms/req: CPU time the service (and the gateway: its Gunicorn master and worker) spent per "
        "answered request during the point. "
        "It hardly depends on what else runs on the machine, so it is the steadiest figure here. *other "
        "load*: cores used by processes outside the benchmark during that point; compare two targets' "
        "throughput only where it is similar.",
    ]
    if report.baseline:
        b = report.baseline
        lines.append(
            f"- Baseline: the gateway of `{b['rev']}` (commit {b['commit'][:12]}), its `core/` and "
            "`gateway/` "
            f"from `git archive` in `{b['source']}`, first on its `PYTHONPATH` (checked: it imports "
            f"`{b['imports gateway']}` and `{b['imports modelgate_core']}`), started with its own "
            "`gateway/gunicorn.conf.py` and the same settings, in front of the same services, on the iris "
            "routes."
        )
    lines += ["", "## Goals", "", *goal_rows(report), ""]
    if gateway_costs(report):
        lines += [
            "## What the gateway costs per request",
            "",
            "The iris model three ways: `/v1/tabular/iris`, and `/v2/models/iris/infer` with a JSON body and "
            f"with a binary tensor body ({INFERENCE_HEADER}, the output asked for binary too). Gateway CPU: "
            "CPU seconds of the gateway's processes (master + worker) ÷ answered requests, measured in the "
            "same point as the service's own figure; *p50 added*: the gateway's p50 less the service's "
            "direct p50, both at 1 connection.",
            "",
            *cost_rows(report),
            "",
        ]
    if report.baseline and any(p.kind == "baseline" for p in report.points):
        lines += [
            f"### Before and after: the gateway at `{report.baseline['rev']}` and now",
            "",
            "Both in front of the same services in the same run, measured back to back (now: "
            f"`UPSTREAM_TRANSPORT={DEFAULT_TRANSPORT}`, the default).",
            "",
            *before_after_rows(report),
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
            *md.profile_table(profile),
            "",
        ]
    for route in dict.fromkeys(p.route for p in report.points):
        lines += [
            f"## {route}",
            "",
            *route_table(report, route),
            "",
            f"![{route}](img/bench-{route}.png)",
            "",
        ]
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
            *md.table(
                ("service", "model", "artifact", "version", "framework"),
                "lllll",
                (
                    (service, m["name"], m.get("artifact", m["name"]), m["version"], m["framework"])
                    for service, models in report.models.items()
                    for m in models
                ),
            ),
            "",
        ]
    lines += [
        "## Memory per process",
        "",
        "Whole process tree (Gunicorn master + worker, or the peer's processes). PSS splits shared pages "
        "between the processes that share them, so it adds up; RSS counts them in each.",
        "",
    ]
    memory_rows = []
    for name, idle in report.memory_idle.items():
        loaded = report.memory_loaded.get(name, {})
        memory_rows.append(
            (
                name,
                f"{idle['processes']:.0f}",
                f"{idle['pss_mib']:.0f}",
                f"{idle['rss_mib']:.0f}",
                f"{loaded.get('pss_mib', float('nan')):.0f}",
                f"{loaded.get('rss_mib', float('nan')):.0f}",
                f"{report.idle_cpu_pct.get(name, float('nan')):.1f}",
            )
        )
    lines += md.table(
        (
            "process",
            "processes",
            "idle PSS MiB",
            "idle RSS MiB",
            "after load PSS MiB",
            "after load RSS MiB",
            "idle CPU % of a core",
        ),
        "lrrrrrr",
        memory_rows,
    )
    lines += [
        "",
        "## Cold start",
        "",
        "Process start to the first 200 from its readiness check (`/health/ready`; `/health` for the "
        "peers), started one at a time (the gateway's readiness needs its services up already).",
        "",
        *md.table(("process", "seconds"), "lr", ((n, f"{s:.1f}") for n, s in report.cold_start_s.items())),
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="~4 minutes: concurrency 1 and 32, 3 s a point, no fraud route; the report stays in results/",
    )
    parser.add_argument("--duration", type=float, help="seconds per point (default 6, quick 3)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per target (default 2, quick 1)")
    parser.add_argument("--concurrency", help="comma list (default 1,8,32,64; quick 1,32)")
    parser.add_argument(
        "--routes",
        help="comma list of iris, iris-v2-json, iris-v2-binary, fraud, sentiment, classify "
        "(default all; quick: no fraud)",
    )
    parser.add_argument("--no-peers", action="store_true", help="skip the LitServe and FastAPI peers")
    parser.add_argument(
        "--no-floor",
        action="store_true",
        help="skip the floors on the iris routes (scripts/peers/bare_proxy.py: Uvicorn and a client only)",
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help=f"add a gateway ({TRACING_GATEWAY}) that traces every request and exports the spans to a "
        "local OTLP sink: what tracing on costs (the others, as by default, have it off; compare them "
        "with --baseline at the commit before tracing for what it costs off)",
    )
    parser.add_argument(
        "--baseline",
        default=DEFAULT_BASELINE,
        metavar="REV",
        help="git revision whose gateway runs as the baseline on the iris routes "
        f"(default {DEFAULT_BASELINE}; '' for none)",
    )
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
        md.publish(
            source.parent, "benchmarks.md", images(report), full_run=not (report.quick or args.no_docs)
        )
        return 0
    # wrk takes whole seconds.
    args.duration = max(1, round(args.duration or (3 if args.quick else 6)))
    args.warmup = max(1, round(args.warmup or (1 if args.quick else 2)))
    if args.quick and args.hop_samples == 300:
        args.hop_samples = 100
    args.concurrency = args.concurrency or ("1,32" if args.quick else "1,8,32,64")
    args.routes = args.routes or ",".join(r for r in ROUTE_ORDER if not (args.quick and r == "fraud"))
    if args.profile is None:
        args.profile = 0.0 if args.quick else 10.0
    started = time.monotonic()
    out_dir = run(args)
    print(f"==> {out_dir} ({time.monotonic() - started:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
