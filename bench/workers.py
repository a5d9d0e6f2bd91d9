"""Tune Gunicorn workers and model threads per service on this machine, and size the stack's memory.

    python -m bench.workers            # ~13 minutes: 3 rounds, 5 s a point
    python -m bench.workers --quick    # ~4 minutes: 1 round, 3 s a point; the report stays in results/
    python -m bench.workers --render results/workers-*/results.json   # pool earlier runs

For every service, one Gunicorn per configuration (Uvicorn workers x intra-op threads per worker, set
with WEB_CONCURRENCY and TORCH_THREADS), started one at a time: the seconds from process start until
*every* worker has its models loaded (their "model loaded" log lines), then, with all of them running,
wrk at 1 and at 32 connections against each, the configurations alternated in a rotating order for
`--rounds` rounds, then each worker's resident memory. The gateway is measured the same way, on the iris
route in front of one tabular-service, with auth, JSON logs and rate limiting on.

Uvicorn workers run one event loop each and no request threads (Gunicorn's `threads` only applies to
its gthread worker), so "threads" here is the model's intra-op thread pool (torch / ONNX Runtime). The
tabular models stay at one OpenMP thread (see tabular-service/gunicorn.conf.py).

Picks per service: the highest throughput at 32 connections (the median over rounds, so one round
disturbed by other work on a shared machine does not decide); among configurations within 5% of it,
the one using the least memory. Several runs can be pooled (`--render`) where one run is too noisy.
Then starts the whole stack with the picks and measures its memory, and, where Docker answers and
the images are built, the compose stack as shipped (`docker stats`).
Writes results/workers-<timestamp>/ (report.md, results.json, img/workers.png); a full run also copies
the report to docs/workers.md and docs/img/workers.png (unless --no-docs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from bench import report as md
from bench.harness import (
    GATEWAY_ENV,
    REPO,
    Point,
    Route,
    Target,
    Wrk,
    load_average,
    machine_info,
    make_routes,
    out_dir_for,
    tree_pids,
    verify,
)
from bench.tools import require_wrk
from devstack import SERVICES, LocalStack, compose_command, compose_env, free_port

CONNECTIONS = (1, 32)
NEAR_BEST = 0.95  # a configuration this close to the best throughput counts as just as fast


@dataclass(frozen=True)
class Config:
    """One way to run a service: Gunicorn workers, and intra-op threads per worker where it has any."""

    workers: int
    threads: int | None = None

    @property
    def label(self) -> str:
        text = f"{self.workers} worker{'s' if self.workers > 1 else ''}"
        return text + (f" x {self.threads} thread{'s' if self.threads > 1 else ''}" if self.threads else "")

    def env(self) -> dict[str, str]:
        return {"WEB_CONCURRENCY": str(self.workers)} | (
            {"TORCH_THREADS": str(self.threads)} if self.threads else {}
        )


NEURAL_GRID = (Config(1, 1), Config(1, 2), Config(2, 1), Config(3, 1))
PLANS: dict[str, tuple[tuple[str, ...], tuple[Config, ...]]] = {  # service -> (routes, configurations)
    "tabular": (("iris", "fraud"), tuple(Config(w) for w in (1, 2, 3, 4))),
    "vision": (("classify",), NEURAL_GRID),
    "nlp": (("sentiment",), NEURAL_GRID),
    "gateway": (("iris",), tuple(Config(w) for w in (1, 2, 3))),
}


def shipped_configs() -> dict[str, Config]:
    """What compose.yaml ships: its `${<SERVICE>_WORKERS:-n}` and `${<SERVICE>_TORCH_THREADS:-n}` defaults."""
    text = (REPO / "compose.yaml").read_text()

    def default(variable: str) -> int | None:
        found = re.search(r"\$\{" + variable + r":-(\d+)\}", text)
        return int(found.group(1)) if found else None

    return {
        service: Config(
            default(f"{service.upper()}_WORKERS") or 1, default(f"{service.upper()}_TORCH_THREADS")
        )
        for service in PLANS
    }


SHIPPED = shipped_configs()


@dataclass
class Memory:
    """Resident memory of one Gunicorn tree after load, MiB. PSS splits shared pages between sharers."""

    master_rss: float = 0.0
    master_pss: float = 0.0
    workers_rss: list[float] = field(default_factory=list)
    workers_pss: list[float] = field(default_factory=list)

    @property
    def total_pss(self) -> float:
        return self.master_pss + sum(self.workers_pss)

    @property
    def total_rss(self) -> float:
        return self.master_rss + sum(self.workers_rss)


@dataclass
class Cell:
    """Everything measured for one service in one configuration."""

    service: str
    config: Config
    first_ready_s: float = 0.0  # until /health/ready first answers 200
    all_ready_s: float = 0.0  # until every worker has loaded its models
    memory: Memory = field(default_factory=Memory)
    points: list[Point] = field(default_factory=list)

    def throughput_vs(self, other: Cell) -> float:
        """Throughput at 32 connections relative to `other`: the geometric mean over the routes."""
        ratios = [
            self.route_median(route, 32, "rps") / other.route_median(route, 32, "rps")
            for route in dict.fromkeys(p.route for p in self.points)
        ]
        return math.prod(ratios) ** (1 / len(ratios)) if ratios else float("nan")

    def other_load(self) -> float:
        """Median cores used by processes outside the benchmark while this configuration was measured."""
        return statistics.median(p.foreign_cores for p in self.points) if self.points else float("nan")

    def mean(self, connections: int, attr: str) -> float:
        """A Point figure's median over rounds, averaged over the routes."""
        routes = dict.fromkeys(p.route for p in self.points)
        return (
            statistics.mean(self.route_median(r, connections, attr) for r in routes) if routes else math.nan
        )

    def route_median(self, route: str, connections: int, attr: str) -> float:
        """The median over rounds: one round disturbed by other work on the machine does not move it."""
        values = [
            float(getattr(p, attr)) for p in self.points if p.route == route and p.connections == connections
        ]
        return statistics.median(values) if values else float("nan")


