"""Benchmark ModelGate's Open Inference Protocol path (`POST /v2/models/iris/infer`) against MLServer 1.7.1
serving the same iris joblib file, side by side, with wrk.

    python -m bench.oip            # ~8 minutes: 1, 8, 32 connections, 5 rounds of 5 s a point
    python -m bench.oip --quick    # ~1.5 minutes: 2 rounds of 2 s a point; the report stays in results/
    python -m bench.oip --targets mlserver --quick   # MLServer alone

Targets (each answers the same flower, 5.1/3.5/1.4/0.2 cm, a setosa):
- MLServer 1.7.1 direct: `mlserver start` on the settings in scripts/peers/mlserver_iris/ (its sklearn
  runtime, `parameters.uri` pointed at the joblib file ModelGate serves), JSON body.
- ModelGate through its gateway (API key, access log, rate limiting all on): JSON, and the binary tensor
  extension (JSON header + 32 raw bytes, the output asked for with `binary_data: true`).
- ModelGate's tabular-service direct (no gateway), JSON and binary, for reference.

MLServer lives in its own virtual environment (build/mlserver-venv, made by `make bench-tools`; it never
touches .venv), with scikit-learn, joblib and numpy pinned to .venv's so both sides unpickle the same
model the same way. Before anything is measured every target must answer with the class the model
itself predicts in this process. Rounds alternate the order of the targets at each connection count;
the report gives the median of the rounds. MLServer is paused (SIGSTOP) while ModelGate is measured.

Writes results/bench-oip-<timestamp>/ (report.md, results.json, img/bench-oip.png, log tails); a full run
also copies the report to docs/benchmarks-oip.md and docs/img/bench-oip.png (unless --no-docs).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shlex
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from bench import report as md
from bench.harness import (
    FLOWER,
    GATEWAY_ENV,
    INFERENCE_HEADER,
    REPO,
    PeerProcess,
    Point,
    Route,
    Target,
    Wrk,
    load_average,
    log_tails,
    machine_info,
    model_outputs,
    oip_binary_body,
    oip_json_body,
    out_dir_for,
    pids_of,
    save_log_tails,
    wait_http_ok,
)
from bench.tools import MLSERVER_VENV, require_mlserver, require_wrk
from devstack import LocalStack, free_port, running_stack
from modelgate_core.oip.dtypes import NUMPY_DTYPES

PEER_SETTINGS = REPO / "scripts" / "peers" / "mlserver_iris"
MODEL_FILES = (REPO / "models" / "iris" / "1" / "model.joblib", REPO / "artifacts" / "iris" / "model.joblib")
MODEL_NAME = "iris"
INFER_PATH = f"/v2/models/{MODEL_NAME}/infer"
MODELGATE_INPUT = "input"
MLSERVER_INPUT = "input-0"

TARGET_KEYS = ("mlserver", "gateway-json", "gateway-binary", "direct-json", "direct-binary")
TARGET_NAMES = {
    "mlserver": "MLServer 1.7.1 (direct)",
    "gateway-json": "ModelGate gateway (JSON)",
    "gateway-binary": "ModelGate gateway (binary)",
    "direct-json": "ModelGate service direct (JSON)",
    "direct-binary": "ModelGate service direct (binary)",
}

# ----------------------------------------------------------------------------------------------------
# What is measured


@dataclass
class Subject:
    """One measured target: where it listens, the exact request it gets, whose processes serve it."""

    key: str
    target: Target
    route: Route  # its headers: Inference-Header-Content-Length for a binary body
    groups: dict[str, Callable[[], list[int]]]  # process group -> pids, for CPU per request
    pause: Callable[[bool], None] | None = None  # SIGSTOP/SIGCONT while others are measured


@dataclass
class RoundPoint(Point):
    round: int = 0


@dataclass
class OipReport:
    started: str
    command: str
    quick: bool
    duration_s: int
    warmup_s: int
    rounds: int
    concurrencies: list[int]
    workers: int
    machine: dict[str, Any]
    versions: dict[str, dict[str, str]]
    model_file: str
    model_sha256: str
    model_kind: str
    expected_class: str
    mlserver_settings: dict[str, Any]
    mlserver_model_settings: dict[str, Any]
    load_before: str
    load_after: str = ""
    targets: list[str] = field(default_factory=list)  # measured, in order
    not_measured: dict[str, str] = field(default_factory=dict)  # target -> why
    answers: dict[str, str] = field(default_factory=dict)  # target -> the class it predicted
    requests: dict[str, str] = field(default_factory=dict)  # target -> its body, as shown in the report
    points: list[RoundPoint] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------
# Request bodies and answers


def send(subject: Subject) -> tuple[int, dict[str, str], bytes]:
    headers = {"content-type": subject.route.content_type, **subject.route.headers}
    if subject.target.api_key:
        headers["x-api-key"] = subject.target.api_key
    request = urllib.request.Request(
        subject.target.url(subject.route), data=subject.route.body, method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _binary_values(datatype: str, chunk: bytes) -> np.ndarray[Any, Any]:
    if datatype == "BYTES":  # each element: 4-byte little-endian length, then its bytes
        items: list[bytes] = []
        offset = 0
        while offset + 4 <= len(chunk):
            (size,) = struct.unpack_from("<I", chunk, offset)
            items.append(chunk[offset + 4 : offset + 4 + size])
            offset += 4 + size
        return np.array(items, dtype=object)
    if datatype == "BF16":  # the top half of a float32
        return (np.frombuffer(chunk, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(chunk, dtype=NUMPY_DTYPES[datatype].newbyteorder("<"))


def decode_outputs(headers: Mapping[str, str], body: bytes) -> dict[str, tuple[str, np.ndarray[Any, Any]]]:
    """Output name -> (datatype, flat values), from a JSON answer or a binary-extension one."""
    header_length = headers.get("inference-header-content-length")
    if header_length is None:
        document, tail = json.loads(body), b""
    else:
        document, tail = json.loads(body[: int(header_length)]), body[int(header_length) :]
    outputs: dict[str, tuple[str, np.ndarray[Any, Any]]] = {}
    offset = 0
    for output in document["outputs"]:
        datatype = output["datatype"]
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            values = _binary_values(datatype, tail[offset : offset + int(size)])
            offset += int(size)
        elif datatype == "BYTES":
            values = np.array(output["data"], dtype=object).reshape(-1)
        else:
            values = np.asarray(output["data"], dtype=NUMPY_DTYPES[datatype]).reshape(-1)
        outputs[output["name"]] = (datatype, values)
    return outputs


def predicted_class(outputs: Mapping[str, tuple[str, np.ndarray[Any, Any]]], labels: Sequence[str]) -> int:
    """The class index an answer names: a one-element integer output (a class id, MLServer's `predict`),
    else a one-element text output (a label), else the largest of `len(labels)` scores."""
    for datatype, values in outputs.values():
        if datatype.startswith(("INT", "UINT")) and values.size == 1:
            return int(values[0])
    for datatype, values in outputs.values():
        if datatype == "BYTES" and values.size == 1:
            item = values[0]
            text = item.decode() if isinstance(item, bytes) else str(item)
            if text in labels:
                return labels.index(text)
            if text.isdigit():
                return int(text)
    for datatype, values in outputs.values():
        if datatype.startswith(("FP", "BF")) and values.size == len(labels):
            return int(np.argmax(values))
    shapes = ", ".join(f"{n} {d}[{v.size}]" for n, (d, v) in outputs.items())
    raise ValueError(f"no output names a class (outputs: {shapes or 'none'})")


def check_answers(subjects: Sequence[Subject], expected: int, labels: Sequence[str]) -> dict[str, str]:
    """Every target must answer 200 with the class the model predicts here; SystemExit otherwise.
    Target name -> the class it named."""
    answers: dict[str, str] = {}
    wrong: list[str] = []
    for subject in subjects:
        name = subject.target.name
        try:
            status, headers, body = send(subject)
        except OSError as exc:
            wrong.append(f"{name}: no answer ({exc})")
            continue
        if status != 200:
            text = body[:300].decode(errors="replace")
            wrong.append(f"{name}: HTTP {status} {text}")
            continue
        try:
            found = predicted_class(decode_outputs(headers, body), labels)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            wrong.append(f"{name}: unreadable answer ({exc}): {body[:300]!r}")
            continue
        answers[name] = label_of(found, labels)
        if found != expected:
            wrong.append(
                f"{name}: predicted {answers[name]}, the model predicts {label_of(expected, labels)}"
            )
    if wrong:
        modelgate_only = all(not line.startswith(TARGET_NAMES["mlserver"]) for line in wrong)
        hint = (
            "\nModelGate's /v2 answers are what is missing; MLServer answered correctly. Measure it alone "
            "with --targets mlserver, or run again once ModelGate serves " + INFER_PATH + "."
            if modelgate_only and any(s.key == "mlserver" for s in subjects)
            else ""
        )
        raise SystemExit(
            "not every target gives the right answer, nothing measured:\n  " + "\n  ".join(wrong) + hint
        )
    return answers


def label_of(index: int, labels: Sequence[str]) -> str:
    return f"{labels[index]} ({index})" if 0 <= index < len(labels) else str(index)


# ----------------------------------------------------------------------------------------------------
# The model file, and MLServer


def pick_model_file(explicit: str | None) -> Path:
    if explicit:
        path = Path(explicit).resolve()
        if not path.is_file():
            raise SystemExit(f"--model-file {explicit}: no such file")
        return path
    for candidate in MODEL_FILES:
        if candidate.is_file():
            return candidate
    raise SystemExit(
        "no iris model: none of "
        + ", ".join(str(p.relative_to(REPO)) for p in MODEL_FILES)
        + " (make models)"
    )


def model_labels(model_file: Path) -> list[str]:
    """Class names from the manifest or model-settings.json next to the file; the class values if none."""
    for candidate, keys in (
        (model_file.parent / "model-settings.json", ("parameters", "labels")),
        (model_file.parent / "manifest.json", ("extra", "labels")),
    ):
        with suppress(OSError, ValueError, KeyError, TypeError):
            found: Any = json.loads(candidate.read_text())
            for key in keys:
                found = found[key]
            return [str(label) for label in found]
    import joblib

    return [str(c) for c in joblib.load(model_file).classes_]


def local_prediction(model_file: Path) -> tuple[int, str]:
    """The class the model itself predicts for the flower, in this process, and what the model is."""
    import joblib

    model = joblib.load(model_file)
    predicted = model.predict(np.array([FLOWER]))[0]
    steps = getattr(model, "steps", None)
    kind = " + ".join(type(s).__name__ for _, s in steps) if steps else type(model).__name__
    return list(model.classes_).index(predicted), kind


def mlserver_settings(model_file: Path, workers: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The committed settings (scripts/peers/mlserver_iris/) with free ports, the worker count and the
    model file filled in."""
    server = json.loads((PEER_SETTINGS / "settings.json").read_text())
    server |= {
        "http_port": free_port(),
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": workers,
    }
    model = json.loads((PEER_SETTINGS / MODEL_NAME / "model-settings.json").read_text())
    model["parameters"]["uri"] = str(model_file)
    return server, model


@contextmanager
def running_mlserver(
    venv: Path, server: dict[str, Any], model: dict[str, Any], run_dir: Path
) -> Iterator[PeerProcess]:
    """`mlserver start` on a folder holding the two settings files; stopped (its workers too) on exit."""
    folder = run_dir / "mlserver"
    (folder / MODEL_NAME).mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(server, indent=2))
    (folder / MODEL_NAME / "model-settings.json").write_text(json.dumps(model, indent=2))
    # Nothing of .venv's environment leaks in, nor MLSERVER_* overrides from the caller's shell.
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PROMETHEUS_MULTIPROC_DIR"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("MLSERVER_")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    log = open(run_dir / "mlserver.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [str(venv / "bin" / "mlserver"), "start", str(folder)],
        cwd=folder,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stop() takes the inference workers too
    )
    peer = PeerProcess("mlserver", int(server["http_port"]), proc)
    try:
        try:
            ready = f"{peer.url}/v2/models/{MODEL_NAME}/ready"
            seconds = wait_http_ok(ready, 180, peer.alive)
        except (RuntimeError, TimeoutError) as exc:
            raise SystemExit(
                f"MLServer did not start: {exc}\n" + log_tails([run_dir / "mlserver.log"])
            ) from exc
        print(f"    MLServer ready in {seconds:.1f}s on {peer.url}", flush=True)
        yield peer
    finally:
        stop_mlserver(peer)


