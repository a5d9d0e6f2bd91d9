"""Measure the two "Performance" levers on this machine, in one run: ONNX Runtime vs torch, and batching;
and how close each model service comes to its physical limit.

    python -m bench.runtime                                   # ~10 minutes
    python -m bench.runtime --quick                           # ~4 minutes: 1 round of 3 s, modes off and on
    python -m bench.runtime --services nlp --rounds 2 --skip-latency --skip-limit   # ~1 minute

(a) Model call latency, in this process: each built-in model's runtime (`models/<name>/1`, or under
    MODEL_REPOSITORY) on both backends, torch and ONNX, with a batch of 1 and of 32 prepared inputs,
    the backends interleaved call by call; then ONNX's cost per input against the batch size (1 to
    32), which bounds what batching can save inside the model.
(b) Batching under load: per service, one Gunicorn process (one worker, the service's defaults) per
    mode: BATCHING=false, =true, =true with BATCH_MAX_WAIT_MS=5, and =false/=true with RUNTIME=torch
    (the runtime choice under load, and batching's gain on torch). Load windows of 32 concurrent
    closed-loop clients (aiohttp, in this process, straight to the service port) alternate between
    them; after each, one client alone (what batching costs when idle). Reports throughput, p50/p95,
    the mean model batch size (the service's /metrics) and the load generator's own CPU use.

(c) The physical limit, per service (vision, nlp): the throughput it serves at 32 connections (wrk,
    direct to one Gunicorn worker with the service's defaults, no gateway) against the same pipeline run
    in this process at full speed: the runtime built as the service builds it (its settings: backend,
    threads, and for vision the pixel budget), decode/tokenise + preprocess + model + postprocess on the
    same request, batched as served (the mean batch the service's metrics saw under that load: its
    batch policy at work; 1 where batching is off). The ratio is the share of the machine's model speed
    the serving stack delivers; where it falls short of 0.8, a py-spy profile of the service worker under
    the same load says where the time goes.

The machine is shared and its load moves every figure: read the ratios of interleaved measurements,
not the absolute ones. Prints markdown tables and writes results/runtime-<timestamp>/ (report.md,
img/runtime.png, the profiles); docs/runtime.md is a copy of a full run's report, made by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# As the services' Gunicorn config does, before torch is imported: idle threads sleep, never spin.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from bench import report as md
from bench.harness import (
    ASSETS,
    REPO,
    SENTENCE,
    Target,
    Wrk,
    make_routes,
    out_dir_for,
    pids_of,
    profile_under_load,
    verify,
)
from bench.tools import require_wrk
from devstack import LocalStack, free_port
from modelgate_core.repository.runtime import ModelContext, ModelRuntime, Tensors

CLIENTS = 32
LIMIT_GOAL = 0.8  # served throughput / the in-process pipeline's, at 32 connections
# Tweet-like texts of different lengths; batches cycle through them, as real traffic would mix them.
TEXTS = (
    "I love this product, it works perfectly!",
    "Worst flight ever: delayed three hours, no food, and the crew was rude about it.",
    "ok",
    "The delivery was quick and the headphones sound great, I would happily buy from them again.",
    "Not sure how I feel about the new update, some things are better and some are a lot worse.",
    "Thanks for nothing @airline, my bag is lost again",
    "What a beautiful morning at the festival, the music was amazing and everyone was so friendly!",
    "meh",
)


def repository_dir() -> Path:
    """The model repository the benchmark loads and serves, as the services find it."""
    return Path(os.environ.get("MODEL_REPOSITORY") or REPO / "models")


def default_threads() -> int:
    """What one service worker gets by default: every core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --- (a) model latency -------------------------------------------------------------------------------


@dataclass
class Latency:
    model: str
    runtime: str
    batch: int
    times: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1000


# model -> runtime ("torch" or "onnx") -> (the loaded runtime, 32 prepared inputs as one tensor dict)
Loaded = dict[str, dict[str, tuple[ModelRuntime, Tensors]]]


def context_of(name: str) -> ModelContext:
    folder = repository_dir() / name / "1"
    return ModelContext.of_folder(name, "1", folder)