@dataclass
class Report:
    started: str
    rounds: int
    duration_s: float
    machine: dict[str, Any]
    load_before: str
    load_after: str = ""
    cells: list[Cell] = field(default_factory=list)
    picks: dict[str, Config] = field(default_factory=dict)
    stack_memory: dict[str, Memory] = field(default_factory=dict)  # whole stack with the picks
    stack_configs: dict[str, Config] = field(default_factory=dict)  # what that stack ran
    compose_memory: dict[str, float] | str = ""  # compose service -> MiB, or why it was not measured
    pooled: list[str] = field(default_factory=list)  # when rendered from several runs: when each ran
    quick: bool = False  # a --quick run (or pooled with one): its report stays in results/


def load_report(path: Path) -> Report:
    data = json.loads(path.read_text())
    cells = [
        Cell(
            c["service"],
            Config(**c["config"]),
            c["first_ready_s"],
            c["all_ready_s"],
            Memory(**c["memory"]),
            [Point(**p) for p in c["points"]],
        )
        for c in data.pop("cells")
    ]
    stack = {name: Memory(**m) for name, m in data.pop("stack_memory").items()}
    configs = {name: Config(**c) for name, c in data.pop("stack_configs", data["picks"]).items()}
    data.pop("picks")
    return Report(**data, cells=cells, stack_memory=stack, stack_configs=configs)


def pooled(reports: Sequence[Report]) -> Report:
    """Several runs as one: every round of every run per configuration; memory, cold start and the
    machine from the latest run (the last one given)."""
    latest = reports[-1]
    merged = Report(
        started=latest.started,
        rounds=sum(r.rounds for r in reports),
        duration_s=latest.duration_s,
        machine=latest.machine,
        load_before=latest.load_before,
        load_after=latest.load_after,
        stack_memory=latest.stack_memory,
        stack_configs=latest.stack_configs,
        compose_memory=latest.compose_memory,
        pooled=[f"{r.started} ({r.rounds} rounds)" for r in reports],
        quick=any(r.quick for r in reports),
    )
    for cell in latest.cells:
        points = [
            p
            for r in reports
            for c in r.cells
            if (c.service, c.config) == (cell.service, cell.config)
            for p in c.points
        ]
        merged.cells.append(
            Cell(cell.service, cell.config, cell.first_ready_s, cell.all_ready_s, cell.memory, points)
        )
    for service in dict.fromkeys(c.service for c in merged.cells):
        merged.picks[service] = pick([c for c in merged.cells if c.service == service])
    return merged