def stop_mlserver(peer: PeerProcess, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds: MLServer 1.7.1 shuts its pool and gRPC down at once
    but then waits on background tasks for good."""
    with suppress(ProcessLookupError):
        os.killpg(peer.proc.pid, signal.SIGCONT)
        os.killpg(peer.proc.pid, signal.SIGTERM)
    try:
        peer.proc.wait(grace)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(peer.proc.pid, signal.SIGKILL)
    peer.stop()  # reaps it, and kills whatever of its process group is left


# ----------------------------------------------------------------------------------------------------
# ModelGate


def modelgate_subjects(stack: LocalStack, key: str, wanted: Sequence[str]) -> list[Subject]:
    tabular = pids_of(stack, "tabular")
    gateway = pids_of(stack, "gateway")
    outputs = model_outputs(stack.url("gateway"), key)
    binary, header_length = oip_binary_body(outputs, MODELGATE_INPUT)
    subjects: list[Subject] = []
    for name in wanted:
        if name == "mlserver":
            continue
        via_gateway = name.startswith("gateway")
        is_binary = name.endswith("binary")
        route = (
            infer_route(name, "application/octet-stream", binary, {INFERENCE_HEADER: str(header_length)})
            if is_binary
            else infer_route(name, "application/json", oip_json_body(MODELGATE_INPUT))
        )
        target = Target(
            TARGET_NAMES[name],
            "gateway" if via_gateway else "direct",
            stack.url("gateway" if via_gateway else "tabular"),
            key if via_gateway else "",
        )
        groups = {"tabular": tabular, **({"gateway": gateway} if via_gateway else {})}
        subjects.append(Subject(name, target, route, groups))
    return subjects


def mlserver_subject(peer: PeerProcess) -> Subject:
    route = infer_route("mlserver", "application/json", oip_json_body(MLSERVER_INPUT))
    target = Target(TARGET_NAMES["mlserver"], "mlserver", peer.url)
    return Subject("mlserver", target, route, {"mlserver": peer.pids}, peer.pause)


def infer_route(name: str, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> Route:
    # Route's `check` reads JSON answers only; check_answers reads binary ones too, so it is not used.
    return Route(name, INFER_PATH, "tabular", content_type, body, check=lambda _: True, headers=headers or {})


def shown_body(subject: Subject) -> str:
    """The body as text: JSON as is; a binary one as its JSON header and the raw bytes' size."""
    length = subject.route.headers.get(INFERENCE_HEADER)
    if length is None:
        return subject.route.body.decode()
    header, raw = subject.route.body[: int(length)], subject.route.body[int(length) :]
    return f"{header.decode()} + {len(raw)} raw bytes"


@contextmanager
def running_modelgate(workers: int, run_dir: Path) -> Iterator[LocalStack]:
    print(f"==> starting ModelGate ({workers} Gunicorn worker(s) a process; all four load)", flush=True)
    started = time.monotonic()
    stack_dir = run_dir / "modelgate"
    with ExitStack() as running:
        try:
            stack = running.enter_context(
                running_stack(run_dir=stack_dir, workers=workers, extra_env=GATEWAY_ENV)
            )
        except (RuntimeError, TimeoutError) as exc:
            raise SystemExit(
                f"ModelGate did not start: {exc}\n"
                + log_tails(sorted(stack_dir.glob("*.log")))
                + "\n(--targets mlserver measures MLServer alone)"
            ) from exc
        print(f"    ModelGate ready in {time.monotonic() - started:.1f}s", flush=True)
        yield stack


@contextmanager
def servers(
    wanted: Sequence[str],
    workers: int,
    run_dir: Path,
    server_settings: dict[str, Any],
    model_settings: dict[str, Any],
) -> Iterator[list[Subject]]:
    """MLServer and ModelGate, as wanted, and what to send each; all stopped on exit, Ctrl-C included."""
    subjects: list[Subject] = []
    with ExitStack() as started:
        if "mlserver" in wanted:
            print(f"==> starting MLServer (parallel_workers={workers})", flush=True)
            peer = started.enter_context(
                running_mlserver(MLSERVER_VENV, server_settings, model_settings, run_dir)
            )
            subjects.append(mlserver_subject(peer))
        modelgate_wanted = [k for k in wanted if k != "mlserver"]
        if modelgate_wanted:
            stack = started.enter_context(running_modelgate(workers, run_dir))
            key = stack.create_key("bench-oip", "tabular")
            subjects += modelgate_subjects(stack, key, modelgate_wanted)
        yield subjects


# ----------------------------------------------------------------------------------------------------
# The run


@contextmanager
def resumed(subject: Subject) -> Iterator[None]:
    if subject.pause:
        subject.pause(False)
    try:
        yield
    finally:
        if subject.pause:
            subject.pause(True)


def measure_all(wrk: Wrk, subjects: Sequence[Subject], report: OipReport) -> None:
    """One warm-up per target, then each round: every connection count, the targets back to back in an
    order that alternates, so a drifting machine load hits them alike."""
    for subject in subjects:
        with resumed(subject):
            wrk.run(subject.target, subject.route, 8, report.warmup_s)
    total = report.rounds * len(report.concurrencies) * len(subjects)
    done = 0
    for round_index in range(report.rounds):
        for c_index, connections in enumerate(report.concurrencies):
            forward = (round_index + c_index) % 2 == 0
            for subject in subjects if forward else list(reversed(subjects)):
                with resumed(subject):
                    point = wrk.measure(
                        subject.target, subject.route, connections, report.duration_s, subject.groups
                    )
                report.points.append(RoundPoint(**asdict(point), round=round_index + 1))
                done += 1
                print(
                    f"    [{done:>3}/{total}] round {round_index + 1} c={connections:<3} "
                    f"{subject.target.name:<34} {point.rps:>7.0f} req/s  p50 {point.p50_ms:6.2f} ms  "
                    f"p99 {point.p99_ms:7.2f} ms  errors {point.errors}  other load "
                    f"{point.foreign_cores:.2f} cores",
                    flush=True,
                )


def run(args: argparse.Namespace, command: str) -> Path:
    wanted = [k.strip() for k in args.targets.split(",") if k.strip()]
    unknown = sorted(set(wanted) - set(TARGET_KEYS))
    if unknown or not wanted:
        raise SystemExit(
            f"--targets: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(TARGET_KEYS)}"
        )
    wanted = [k for k in TARGET_KEYS if k in wanted]
    wrk_path, wrk_version = require_wrk()
    model_file = pick_model_file(args.model_file)
    labels = model_labels(model_file)
    expected, model_kind = local_prediction(model_file)
    print(
        f"==> model: {model_file.relative_to(REPO) if model_file.is_relative_to(REPO) else model_file} "
        f"(predicts {label_of(expected, labels)} for {FLOWER})",
        flush=True,
    )
    versions: dict[str, dict[str, str]] = {"modelgate (.venv)": modelgate_versions()}
    server_settings: dict[str, Any] = {}
    model_settings: dict[str, Any] = {}
    if "mlserver" in wanted:
        versions["mlserver (build/mlserver-venv)"] = require_mlserver()
        server_settings, model_settings = mlserver_settings(model_file, args.workers)
    out_dir = out_dir_for("bench-oip", args.out)
    report = OipReport(
        started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        command=command,
        quick=args.quick,
        duration_s=args.duration,
        warmup_s=args.warmup,
        rounds=args.rounds,
        concurrencies=[int(c) for c in args.concurrency.split(",")],
        workers=args.workers,
        machine=machine_info(wrk_version),
        versions=versions,
        model_file=str(model_file.relative_to(REPO) if model_file.is_relative_to(REPO) else model_file),
        model_sha256=hashlib.sha256(model_file.read_bytes()).hexdigest(),
        model_kind=model_kind,
        expected_class=label_of(expected, labels),
        mlserver_settings=server_settings,
        mlserver_model_settings=model_settings,
        load_before=load_average(),
    )
    for key in TARGET_KEYS:
        if key not in wanted:
            report.not_measured[TARGET_NAMES[key]] = "left out with --targets"
    print(f"==> machine: {report.machine['cpu_model']}, load {report.load_before}", flush=True)
    with tempfile.TemporaryDirectory(prefix="modelgate-bench-oip-") as tmp:
        run_dir = Path(tmp)
        wrk = Wrk(wrk_path, wrk_version, run_dir)
        try:
            with servers(wanted, args.workers, run_dir, server_settings, model_settings) as subjects:
                report.answers = check_answers(subjects, expected, labels)
                print(
                    "==> every target predicts "
                    + report.expected_class
                    + f"; measuring {len(subjects)} targets x {report.concurrencies} connections x "
                    f"{report.rounds} rounds of {report.duration_s}s",
                    flush=True,
                )
                report.targets = [s.target.name for s in subjects]
                report.requests = {s.target.name: shown_body(s) for s in subjects}
                measure_all(wrk, subjects, report)
        finally:
            save_log_tails(run_dir, out_dir / "logs")
            print(f"==> process logs: {out_dir / 'logs'}", flush=True)
    report.load_after = load_average()
    write_report(report, out_dir)
    md.publish(out_dir, "benchmarks-oip.md", ["img/bench-oip.png"], full_run=not (args.quick or args.no_docs))
    return out_dir


def modelgate_versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in ("scikit-learn", "numpy", "joblib", "fastapi", "uvicorn", "gunicorn", "uvloop", "aiohttp"):
        with suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


# ----------------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class Summary:
    """One target at one connection count: the median of its rounds."""

    target: str
    connections: int
    rounds: int
    rps: float
    rps_min: float
    rps_max: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_req: dict[str, float]
    foreign_cores: float  # the most any of its rounds saw


def summarise(report: OipReport) -> dict[tuple[str, int], Summary]:
    summaries: dict[tuple[str, int], Summary] = {}
    for target in report.targets:
        for connections in report.concurrencies:
            points = [p for p in report.points if p.target == target and p.connections == connections]
            if not points:
                continue
            groups = points[0].cpu_ms_per_req
            summaries[(target, connections)] = Summary(
                target=target,
                connections=connections,
                rounds=len(points),
                rps=statistics.median(p.rps for p in points),
                rps_min=min(p.rps for p in points),
                rps_max=max(p.rps for p in points),
                p50_ms=statistics.median(p.p50_ms for p in points),
                p99_ms=statistics.median(p.p99_ms for p in points),
                errors=sum(p.errors for p in points),
                cpu_ms_per_req={g: statistics.median(p.cpu_ms_per_req[g] for p in points) for g in groups},
                foreign_cores=max(p.foreign_cores for p in points),
            )
    return summaries


def goal_rows(report: OipReport, summaries: Mapping[tuple[str, int], Summary]) -> list[str]:
    high = 32 if 32 in report.concurrencies else max(report.concurrencies)
    low = 1 if 1 in report.concurrencies else min(report.concurrencies)
    baseline = TARGET_NAMES["mlserver"]
    rows = [
        "| goal | ModelGate path | measured (ModelGate / MLServer) | verdict |",
        "| --- | --- | --- | --- |",
    ]
    for key in ("gateway-json", "gateway-binary"):
        name = TARGET_NAMES[key]
        why = report.not_measured.get(name) or report.not_measured.get(baseline) or "not measured"
        ours, theirs = summaries.get((name, high)), summaries.get((baseline, high))
        if ours and theirs:
            ratio = ours.rps / theirs.rps
            measured = f"{ratio:.2f} ({ours.rps:.0f} vs {theirs.rps:.0f} req/s){errors_note(ours, theirs)}"
            verdict = md.verdict(ratio >= 1.0)
        else:
            measured, verdict = why, "n/a"
        rows.append(
            f"| ModelGate via gateway ≥ MLServer direct, req/s at {high} connections | {name} | "
            f"{measured} | {verdict} |"
        )
        ours, theirs = summaries.get((name, low)), summaries.get((baseline, low))
        if ours and theirs:
            ratio = ours.p50_ms / theirs.p50_ms
            measured = f"{ratio:.2f} ({ours.p50_ms:.2f} vs {theirs.p50_ms:.2f} ms){errors_note(ours, theirs)}"
            verdict = md.verdict(ratio <= 1.0)
        else:
            measured, verdict = why, "n/a"
        rows.append(
            f"| p50 at {low} connection no worse than MLServer direct | {name} | {measured} | {verdict} |"
        )
    return rows


def errors_note(*summaries: Summary) -> str:
    failed = sum(s.errors for s in summaries)
    return f", **{failed} failed requests**" if failed else ""


def cpu_text(cpu: Mapping[str, float]) -> str:
    return " + ".join(f"{group} {ms:.2f}" for group, ms in cpu.items())


def result_rows(report: OipReport, summaries: Mapping[tuple[str, int], Summary]) -> list[str]:
    rows = [
        "| conns | target | req/s | rounds' range | / MLServer | p50 ms | p99 ms | errors | "
        "CPU ms per request | other load (cores) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for connections in report.concurrencies:
        baseline = summaries.get((TARGET_NAMES["mlserver"], connections))
        for target in report.targets:
            s = summaries.get((target, connections))
            if s is None:
                continue
            versus = f"{s.rps / baseline.rps:.2f}" if baseline else "n/a"
            rows.append(
                f"| {connections} | {target} | {s.rps:.0f} | {s.rps_min:.0f} to {s.rps_max:.0f} | {versus} | "
                f"{md.fmt_ms(s.p50_ms)} | {md.fmt_ms(s.p99_ms)} | {s.errors} | "
                f"{cpu_text(s.cpu_ms_per_req)} | "
                f"{s.foreign_cores:.2f} |"
            )
    return rows


def write_plot(report: OipReport, summaries: Mapping[tuple[str, int], Summary], path: Path) -> None:
    series = []
    for target in report.targets:
        points = [summaries[(target, c)] for c in report.concurrencies if (target, c) in summaries]
        dashed = "direct (" in target and "MLServer" not in target
        series.append(
            md.Series(
                target,
                [s.connections for s in points],
                [s.rps for s in points],
                [s.p50_ms for s in points],
                dashed=dashed,
            )
        )
    md.plot_connections(
        path,
        series,
        report.concurrencies,
        rps_title=f"iris {INFER_PATH}: throughput",
        latency_title="median latency",
        rps_label="requests / s (median of rounds)",
        latency_label="p50 latency, ms",
        xlabel="concurrent connections (wrk)",
        size=(10, 3.8),
        plain_latency_ticks=True,
    )


def write_report(report: OipReport, out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(asdict(report), indent=2))
    summaries = summarise(report)
    image = out_dir / "img" / "bench-oip.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    if summaries:
        write_plot(report, summaries, image)
    m = report.machine
    foreign = [p.foreign_cores for p in report.points]
    both_sides = TARGET_NAMES["mlserver"] in report.targets and len(report.targets) > 1
    lines = [
        "# ModelGate vs MLServer 1.7.1 on the Open Inference Protocol",
        "",
        f"Generated by `{report.command}` (`make bench-oip`) on {report.started}. One machine, every target "
        "measured back to back in alternating order: **read the ratios**, not the absolute figures.",
        "",
        "## Goals",
        "",
        *goal_rows(report, summaries),
        "",
        f"## Results: `POST {INFER_PATH}`",
        "",
        f"Median of {report.rounds} rounds of {report.duration_s} s per point (the range of the rounds' "
        "req/s next to it). CPU ms per request: CPU time each process group spent per answered request "
        "(MLServer: its REST process and its inference workers; ModelGate: tabular-service, and the gateway "
        "when it is in the path). *Other load*: cores busy outside the measured processes and wrk (the "
        "idle side, other users of the machine).",
        "",
        *result_rows(report, summaries),
        "",
    ]
    if summaries:
        lines += ["![throughput and p50 against connections](img/bench-oip.png)", ""]
    if report.not_measured:
        lines += ["Not measured: " + "; ".join(f"{t}: {why}" for t, why in report.not_measured.items()), ""]
    lines += [
        "## What was compared",
        "",
        f"- Model: `{report.model_file}` (sha256 `{report.model_sha256[:16]}…`), scikit-learn "
        f"{report.model_kind} saved with joblib; both servers load this one file. "
        f"The flower {FLOWER} is a {report.expected_class} for the model itself; before measuring, every "
        "target had to answer with that class: "
        + ("; ".join(f"{t}: {a}" for t, a in report.answers.items()) or "none answered")
        + ".",
        f"- Workers: {report.workers} on each side. ModelGate: every Gunicorn process (gateway, "
        f"tabular-service, and the idle vision and nlp services) runs {report.workers} Uvicorn worker(s); "
        f"MLServer: `parallel_workers: {report.workers}` (its default is 1) behind its one REST process.",
        "- MLServer 1.7.1 with `mlserver_sklearn.SKLearnModel`, started with `mlserver start` on the "
        "settings in `scripts/peers/mlserver_iris/` (ports and the model path filled in). Everything else is "
        "its default, as a user would run it: gRPC and the metrics server stay on, and so do its request "
        "logging and its Prometheus metrics. It answers with its default output, `predict` (the class id); "
        "MLServer has no binary tensors over REST.",
        "- ModelGate through the gateway: API key (`X-API-Key`), JSON access log line per request, request "
        "IDs, metrics and rate limiting on (a limit of 1,000,000/s, checked but never reached), as in "
        "`make bench`. Binary requests: `application/octet-stream`, the JSON header (the input with "
        "`binary_data_size: 32`, each output of the model's metadata asked for with `binary_data: true`), "
        "its length in `Inference-Header-Content-Length`, then the 4 float64, little-endian.",
        "- ModelGate's tabular-service direct: the same two bodies without the gateway (no key), for "
        "reference.",
        f"- Load: {m['wrk']}, 1 thread, closed loop, keep-alive, one POST body per target (a Lua script); "
        f"connections {', '.join(map(str, report.concurrencies))}; one {report.warmup_s} s warm-up per "
        "target. "
        + ("MLServer was paused (SIGSTOP) while ModelGate was measured. " if both_sides else "")
        + "Every target shares the machine's CPUs with wrk and with the other side.",
        "",
    ]
    if report.requests:
        lines += ["The exact bodies:", "", "| target | body |", "| --- | --- |"]
        lines += [f"| {t} | `{body}` |" for t, body in report.requests.items()]
        lines.append("")
    if report.mlserver_settings:
        lines += [
            "MLServer's `settings.json` and `iris/model-settings.json` as this run used them:",
            "",
            "```json",
            json.dumps(report.mlserver_settings, indent=2),
            json.dumps(shown_model_settings(report), indent=2),
            "```",
            "",
        ]
    lines += [
        "## Machine and versions",
        "",
        f"- CPU: {m['cpu_model']}; nproc {m['usable_cpus']} ({m['logical_cpus']} logical), "
        f"{m['memory_gib']} GiB RAM, Linux {m['kernel']}, Python {m['python']}; ModelGate commit {m['git']}.",
        f"- Load average before: {report.load_before}; after: {report.load_after}. During the points, "
        f"other load was {min(foreign, default=0):.2f} to {max(foreign, default=0):.2f} cores.",
        "",
        "| package | " + " | ".join(report.versions) + " |",
        "| --- | " + " | ".join("---" for _ in report.versions) + " |",
    ]
    packages = dict.fromkeys(name for found in report.versions.values() for name in found)
    for package in packages:
        cells = (found.get(package, "") for found in report.versions.values())
        lines.append(f"| {package} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Raw figures (every round): `results.json` in `results/bench-oip-<timestamp>/`, next to the logs. "
        "Reproduce: `make bench-oip` (`BENCH_ARGS=--quick` for the short version).",
        "",
    ]
    (out_dir / "report.md").write_text("\n".join(lines))


def shown_model_settings(report: OipReport) -> dict[str, Any]:
    """The model settings with the checkout's own path left out of the model file's."""
    shown = copy.deepcopy(report.mlserver_model_settings)
    uri = Path(shown.get("parameters", {}).get("uri", ""))
    if uri.is_relative_to(REPO):
        shown["parameters"]["uri"] = f"<checkout>/{uri.relative_to(REPO)}"
    return shown


def load_report(path: Path) -> OipReport:
    data = json.loads(path.read_text())
    points = [RoundPoint(**p) for p in data.pop("points")]
    return OipReport(**data, points=points)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 rounds of 2 s a point (~1.5 minutes); the report stays in results/",
    )
    parser.add_argument("--duration", type=int, help="seconds per point (default 5, quick 2)")
    parser.add_argument("--warmup", type=int, help="warm-up seconds per target (default 2, quick 1)")
    parser.add_argument("--rounds", type=int, help="rounds per point (default 5, quick 2)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma list of connections (default 1,8,32)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Gunicorn workers per ModelGate process, and MLServer's parallel_workers (default 1)",
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGET_KEYS),
        help=f"comma list of {', '.join(TARGET_KEYS)} (default all)",
    )
    parser.add_argument("--model-file", help="the iris joblib (default models/iris/1/ or artifacts/iris/)")
    parser.add_argument("--out", help="output folder (default results/bench-oip-<timestamp>)")
    parser.add_argument("--no-docs", action="store_true", help="do not copy the report to docs/")
    parser.add_argument(
        "--render", metavar="RESULTS_JSON", help="only rewrite the report from a results.json"
    )
    args = parser.parse_args(argv)
    if args.render:
        source = Path(args.render)
        report = load_report(source)
        write_report(report, source.parent)
        full_run = not (report.quick or args.no_docs)
        md.publish(source.parent, "benchmarks-oip.md", ["img/bench-oip.png"], full_run=full_run)
        return 0
    args.duration = max(1, args.duration or (2 if args.quick else 5))
    args.warmup = max(1, args.warmup or (1 if args.quick else 2))
    # 5: with 3, two runs a few minutes apart put the binary target's median on either side of MLServer's
    # (the rounds' ranges overlapped); the median of 5 moves less with the machine's other load.
    args.rounds = max(1, args.rounds or (2 if args.quick else 5))
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        connections = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        connections = []
    if not connections or min(connections) < 1:
        parser.error(f"--concurrency {args.concurrency!r}: give whole numbers >= 1, comma-separated")
    command = shlex.join(["python", "-m", "bench.oip", *(sys.argv[1:] if argv is None else argv)])
    # A supervisor's SIGTERM unwinds like Ctrl-C: every server this started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started = time.monotonic()
    try:
        out_dir = run(args, command)
    except KeyboardInterrupt:
        print("\ninterrupted: every server this run started has been stopped", file=sys.stderr)
        return 130
    print(f"==> {out_dir} ({time.monotonic() - started:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
