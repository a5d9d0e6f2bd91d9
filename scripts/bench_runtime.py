"""Measure the two "Performance" levers on this machine, in one run: ONNX Runtime vs torch, and batching.

    python scripts/bench_runtime.py                                   # ~7 minutes
    python scripts/bench_runtime.py --services nlp --rounds 2 --skip-latency   # ~1 minute

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

The machine is shared and its load moves every figure: read the ratios of interleaved measurements,
not the absolute ones. Prints markdown tables and writes results/runtime.md and results/runtime.png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
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

REPO = Path(__file__).resolve().parent.parent
for _path in ("core", "vision-service", "nlp-service", "scripts"):
    if str(REPO / _path) not in sys.path:
        sys.path.insert(0, str(REPO / _path))

import numpy as np  # noqa: E402

from devstack import LocalStack, free_port  # noqa: E402
from modelgate_core.repository.runtime import ModelContext, ModelRuntime, Tensors  # noqa: E402

ASSETS = REPO / "tests" / "assets"
RESULTS = REPO / "results"
CLIENTS = 32
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


# --- report ------------------------------------------------------------------------------------------


def plot(latency: Sequence[Latency], runs: Sequence[LoadRun], path: Path) -> None:
    """Left: ms per input, torch vs ONNX, batch 1 and 32. Right: throughput per batching mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = int(bool(latency)) + int(bool(runs))
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.5), squeeze=False)
    ax_iter = iter(axes[0])
    if latency:
        ax = next(ax_iter)
        groups = list(dict.fromkeys((r.model, r.batch) for r in latency))
        keyed = {(r.model, r.runtime, r.batch): r.median_ms / r.batch for r in latency}
        for offset, runtime in ((-0.2, "torch"), (0.2, "onnx")):
            values = [keyed[(m, runtime, b)] for m, b in groups]
            ax.bar([i + offset for i in range(len(groups))], values, width=0.4, label=runtime)
        ax.set_xticks(range(len(groups)), [f"{m}\nbatch {b}" for m, b in groups])
        ax.set_ylabel("ms per input (median, log scale)")
        ax.set_yscale("log")
        ax.set_title("Model call: torch vs ONNX Runtime")
        ax.legend()
    if runs:
        ax = next(ax_iter)
        services = list(dict.fromkeys(r.service for r in runs))
        modes = list(dict.fromkeys(r.mode for r in runs))
        width = 0.8 / len(modes)
        for k, mode in enumerate(modes):
            cells = [merged(runs, s, mode) for s in services]
            xs = [i - 0.4 + width * (k + 0.5) for i in range(len(services))]
            bars = ax.bar(xs, [c.throughput for c in cells], width=width, label=f"batching {mode}")
            for bar, cell in zip(bars, cells, strict=True):
                ax.annotate(
                    f"p95 {cell.percentile(0.95):.0f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        ax.set_xticks(range(len(services)), services)
        ax.set_ylabel("requests / s (p95 ms on the bars)")
        ax.set_title(f"{CLIENTS} concurrent clients, one Gunicorn worker")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", default="nlp,vision", help="services for the load test")
    parser.add_argument("--modes", default=",".join(MODES), help=f"batching modes, of: {', '.join(MODES)}")
    parser.add_argument("--rounds", type=int, default=6, help="load windows of every mode per service")
    parser.add_argument("--seconds", type=float, default=6, help="seconds per load window")
    parser.add_argument("--runtime", choices=("onnx", "torch"), help="RUNTIME under load (default: theirs)")
    parser.add_argument("--threads", type=int, default=default_threads(), help="intra-op threads for (a)")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-load", action="store_true")
    args = parser.parse_args(argv)

    header = (
        f"{platform.machine()}, {default_threads()} usable cores (shared with other work; load average "
        f"{os.getloadavg()[0]:.1f} at the start), Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(header, flush=True)
    sections = [f"# Runtime and batching benchmark\n\n{header}. Read the ratios; absolute figures drift.\n"]
    latency: list[Latency] = []
    sweep: list[Latency] = []
    runs: list[LoadRun] = []
    if not args.skip_latency:
        import torch

        torch.set_num_threads(args.threads)
        print(f"(a) model latency, {args.threads} threads ...", flush=True)
        loaded = load_runtimes(args.threads)
        latency = measure_latency(loaded, ("torch", "onnx"), {1: 40, 32: 8})
        print("    onnx, per-input cost against batch size ...", flush=True)
        sweep = measure_latency(loaded, ("onnx",), {1: 40, 2: 30, 4: 20, 8: 12, 16: 8, 32: 8})
        sections.append(
            f"## (a) Model call latency, torch vs ONNX Runtime ({args.threads} intra-op threads)\n\n"
            "Median of interleaved `runtime.predict` calls (NLP includes tokenisation; vision starts "
            "from the preprocessed tensor).\n\n" + latency_table(latency) + "\n\n"
            "ONNX, ms per input against batch size: the most batching can save inside the model call.\n\n"
            + sweep_table(sweep)
            + "\n"
        )
    if not args.skip_load:
        services = [s.strip() for s in args.services.split(",") if s.strip()]
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
    sections.append(f"Load average at the end: {os.getloadavg()[0]:.1f}.\n")
    report = "\n".join(sections)
    print("\n" + report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "runtime.md").write_text(report, encoding="utf-8")
    if latency or runs:
        plot(latency, runs, RESULTS / "runtime.png")
    print(f"wrote {RESULTS / 'runtime.md'} and {RESULTS / 'runtime.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