# ----------------------------------------------------------------------------------------------------
# Processes


def gunicorn_memory(root: int) -> Memory:
    """The master's and each worker's RSS/PSS."""
    memory = Memory()
    for pid in tree_pids(root):
        with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            info = psutil.Process(pid).memory_full_info()
            rss, pss = info.rss / 2**20, getattr(info, "pss", info.rss) / 2**20
            if pid == root:
                memory.master_rss, memory.master_pss = rss, pss
            else:
                memory.workers_rss.append(rss)
                memory.workers_pss.append(pss)
    return memory


def models_loaded(log: Path) -> dict[int, int]:
    """pid -> how many "model loaded" lines that worker has logged."""
    counts: dict[int, int] = {}
    with suppress(OSError), log.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if '"model loaded"' not in line:
                continue
            with suppress(ValueError, KeyError, TypeError):
                pid = int(json.loads(line)["pid"])
                counts[pid] = counts.get(pid, 0) + 1
    return counts


def start_timed(stack: LocalStack, name: str, cell: Cell, models: int, timeout: float = 300) -> None:
    """Start one Gunicorn; time its first ready answer and the moment every worker has its models."""
    started = time.monotonic()
    stack.start(name)
    stack.wait_ready(name, timeout=timeout)
    cell.first_ready_s = round(time.monotonic() - started, 2)
    log = stack.run_dir / f"{name}.log"
    while models:
        loaded = models_loaded(log)
        if sum(1 for n in loaded.values() if n >= models) >= cell.config.workers:
            break
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{name} ({cell.config.label}): not every worker loaded its models")
        time.sleep(0.05)
    cell.all_ready_s = round(time.monotonic() - started, 2) if models else cell.first_ready_s


MODELS_PER_SERVICE = {"tabular": 2, "vision": 1, "nlp": 1, "gateway": 0}


@dataclass
class Running:
    """One configuration's cell, its Gunicorn, and the wrk target that reaches it."""

    cell: Cell
    stack: LocalStack
    target: Target
    # The services behind a gateway: their CPU is part of the benchmark, not "other load".
    backend_pids: Callable[[], list[int]] = list


@contextmanager
def started_configs(
    service: str, configs: Sequence[Config], run_dir: Path, report: Report
) -> Iterator[list[Running]]:
    """One Gunicorn per configuration of `service`, started one at a time (for the gateway: after the
    three services it needs to be ready, in their shipped configurations)."""
    keys_file = run_dir / "api_keys.json"
    stacks: list[LocalStack] = []
    running: list[Running] = []
    ports = {name: free_port() for name in SERVICES}
    backends: dict[str, LocalStack] = {}

    def backend_pids() -> list[int]:
        return [pid for name, b in backends.items() for pid in tree_pids(b.processes[name].pid)]

    try:
        key = ""
        if service == "gateway":
            for name in ("tabular", "vision", "nlp"):
                backend_env = SHIPPED[name].env() | {"API_KEYS_FILE": str(keys_file)}
                backend = LocalStack(ports, run_dir / f"backend-{name}", extra_env=backend_env)
                backend.run_dir.mkdir()
                stacks.append(backend)
                backends[name] = backend
                backend.start(name)
                backend.wait_ready(name)
            key = backends["tabular"].create_key("bench")
        for index, config in enumerate(configs):
            own_dir = run_dir / f"{service}-{index}"
            own_dir.mkdir()
            env = config.env()
            if service == "gateway":
                env |= GATEWAY_ENV | {"API_KEYS_FILE": str(keys_file)}
            stack = LocalStack({**ports, service: free_port()}, own_dir, extra_env=env)
            stacks.append(stack)
            cell = Cell(service, config)
            start_timed(stack, service, cell, MODELS_PER_SERVICE[service])
            print(
                f"    {service} {config.label}: ready in {cell.first_ready_s:.1f}s, "
                f"every worker in {cell.all_ready_s:.1f}s",
                flush=True,
            )
            kind = "gateway" if service == "gateway" else "direct"
            pids = partial(tree_pids, stack.processes[service].pid)
            target = Target(config.label, kind, stack.url(service), key, pids=pids)
            running.append(Running(cell, stack, target, backend_pids))
            report.cells.append(cell)
        yield running
    finally:
        for stack in reversed(stacks):
            stack.stop_all()