def load_runtimes(threads: int) -> Loaded:
    """Both built-in neural models on both backends, each with 32 inputs through its `preprocess`."""
    from nlp_service.text_runtime import TextClassificationRuntime
    from vision_service.image_runtime import ImageClassificationRuntime

    coffee = (ASSETS / "coffee.jpg").read_bytes()
    uploads: dict[str, Tensors] = {
        "imagenet": {"image": np.array([coffee] * 32, dtype=object)},
        "sentiment": {"text": np.array([TEXTS[i % len(TEXTS)].encode() for i in range(32)], dtype=object)},
    }
    loaded: Loaded = {"imagenet": {}, "sentiment": {}}
    for backend in ("torch", "onnx"):
        runtimes: dict[str, ModelRuntime] = {
            "imagenet": ImageClassificationRuntime(
                context_of("imagenet"), backend=backend, threads=threads, max_pixels=10**8
            ),
            "sentiment": TextClassificationRuntime(context_of("sentiment"), backend=backend, threads=threads),
        }
        for model, runtime in runtimes.items():
            runtime.load()
            answered = runtime.describe().get("backend")
            if answered != backend:
                # A folder without the ONNX graph falls back to torch: the comparison would be void.
                raise SystemExit(f"{model}: asked for the {backend} backend, {answered} loaded")
            loaded[model][backend] = (runtime, runtime.preprocess(uploads[model], {}))
    return loaded


def window(inputs: Tensors, batch: int, rep: int) -> Tensors:
    """`batch` inputs starting at a different one each repetition (the texts differ in length)."""
    rows = len(next(iter(inputs.values())))
    chosen = (np.arange(batch) + rep) % rows
    return {name: array[chosen] for name, array in inputs.items()}


def measure_latency(loaded: Loaded, runtimes: Sequence[str], reps: dict[int, int]) -> list[Latency]:
    """Median time of one predict call per model, runtime and batch size, runtimes interleaved."""
    results: list[Latency] = []
    for model, by_runtime in loaded.items():
        for batch, count in reps.items():
            cells = {rt: Latency(model, rt, batch) for rt in runtimes}
            for rt in runtimes:
                for rep in range(3):  # warm-up: lazy allocations, kernel selection
                    by_runtime[rt][0].predict(window(by_runtime[rt][1], batch, rep))
            for rep in range(count):
                for rt in runtimes if rep % 2 == 0 else list(reversed(runtimes)):
                    runtime, inputs = by_runtime[rt]
                    chosen = window(inputs, batch, rep)
                    started = time.perf_counter()
                    runtime.predict(chosen)
                    cells[rt].times.append(time.perf_counter() - started)
            results.extend(cells.values())
            line = ", ".join(f"{c.runtime} {c.median_ms:.1f} ms" for c in cells.values())
            print(f"  {model} batch {batch}: {line}", flush=True)
    return results