# ----------------------------------------------------------------------------------------------------
# Measuring


def bench_service(
    service: str, wrk: Wrk, run_dir: Path, routes: dict[str, Route], report: Report, warmup: int
) -> None:
    route_names, configs = PLANS[service]
    print(f"==> {service}: {', '.join(c.label for c in configs)}", flush=True)
    service_dir = run_dir / service
    service_dir.mkdir()
    with started_configs(service, configs, service_dir, report) as running:
        for each in running:
            for name in route_names:
                verify(each.target, routes[name])
                wrk.run(each.target, routes[name], 8, warmup)
        for rnd in range(report.rounds):
            shift = rnd % len(running)
            order = running[shift:] + running[:shift]
            for connections in CONNECTIONS:
                for name in route_names:
                    for each in order:
                        cell, target = each.cell, each.target
                        groups = {service: target.pids, "backends": each.backend_pids}
                        point = wrk.measure(target, routes[name], connections, report.duration_s, groups)
                        cell.points.append(point)
                        print(
                            f"    round {rnd + 1} c={connections:<3} {name:<9} {cell.config.label:<22}"
                            f" {point.rps:8.1f} req/s  p50 {point.p50_ms:7.2f} ms  p95 {point.p95_ms:8.2f} ms"
                            f"  errors {point.errors}  other load {point.foreign_cores:.2f}",
                            flush=True,
                        )
        for each in running:
            each.cell.memory = gunicorn_memory(each.stack.processes[service].pid)


def pick(cells: Sequence[Cell]) -> Config:
    """The fastest at 32 connections; among those within NEAR_BEST of it, the one using least memory."""
    # Geometric means of ratios compare consistently through any one reference.
    best = max(cells, key=lambda c: c.throughput_vs(cells[0]))
    near = [c for c in cells if c.throughput_vs(best) >= NEAR_BEST]
    return min(near, key=lambda c: c.memory.total_pss).config


def exercise(gateway: Target, routes: dict[str, Route], times: int = 20) -> None:
    """`times` checked requests per route, so memory is measured after real work, not at idle."""
    for route in routes.values():
        for _ in range(times):
            verify(gateway, route)


def whole_stack_memory(
    run_dir: Path, picks: dict[str, Config], routes: dict[str, Route]
) -> dict[str, Memory]:
    """The four processes together with the picked configurations, after a few requests per route."""
    keys_file = run_dir / "api_keys.json"
    ports = {name: free_port() for name in SERVICES}
    stacks = {}
    try:
        for name in SERVICES:
            env = picks[name].env() | (GATEWAY_ENV if name == "gateway" else {})
            own_dir = run_dir / f"stack-{name}"
            own_dir.mkdir()
            stacks[name] = LocalStack(ports, own_dir, extra_env=env | {"API_KEYS_FILE": str(keys_file)})
            stacks[name].start(name)
            stacks[name].wait_ready(name)
        key = stacks["gateway"].create_key("bench")
        exercise(Target("gateway", "gateway", stacks["gateway"].url("gateway"), key), routes)
        return {name: gunicorn_memory(stack.processes[name].pid) for name, stack in stacks.items()}
    finally:
        for stack in reversed(list(stacks.values())):
            stack.stop_all()


def compose_memory(routes: dict[str, Route]) -> dict[str, float] | str:
    """MiB per container of the compose stack as shipped (`docker stats`), after 20 requests per route
    through its gateway; or why it could not be measured."""
    docker_up = (
        shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    )
    compose = compose_command() if docker_up else None
    if compose is None:
        return "no Docker daemon or Compose v2 here (make docker-setup)"
    port = free_port()
    env = compose_env() | {"GATEWAY_PORT": str(port), "GATEWAY_HOST_IP": "127.0.0.1"}
    # compose.yaml's Redis refuses to start without a password; this project (and its volume) is its own.
    env["REDIS_PASSWORD"] = secrets.token_hex(24)
    base = [*compose, "-p", f"mgworkers{os.getpid()}"]

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )

    try:
        up = run("up", "-d", "--wait", "--no-build", timeout=300)
        if up.returncode:
            return f"`compose up` failed (are the images built? make images-offline): {up.stderr[-300:]}"
        created = run(
            "exec", "-T", "gateway", "python", "-m", "gateway.keys", "create",
            "--name", "bench", "--scopes", "*", "--rate", "1000", "--burst", "1000",
        )  # fmt: skip
        key = next(token for token in created.stdout.split() if token.startswith("mg_"))
        exercise(Target("compose gateway", "gateway", f"http://127.0.0.1:{port}", key), routes)
        ids = run("ps", "-q").stdout.split()
        stats = subprocess.run(
            ["docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", *ids],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        memory: dict[str, float] = {}
        for line in stats.splitlines():
            name, usage = line.split(" ", 1)
            service = name.split("-", 1)[1].rsplit("-", 1)[0]  # <project>-<service>-<replica>
            memory[service] = memory.get(service, 0.0) + parse_mib(usage.split("/")[0].strip())
        return memory
    finally:
        run("down", "-v", "--remove-orphans", timeout=180)


def parse_mib(text: str) -> float:
    """'123.4MiB' / '1.2GiB' / '900KiB' (docker stats) in MiB."""
    units = {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "B": 1 / 2**20}
    for unit in ("KiB", "MiB", "GiB", "B"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    raise ValueError(f"unknown memory figure {text!r}")


# ----------------------------------------------------------------------------------------------------
# Report


def service_table(report: Report, service: str) -> list[str]:
    cells = [c for c in report.cells if c.service == service]
    route_names = PLANS[service][0]
    head = "| configuration | " + " | ".join(
        f"{r} req/s (32 conns) | {r} p95 ms (32) | {r} p50 ms (1 conn)" for r in route_names
    )
    rows = [
        head + " | vs shipped | memory per worker PSS (RSS) MiB | whole service PSS MiB "
        "| ready s (every worker) | other load (cores) |",
        "| --- | "
        + " | ".join("---: | ---: | ---:" for _ in route_names)
        + " | ---: | ---: | ---: | ---: | ---: |",
    ]
    shipped = next((c for c in cells if c.config == SHIPPED[service]), None)
    for cell in cells:
        figures = " | ".join(
            f"{cell.route_median(r, 32, 'rps'):.0f} | {cell.route_median(r, 32, 'p95_ms'):.1f} | "
            f"{cell.route_median(r, 1, 'p50_ms'):.2f}"
            for r in route_names
        )
        versus = f"{cell.throughput_vs(shipped):.2f}" if shipped else ""
        workers = cell.memory.workers_pss or [0.0]
        per_worker = f"{sum(workers) / len(workers):.0f} ({max(cell.memory.workers_rss, default=0):.0f})"
        label = cell.config.label
        marks = [
            m
            for m, on in (("picked", cell.config == report.picks.get(service)), ("shipped", cell is shipped))
            if on
        ]
        if marks:
            label += f" **({', '.join(marks)})**"
        rows.append(
            f"| {label} | {figures} | {versus} | {per_worker} | {cell.memory.total_pss:.0f} | "
            f"{cell.first_ready_s:.1f} ({cell.all_ready_s:.1f}) | {cell.other_load():.2f} |"
        )
    return rows


def latency_notes(report: Report) -> list[str]:
    """Where another configuration answers a lone request clearly faster than the pick (light traffic)."""
    notes = []
    for service, config in report.picks.items():
        cells = [c for c in report.cells if c.service == service]
        picked = next(c for c in cells if c.config == config)
        fastest = min(cells, key=lambda c: c.mean(1, "p50_ms"))
        if fastest.mean(1, "p50_ms") < 0.9 * picked.mean(1, "p50_ms"):
            settings = " ".join(f"{k}={v}" for k, v in fastest.config.env().items())
            notes.append(
                f"- {service}: {fastest.config.label} answers a lone request faster "
                f"(p50 {fastest.mean(1, 'p50_ms'):.2f} vs {picked.mean(1, 'p50_ms'):.2f} ms at 1 connection) "
                f"but serves {fastest.throughput_vs(picked):.2f}x the picked throughput under load: "
                f"`{settings}` suits light, latency-bound traffic."
            )
    return notes or ["- No configuration answers a lone request more than 10% faster than the pick."]


def write_plot(report: Report, path: Path) -> None:
    panels = []
    for service in dict.fromkeys(c.service for c in report.cells):
        cells = [c for c in report.cells if c.service == service]
        reference = next((c for c in cells if c.config == SHIPPED[service]), cells[0])
        panels.append(
            md.BarPanel(
                title_top=f"{service}: req/s at 32 conns vs shipped",
                title_bottom=f"{service}: memory (PSS MiB)",
                labels=[c.config.label.replace(" x ", "\nx ") for c in cells],
                top=[c.throughput_vs(reference) for c in cells],
                bottom=[c.memory.total_pss for c in cells],
                colors=["tab:green" if c.config == report.picks.get(service) else "tab:blue" for c in cells],
                reference_line=1.0,
            )
        )
    md.plot_bar_grid(path, panels, "Gunicorn workers x intra-op threads on this machine (green: picked)")


def write_report(report: Report, out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(asdict(report), indent=2))
    write_plot(report, out_dir / "img" / "workers.png")
    m = report.machine
    lines = [
        "# Workers, threads and memory",
        "",
        f"Generated by `python -m bench.workers` (`make bench-workers`) on {report.started}. All on one "
        "machine; the configurations of a service were measured alternately, so **read the ratios**.",
        "",
        f"- CPU: {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable), "
        f"{m['memory_gib']} GiB RAM, Python {m['python']}; commit {m['git']}. Load average before: "
        f"{report.load_before}; after: {report.load_after}.",
        f"- Load: {m['wrk']}, {report.duration_s:g} s per point, {report.rounds} round(s)"
        + (f", pooled from {len(report.pooled)} runs ({'; '.join(report.pooled)})" if report.pooled else "")
        + "; figures are the medians over rounds. Every configuration runs alone on the machine's cores "
        "(with wrk).",
        "- *workers*: Gunicorn's Uvicorn workers (`WEB_CONCURRENCY`); *threads*: the model's intra-op "
        "threads per worker (`TORCH_THREADS`, for torch or ONNX Runtime). Uvicorn workers have no request "
        "threads; tabular stays at one OpenMP thread per worker.",
        "- *memory*: after the load, per worker and for the whole Gunicorn tree (master + workers); PSS "
        "splits shared pages between the processes sharing them, so it adds up. *ready*: process start "
        "to the first 200 from `/health/ready`, and (in brackets) until every worker has loaded its models.",
        "- *vs shipped*: throughput at 32 connections against the shipped configuration (the geometric "
        "mean over the service's routes). *other load*: cores that processes outside the benchmark used "
        "while the configuration was measured.",
        f"- *picked*: the highest throughput at 32 connections; among configurations within "
        f"{1 - NEAR_BEST:.0%} of it, the one using the least memory. *shipped*: compose.yaml's default.",
        "",
        "## Picks",
        "",
        "| service | picked | shipped in compose.yaml | picked vs shipped, req/s at 32 conns |",
        "| --- | --- | --- | ---: |",
    ]
    for service, config in report.picks.items():
        cells = {c.config: c for c in report.cells if c.service == service}
        shipped = cells.get(SHIPPED[service])
        ratio = f"{cells[config].throughput_vs(shipped):.2f}" if shipped else ""
        lines.append(f"| {service} | {config.label} | {SHIPPED[service].label} | {ratio} |")
    lines += ["", *latency_notes(report), "", "![workers](img/workers.png)", ""]
    for service in dict.fromkeys(c.service for c in report.cells):
        title = "gateway (iris route, the services behind it as shipped)" if service == "gateway" else service
        lines += [f"## {title}", "", *service_table(report, service), ""]
    if report.stack_memory:
        total_pss = sum(m.total_pss for m in report.stack_memory.values())
        total_rss = sum(m.total_rss for m in report.stack_memory.values())
        lines += [
            "## The whole stack with the picks",
            "",
            "The four processes started together (with the picks of the run that measured them), after 20 "
            "requests per route through the gateway (Redis, which the compose stack adds, is not included: "
            "a few MiB).",
            "",
            "| process | configuration | processes | PSS MiB | RSS MiB |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for name, memory in report.stack_memory.items():
            lines.append(
                f"| {SERVICES[name][0]} | {report.stack_configs[name].label} | "
                f"{1 + len(memory.workers_pss)} | {memory.total_pss:.0f} | {memory.total_rss:.0f} |"
            )
        lines += [f"| **total** | | | **{total_pss:.0f}** | {total_rss:.0f} |", ""]
        if report.stack_configs != report.picks:
            by_config = {(c.service, c.config): c for c in report.cells}
            estimate = sum(by_config[pair].memory.total_pss for pair in report.picks.items())
            lines += [
                f"With the picks above, from each service's own row: about {estimate:.0f} MiB PSS in all.",
                "",
            ]
    if isinstance(report.compose_memory, dict):
        lines += [
            "## The compose stack as shipped",
            "",
            "`docker compose up` with compose.yaml's defaults, after 20 requests per route through the "
            "gateway; memory per container from `docker stats` (cgroup usage less page cache).",
            "",
            "| container | MiB |",
            "| --- | ---: |",
            *(f"| {name} | {mib:.0f} |" for name, mib in sorted(report.compose_memory.items())),
            f"| **total** | **{sum(report.compose_memory.values()):.0f}** |",
            "",
        ]
    elif report.compose_memory:
        lines += [f"The compose stack was not measured: {report.compose_memory}.", ""]
    lines += [
        "Raw figures: `results.json` next to the report in `results/workers-<timestamp>/` (not committed).",
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(lines))


def publish(out_dir: Path, full_run: bool) -> None:
    md.publish(out_dir, "workers.md", ["img/workers.png"], full_run=full_run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 round, 3 s a point; the report stays in results/"
    )
    parser.add_argument("--rounds", type=int, help="rounds of every point (default 3, quick 1)")
    parser.add_argument("--duration", type=int, help="seconds per point (default 5, quick 3)")
    parser.add_argument("--services", default=",".join(PLANS), help=f"comma list of {', '.join(PLANS)}")
    parser.add_argument("--out", help="output folder (default results/workers-<timestamp>)")
    parser.add_argument("--no-compose", action="store_true", help="skip the compose stack's memory")
    parser.add_argument(
        "--render",
        nargs="+",
        metavar="RESULTS_JSON",
        help="only write the report from earlier runs' results.json, their rounds pooled (memory and "
        "cold start from the last one)",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not copy the report to docs/")
    args = parser.parse_args(argv)
    if args.render:
        report = pooled([load_report(Path(path)) for path in args.render])
        out_dir = Path(args.out or Path(args.render[-1]).parent)
        (out_dir / "img").mkdir(parents=True, exist_ok=True)
        write_report(report, out_dir)
        publish(out_dir, full_run=not (report.quick or args.no_docs))
        return 0
    wrk_path, wrk_version = require_wrk()
    report = Report(
        started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        rounds=args.rounds or (1 if args.quick else 3),
        duration_s=args.duration or (3 if args.quick else 5),
        machine=machine_info(wrk_version),
        load_before=load_average(),
        quick=args.quick,
    )
    out_dir = out_dir_for("workers", args.out)
    routes = {r.name: r for r in make_routes()}
    services = [s.strip() for s in args.services.split(",") if s.strip()]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="modelgate-workers-") as tmp:
        run_dir = Path(tmp)
        wrk = Wrk(wrk_path, wrk_version, run_dir)
        for service in services:
            bench_service(service, wrk, run_dir, routes, report, warmup=1 if args.quick else 2)
            report.picks[service] = pick([c for c in report.cells if c.service == service])
            print(f"    picked for {service}: {report.picks[service].label}", flush=True)
        if set(services) == set(PLANS):
            print("==> the whole stack with the picks", flush=True)
            stack_dir = run_dir / "stack"
            stack_dir.mkdir()
            report.stack_memory = whole_stack_memory(stack_dir, report.picks, routes)
            report.stack_configs = dict(report.picks)
    if not args.no_compose:
        print("==> the compose stack as shipped (docker stats)", flush=True)
        report.compose_memory = compose_memory(routes)
        print(f"    {report.compose_memory}", flush=True)
    report.load_after = load_average()
    write_report(report, out_dir)
    publish(out_dir, full_run=not (args.quick or args.no_docs))
    print(f"==> {time.monotonic() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