def latency_table(results: Sequence[Latency]) -> str:
    rows = [
        "| model | batch | torch ms/call | onnx ms/call | torch ms/input | onnx ms/input | onnx speed-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    keyed = {(r.model, r.runtime, r.batch): r for r in results}
    for model, batch in dict.fromkeys((r.model, r.batch) for r in results):
        t, o = keyed[(model, "torch", batch)].median_ms, keyed[(model, "onnx", batch)].median_ms
        rows.append(
            f"| {model} | {batch} | {t:.1f} | {o:.1f} | {t / batch:.2f} | {o / batch:.2f} | {t / o:.2f}x |"
        )
    return "\n".join(rows)


def sweep_table(results: Sequence[Latency]) -> str:
    """ms per input against batch size: the most batching can save inside the model."""
    sizes = sorted({r.batch for r in results})
    rows = [
        "| model (onnx) | " + " | ".join(f"batch {b}" for b in sizes) + " | best vs batch 1 |",
        "| --- | " + " | ".join("---:" for _ in sizes) + " | ---: |",
    ]
    for model in dict.fromkeys(r.model for r in results):
        per_input = {r.batch: r.median_ms / r.batch for r in results if r.model == model}
        best = min(per_input.values())
        cells = " | ".join(f"{per_input[b]:.2f}" for b in sizes)
        rows.append(f"| {model} | {cells} | {per_input[1] / best:.2f}x |")
    return "\n".join(rows)


# --- (b) batching under load -------------------------------------------------------------------------

# Service settings per mode; everything else is the service's default (RUNTIME too, unless --runtime).
MODES = {
    "off": {"BATCHING": "false"},
    "on": {"BATCHING": "true"},
    "on-wait5": {"BATCHING": "true", "BATCH_MAX_WAIT_MS": "5"},
    "torch-off": {"BATCHING": "false", "RUNTIME": "torch"},
    "torch-on": {"BATCHING": "true", "RUNTIME": "torch"},
}


def baseline_of(mode: str) -> str:
    """The mode a mode's gain is measured against: batching off on the same runtime."""
    return "torch-off" if mode.startswith("torch-") else "off"


MODEL_OF = {"nlp": "sentiment", "vision": "imagenet"}


@dataclass
class LoadRun:
    service: str
    mode: str
    round: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    client_cpu: float = 0.0  # this process's CPU seconds per wall second during the window
    mean_batch: float = 0.0
    lone: list[float] = field(default_factory=list)  # latencies with a single client

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float, lone: bool = False) -> float:
        ordered = sorted(self.lone if lone else self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")

    def describe(self) -> str:
        return (
            f"{self.service} [{self.mode}] round {self.round + 1}: {self.throughput:.1f} req/s, "
            f"p50 {self.percentile(0.5):.0f} ms, p95 {self.percentile(0.95):.0f} ms, mean batch "
            f"{self.mean_batch:.1f}, errors {self.errors}, load-gen CPU {self.client_cpu:.0%}; "
            f"1 client: p50 {self.percentile(0.5, lone=True):.1f} ms"
        )


def request_factory(service: str) -> tuple[str, Callable[[int], dict[str, Any]]]:
    """The route and a function making the i-th request's aiohttp keyword arguments."""
    import aiohttp

    if service == "nlp":
        return "/v1/nlp/sentiment", lambda i: {"json": {"text": TEXTS[i % len(TEXTS)]}}
    photo = (ASSETS / "coffee.jpg").read_bytes()

    def upload(_: int) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("file", photo, filename="coffee.jpg", content_type="image/jpeg")
        return {"data": form}

    return "/v1/vision/classify", upload


async def closed_loop(
    url: str, make: Callable[[int], dict[str, Any]], clients: int, seconds: float, run: LoadRun | None
) -> None:
    """`clients` tasks, each sending its next request as soon as the last one is answered; records
    into `run.latencies` (32 clients) or `run.lone` (one client), or nowhere (warm-up)."""
    import aiohttp

    deadline = time.perf_counter() + seconds
    counter = iter(range(10**9))
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with session.post(url, **make(next(counter))) as response:
                    await response.read()
                    ok = response.status == 200
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    if run is None:
        return
    run.errors += errors
    if clients == 1:
        run.lone = latencies
    else:
        run.latencies, run.seconds = latencies, elapsed
        run.client_cpu = (time.process_time() - cpu) / elapsed


def batch_stats(base: str, model: str) -> tuple[float, float]:
    """(count, sum) of the service's model batch size histogram."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {"count": 0.0, "sum": 0.0}
    for line in text.splitlines():
        for kind in values:
            if line.startswith(f'modelgate_model_batch_size_{kind}{{model="{model}"}}'):
                values[kind] = float(line.split()[-1])
    return values["count"], values["sum"]


def measure_load(
    services: Sequence[str], modes: Sequence[str], rounds: int, seconds: float, runtime: str | None
) -> list[LoadRun]:
    """Per service: one Gunicorn process (one worker) per mode, all started up front (an idle one costs
    nothing), then load windows alternated between them `rounds` times in a rotating order, so that
    the drift of a shared machine hits every mode alike. After each loaded window, one client alone."""
    runs: list[LoadRun] = []
    with tempfile.TemporaryDirectory(prefix="modelgate-bench-") as tmp:
        for service in services:
            route, make = request_factory(service)
            stacks: dict[str, LocalStack] = {}
            try:
                for mode in modes:
                    # Otherwise the production defaults, JSON access logs included (to run_dir).
                    env = {"RUNTIME": runtime} if runtime else {}
                    env.update(MODES[mode])  # a mode's own RUNTIME (torch-on) wins
                    run_dir = Path(tmp) / f"{service}-{mode}"
                    run_dir.mkdir()
                    ports = {name: free_port() for name in ("tabular", "vision", "nlp", "gateway")}
                    stacks[mode] = LocalStack(ports, run_dir, repository=repository_dir(), extra_env=env)
                    stacks[mode].start(service)
                for stack in stacks.values():
                    stack.wait_ready(service)
                    asyncio.run(closed_loop(stack.url(service) + route, make, CLIENTS, 3.0, None))  # warm-up
                for rnd in range(rounds):
                    for mode in list(modes[rnd % len(modes) :]) + list(modes[: rnd % len(modes)]):
                        base = stacks[mode].url(service)
                        run = LoadRun(service, mode, rnd)
                        before = batch_stats(base, MODEL_OF[service])
                        asyncio.run(closed_loop(base + route, make, CLIENTS, seconds, run))
                        after = batch_stats(base, MODEL_OF[service])
                        calls = after[0] - before[0]
                        run.mean_batch = (after[1] - before[1]) / calls if calls else 0.0
                        asyncio.run(closed_loop(base + route, make, 1, max(2.0, seconds / 3), run))
                        runs.append(run)
                        print(f"  {run.describe()}", flush=True)
            finally:
                for stack in stacks.values():
                    stack.stop(service)
    return runs


def merged(runs: Sequence[LoadRun], service: str, mode: str) -> LoadRun:
    """All rounds of one configuration as one run (latencies pooled, throughput over the total time)."""
    chosen = [r for r in runs if r.service == service and r.mode == mode]
    total = LoadRun(service, mode, -1)
    for r in chosen:
        total.latencies += r.latencies
        total.lone += r.lone
        total.seconds += r.seconds
        total.errors += r.errors
    total.client_cpu = statistics.mean(r.client_cpu for r in chosen)
    total.mean_batch = statistics.mean(r.mean_batch for r in chosen)
    return total


def load_table(runs: Sequence[LoadRun]) -> str:
    rows = [
        f"| service | batching | req/s ({CLIENTS} clients) | vs off, same runtime | p50 ms | p95 ms "
        "| mean batch | errors | load-gen CPU | p50 ms (1 client) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for service in dict.fromkeys(r.service for r in runs):
        modes = list(dict.fromkeys(r.mode for r in runs if r.service == service))
        cells = {mode: merged(runs, service, mode) for mode in modes}
        for mode, r in cells.items():
            off = cells.get(baseline_of(mode))
            gain = f"{r.throughput / off.throughput:.2f}x" if off and off.throughput else ""
            rows.append(
                f"| {service} | {mode} | {r.throughput:.1f} | {gain} | {r.percentile(0.5):.0f} | "
                f"{r.percentile(0.95):.0f} | {r.mean_batch:.1f} | {r.errors} | {r.client_cpu:.0%} | "
                f"{r.percentile(0.5, lone=True):.1f} |"
            )
    return "\n".join(rows)


BATCHING_GOAL = 3.0  # the issue's target: throughput with batching on / off at 32 clients


def goal_lines(runs: Sequence[LoadRun], sweep: Sequence[Latency]) -> str:
    """Per service and runtime: batching's gain against the goal, p95 on vs off, and (ONNX) the bound
    that the model call's own per-input saving puts on that gain."""
    lines = []
    for service in dict.fromkeys(r.service for r in runs):
        modes = {r.mode for r in runs if r.service == service}
        for on in ("on", "torch-on"):
            off = baseline_of(on)
            runtime = MODES[on].get("RUNTIME", "onnx")
            if not {on, off} <= modes:
                continue
            a, b = merged(runs, service, on), merged(runs, service, off)
            gain = a.throughput / b.throughput
            verdict = "met" if gain >= BATCHING_GOAL else "**not met**"
            p95_on, p95_off = a.percentile(0.95), b.percentile(0.95)
            line = (
                f"- {service}, {runtime}: batching gives {gain:.2f}x the throughput (goal >= "
                f"{BATCHING_GOAL:g}x: {verdict}); p95 {p95_off:.0f} -> {p95_on:.0f} ms "
                f"({'no worse' if p95_on <= p95_off else 'worse'})"
            )
            per_input = {r.batch: r.median_ms / r.batch for r in sweep if r.model == MODEL_OF[service]}
            if runtime == "onnx" and per_input.get(1):
                bound = per_input[1] / min(per_input.values())
                line += (
                    f"; the model call itself costs at most {bound:.2f}x less per input in a batch "
                    "(table a), which bounds the gain"
                )
            lines.append(line + ".")
    return "\n".join(lines)


# --- (c) the physical limit -------------------------------------------------------------------------

ROUTE_OF = {"vision": "classify", "nlp": "sentiment"}


@dataclass
class Limit:
    """One service: what it serves at 32 connections, and what its pipeline does in this process."""

    service: str
    backend: str
    threads: int
    batching: str  # the batch policy, as text
    served_rps: float = 0.0
    served_p50_ms: float = 0.0
    served_errors: int = 0
    served_mean_batch: float = 1.0
    served_cpu_ms: float = 0.0  # the service's CPU per answered request
    batch: int = 1  # the in-process batch: the served mean batch, rounded
    inprocess_rps: float = 0.0  # inputs per second at `batch`
    stages_ms: dict[str, float] = field(default_factory=dict)  # stage -> ms per input, in process
    full_batch: int = 1  # the largest batch the policy allows at 32 connections
    full_batch_rps: float = 0.0
    profile: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.served_rps / self.inprocess_rps if self.inprocess_rps else float("nan")


def service_settings(service: str) -> Any:
    """The service's own settings class, read from the environment as a worker reads it (one worker)."""
    os.environ.setdefault("WEB_CONCURRENCY", "1")
    if service == "vision":
        from vision_service.app import VisionSettings

        return VisionSettings()
    from nlp_service.app import NlpSettings

    return NlpSettings()


def service_runtime(
    service: str, settings: Any
) -> tuple[ModelRuntime, Callable[[int], Tensors], dict[str, Any]]:
    """The runtime as the service's create_app builds it, loaded; a function making `n` raw inputs (the
    request's own bytes), and the request's parameters."""
    if service == "vision":
        from vision_service.decode import DecodeBudget
        from vision_service.image_runtime import DECODES_AT_ONCE, ImageClassificationRuntime

        image = (ASSETS / "coffee.jpg").read_bytes()
        runtime: ModelRuntime = ImageClassificationRuntime(
            context_of("imagenet"),
            backend=settings.runtime,
            threads=settings.torch_threads,
            max_pixels=settings.vision_max_image_pixels,
            decode_budget=DecodeBudget(DECODES_AT_ONCE * settings.vision_max_image_pixels),
        )
        runtime.load()
        return runtime, lambda n: {"image": np.array([image] * n, dtype=object)}, {"top_k": 5}
    from nlp_service.text_runtime import TextClassificationRuntime

    runtime = TextClassificationRuntime(
        context_of("sentiment"),
        backend=settings.runtime,
        threads=settings.torch_threads,
        truncate=settings.nlp_truncate,
    )
    runtime.load()
    return runtime, lambda n: {"text": np.array([SENTENCE.encode()] * n, dtype=object)}, {}


def pipeline_rate(
    runtime: ModelRuntime,
    make: Callable[[int], Tensors],
    parameters: dict[str, Any],
    batch: int,
    seconds: float,
) -> tuple[float, dict[str, float]]:
    """Inputs per second through preprocess + predict + postprocess at `batch`, back to back for `seconds`,
    and each stage's ms per input."""
    inputs = make(batch)
    for _ in range(3):  # warm-up: lazy allocations, kernel selection
        runtime.postprocess(runtime.predict(runtime.preprocess(inputs, parameters)), parameters)
    spent = {"preprocess": 0.0, "predict": 0.0, "postprocess": 0.0}
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        prepared = runtime.preprocess(inputs, parameters)
        t1 = time.perf_counter()
        outputs = runtime.predict(prepared)
        t2 = time.perf_counter()
        runtime.postprocess(outputs, parameters)
        t3 = time.perf_counter()
        spent["preprocess"] += t1 - t0
        spent["predict"] += t2 - t1
        spent["postprocess"] += t3 - t2
        done += batch
    elapsed = time.perf_counter() - started
    return done / elapsed, {k: round(v * 1000 / done, 3) for k, v in spent.items()}


def measure_limit(
    services: Sequence[str], seconds: float, profile_seconds: float, out_dir: Path
) -> list[Limit]:
    """Per service: served throughput at 32 connections, a py-spy profile of its worker under that load,
    then (the service stopped, so the cores are this process's) the same pipeline in process."""
    wrk_path, wrk_version = require_wrk()
    routes = {r.name: r for r in make_routes()}
    limits: list[Limit] = []
    with tempfile.TemporaryDirectory(prefix="modelgate-limit-") as tmp:
        wrk = Wrk(wrk_path, wrk_version, Path(tmp))
        for service in services:
            settings = service_settings(service)
            policy = settings.batch_policy()
            limit = Limit(
                service,
                settings.runtime,
                settings.torch_threads,
                f"max {policy.max_batch_size}, wait {policy.max_wait_ms:g} ms" if policy else "off",
            )
            route = routes[ROUTE_OF[service]]
            run_dir = Path(tmp) / service
            run_dir.mkdir()
            ports = {name: free_port() for name in ("tabular", "vision", "nlp", "gateway")}
            stack = LocalStack(ports, run_dir, repository=repository_dir(), workers=1)
            try:
                stack.start(service)
                stack.wait_ready(service)
                target = Target(
                    f"{service} direct", "direct", stack.url(service), pids=pids_of(stack, service)
                )
                verify(target, route)
                wrk.run(target, route, 8, 2)
                before = batch_stats(stack.url(service), MODEL_OF[service])
                point = wrk.measure(target, route, CLIENTS, seconds, {service: target.pids})
                after = batch_stats(stack.url(service), MODEL_OF[service])
                calls = after[0] - before[0]
                limit.served_mean_batch = (after[1] - before[1]) / calls if calls else 1.0
                limit.served_rps, limit.served_p50_ms = point.rps, point.p50_ms
                limit.served_errors, limit.served_cpu_ms = point.errors, point.cpu_ms_per_req[service]
                if profile_seconds:
                    worker = pids_of(stack, service)()[-1]
                    raw = out_dir / f"profile-{service}.txt"
                    limit.profile = profile_under_load(
                        wrk, target, route, worker, raw, profile_seconds, CLIENTS
                    )
            finally:
                stack.stop_all()
            runtime, make, parameters = service_runtime(service, settings)
            limit.batch = max(1, round(limit.served_mean_batch))
            limit.inprocess_rps, limit.stages_ms = pipeline_rate(
                runtime, make, parameters, limit.batch, seconds
            )
            limit.full_batch = min(CLIENTS, policy.max_batch_size) if policy else 1
            if limit.full_batch != limit.batch:
                limit.full_batch_rps, _ = pipeline_rate(runtime, make, parameters, limit.full_batch, seconds)
            else:
                limit.full_batch_rps = limit.inprocess_rps
            runtime.unload()
            print(
                f"  {service}: served {limit.served_rps:.1f} req/s "
                f"(mean batch {limit.served_mean_batch:.1f}), "
                f"in process {limit.inprocess_rps:.1f}/s at batch {limit.batch}: ratio {limit.ratio:.2f}",
                flush=True,
            )
            limits.append(limit)
    return limits


def limit_section(limits: Sequence[Limit]) -> str:
    rows = md.table(
        (
            "service",
            "runtime, threads",
            "batching",
            f"served req/s ({CLIENTS} conns)",
            "served mean batch",
            "in-process inputs/s (at that batch)",
            "served / in process",
            f"goal ≥ {LIMIT_GOAL}",
            "in process at the policy's full batch",
            "service CPU ms/req",
            "in process ms/input: preprocess, predict, postprocess",
        ),
        "lllrrrrlrrl",
        (
            (
                lim.service,
                f"{lim.backend}, {lim.threads}",
                lim.batching,
                f"{lim.served_rps:.1f}" + (f" ({lim.served_errors} errors)" if lim.served_errors else ""),
                f"{lim.served_mean_batch:.1f}",
                f"{lim.inprocess_rps:.1f} (batch {lim.batch})",
                f"{lim.ratio:.2f}",
                md.verdict(lim.ratio >= LIMIT_GOAL),
                f"{lim.full_batch_rps:.1f} (batch {lim.full_batch})",
                f"{lim.served_cpu_ms:.1f}",
                ", ".join(f"{v:.2f}" for v in lim.stages_ms.values()),
            )
            for lim in limits
        ),
    )
    lines = [
        "## (c) The physical limit: served throughput against the pipeline in process",
        "",
        f"Served: wrk, {CLIENTS} connections, straight to one Gunicorn worker with the service's defaults "
        "(the same request as `make bench`). In process: the runtime built from the service's own settings, "
        "decode/tokenise + preprocess + model + postprocess on that request, back to back, at the batch the "
        "service formed under that load (its metrics), with the service stopped. The ratio is the share of "
        "the pipeline's own speed that the serving stack delivers. The in-process loop runs one call at a "
        "time; a service that overlaps decoding with the model, or runs two batches at once, can exceed "
        "it (a ratio above 1).",
        "",
        *rows,
        "",
    ]
    for lim in limits:
        if lim.ratio < LIMIT_GOAL and lim.profile:
            lines += [
                f"Where {lim.service}-service's time goes under that load (py-spy of its worker, share of "
                f"samples; raw stacks in `profile-{lim.service}.txt`):",
                "",
                *md.profile_table(lim.profile),
                "",
            ]
    return "\n".join(lines)


# --- report ------------------------------------------------------------------------------------------


def plot(latency: Sequence[Latency], runs: Sequence[LoadRun], path: Path) -> None:
    """Left: ms per input, torch vs ONNX, batch 1 and 32. Right: throughput per batching mode."""
    panels = []
    if latency:
        groups = list(dict.fromkeys((r.model, r.batch) for r in latency))
        keyed = {(r.model, r.runtime, r.batch): r.median_ms / r.batch for r in latency}
        panels.append(
            md.GroupedBars(
                title="Model call: torch vs ONNX Runtime",
                ylabel="ms per input (median, log scale)",
                groups=[f"{m}\nbatch {b}" for m, b in groups],
                series={rt: [keyed[(m, rt, b)] for m, b in groups] for rt in ("torch", "onnx")},
                log=True,
            )
        )
    if runs:
        services = list(dict.fromkeys(r.service for r in runs))
        modes = list(dict.fromkeys(r.mode for r in runs))
        cells = {mode: [merged(runs, s, mode) for s in services] for mode in modes}
        panels.append(
            md.GroupedBars(
                title=f"{CLIENTS} concurrent clients, one Gunicorn worker",
                ylabel="requests / s (p95 ms on the bars)",
                groups=services,
                series={f"batching {mode}": [c.throughput for c in cells[mode]] for mode in modes},
                annotations={
                    f"batching {mode}": [f"p95 {c.percentile(0.95):.0f}" for c in cells[mode]]
                    for mode in modes
                },
            )
        )
    if panels:
        md.plot_grouped_bars(path, panels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 round of 3 s, modes off and on, fewer model calls (~4 minutes)",
    )
    parser.add_argument("--services", default="nlp,vision", help="services for the load test and the limit")
    parser.add_argument(
        "--modes", help=f"batching modes, of: {', '.join(MODES)} (default all; quick: off,on)"
    )
    parser.add_argument(
        "--rounds", type=int, help="load windows of every mode per service (default 6, quick 1)"
    )
    parser.add_argument("--seconds", type=float, help="seconds per load window (default 6, quick 3)")
    parser.add_argument("--runtime", choices=("onnx", "torch"), help="RUNTIME under load (default: theirs)")
    parser.add_argument("--threads", type=int, default=default_threads(), help="intra-op threads for (a)")
    parser.add_argument(
        "--profile", type=float, metavar="SECONDS", help="py-spy seconds in (c) (default 10, quick 5)"
    )
    parser.add_argument("--out", help="output folder (default results/runtime-<timestamp>)")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-limit", action="store_true")
    args = parser.parse_args(argv)
    args.modes = args.modes or ("off,on" if args.quick else ",".join(MODES))
    args.rounds = args.rounds or (1 if args.quick else 6)
    args.seconds = args.seconds or (3.0 if args.quick else 6.0)
    if args.profile is None:
        args.profile = 5.0 if args.quick else 10.0
    out_dir = out_dir_for("runtime", args.out)

    header = (
        f"{platform.machine()}, {default_threads()} usable cores (shared with other work; load average "
        f"{os.getloadavg()[0]:.1f} at the start), Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(header, flush=True)
    command = "python -m bench.runtime" + (" --quick" if args.quick else "")
    sections = [
        f"# Runtime and batching benchmark\n\n{header}. Read the ratios; absolute figures drift. Reproduce: "
        f"`make bench-runtime` (`{command}`, writes results/runtime-<timestamp>/).\n\n"
        "![torch vs ONNX Runtime, and batching under load](img/runtime.png)\n"
    ]
    latency: list[Latency] = []
    sweep: list[Latency] = []
    runs: list[LoadRun] = []
    services = [s.strip() for s in args.services.split(",") if s.strip()]
    if not args.skip_latency:
        import torch

        torch.set_num_threads(args.threads)
        print(f"(a) model latency, {args.threads} threads ...", flush=True)
        loaded = load_runtimes(args.threads)
        latency = measure_latency(loaded, ("torch", "onnx"), {1: 10, 32: 2} if args.quick else {1: 40, 32: 8})
        print("    onnx, per-input cost against batch size ...", flush=True)
        sizes = {1: 10, 8: 4, 32: 2} if args.quick else {1: 40, 2: 30, 4: 20, 8: 12, 16: 8, 32: 8}
        sweep = measure_latency(loaded, ("onnx",), sizes)
        for by_runtime in loaded.values():
            for runtime, _ in by_runtime.values():
                runtime.unload()
        sections.append(
            f"## (a) Model call latency, torch vs ONNX Runtime ({args.threads} intra-op threads)\n\n"
            "Median of interleaved `runtime.predict` calls (NLP includes tokenisation; vision starts "
            "from the preprocessed tensor).\n\n" + latency_table(latency) + "\n\n"
            "ONNX, ms per input against batch size: the most batching can save inside the model call.\n\n"
            + sweep_table(sweep)
            + "\n"
        )
    if not args.skip_load:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        print(f"(b) batching under load: {services} x {modes}, {args.rounds} round(s) ...", flush=True)
        runs = measure_load(services, modes, args.rounds, args.seconds, args.runtime)
        sections.append(
            f"## (b) Batching, {CLIENTS} concurrent clients, one Gunicorn worker "
            f"(runtime: {args.runtime or 'the default'})\n\n"
            f"One process per mode, {args.rounds} windows of {args.seconds:.0f} s each, alternated in a "
            "rotating order; latencies pooled. "
            "`on`: the service's batch settings with BATCHING=true; `on-wait5`: the same with "
            "BATCH_MAX_WAIT_MS=5; `torch-off`/`torch-on`: `off`/`on` with RUNTIME=torch. `vs off`: against "
            "batching off on the same runtime. `mean batch`: inputs per model call "
            "(service metrics). `load-gen CPU`: this load generator's share of one core (it runs on the "
            "same cores). `1 client`: one client after the load, for what batching costs when idle.\n\n"
            + load_table(runs)
            + "\n\n"
            + goal_lines(runs, sweep)
            + "\n"
        )
    if not args.skip_limit:
        print(f"(c) the physical limit: {services} ...", flush=True)
        limits = measure_limit(services, args.seconds * 2, args.profile, out_dir)
        sections.append(limit_section(limits))
    sections.append(f"Load average at the end: {os.getloadavg()[0]:.1f}.\n")
    report = "\n".join(sections)
    print("\n" + report)
    (out_dir / "report.md").write_text(report, encoding="utf-8")
    plot(latency, runs, out_dir / "img" / "runtime.png")
    md.publish(out_dir, "runtime.md", ["img/runtime.png"], full_run=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
