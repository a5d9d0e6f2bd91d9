"""Fixtures for the fault tests: one real stack of their own, a load generator that records every request,
and a report per test under results/chaos/.

`CHAOS_SCALE` (default 1, the CI size) multiplies how long each load phase lasts and how many hostile
connections are opened: `CHAOS_SCALE=10 make test PYTEST_ARGS="tests/chaos"` is the long profile.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import pytest

from devstack import REPO, SERVICES, LocalStack, copy_repository, free_port

SCALE = max(1.0, float(os.environ.get("CHAOS_SCALE", "1")))
RESULTS = REPO / "results" / "chaos"
ASSETS = REPO / "tests" / "assets"
# The service whose workers the tests kill runs two, so one survives the first kill.
KILLED_SERVICE = "tabular"
# Small, so that 4x the sustainable load on vision overflows it within a second or two.
MAX_QUEUED = 4
# The gateway's read timeouts for each domain (its defaults, set explicitly so the bounds below hold).
GATEWAY_TIMEOUTS = {"tabular": 5.0, "vision": 30.0, "nlp": 15.0}
# Client-side slack on top of the gateway's timeout: connect, queueing in the gateway, a loaded machine.
LATENCY_MARGIN = 2.0
# Gateway limits the slow-client test checks (core/modelgate_core/gunicorn_conf.py reads them).
HEADER_TIMEOUT = 3.0


class ChaosStack(LocalStack):
    """The local stack with two workers for `KILLED_SERVICE` and one for the others."""

    def env_for(self, name: str) -> dict[str, str]:
        env = super().env_for(name)
        env["WEB_CONCURRENCY"] = "2" if name == KILLED_SERVICE else "1"
        return env


@pytest.fixture(scope="session")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    built = REPO / "models"
    if not (built / "iris" / "1").is_dir():
        pytest.fail("models/ has no built-in models: run `make models` (make test does)")
    repository = copy_repository(built, tmp_path_factory.mktemp("chaos-repository") / "models")
    env = {
        "MAX_QUEUED_REQUESTS": str(MAX_QUEUED),
        # High enough that no test load reaches it: every answer the tests expect is exact.
        "RATE_LIMIT_PER_SECOND": "100000",
        "RATE_LIMIT_BURST": "100000",
        "TABULAR_TIMEOUT": str(GATEWAY_TIMEOUTS["tabular"]),
        "VISION_TIMEOUT": str(GATEWAY_TIMEOUTS["vision"]),
        "NLP_TIMEOUT": str(GATEWAY_TIMEOUTS["nlp"]),
        "HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    }
    stack = ChaosStack(
        ports={name: free_port() for name in SERVICES},
        run_dir=tmp_path_factory.mktemp("chaos-run"),
        repository=repository,
        extra_env=env,
    )
    try:
        stack.start_all()
        stack.wait_ready()
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture(scope="session")
def chaos_key(chaos_stack: LocalStack) -> str:
    return chaos_stack.create_key("chaos", "*")


# --- requests --------------------------------------------------------------------------------------------

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
IRIS_OIP = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
PHOTO = (ASSETS / "coffee.jpg").read_bytes()


def send(client: httpx.Client, kind: str) -> httpx.Response:
    """One request of `kind` (tabular, tabular-oip, vision, nlp) through the gateway."""
    if kind == "tabular":
        return client.post("/v1/tabular/iris", json=IRIS)
    if kind == "tabular-oip":
        return client.post("/v2/models/iris/infer", json=IRIS_OIP)
    if kind == "vision":
        return client.post("/v1/vision/classify", files={"file": ("coffee.jpg", PHOTO, "image/jpeg")})
    if kind == "nlp":
        return client.post("/v1/nlp/sentiment", json={"text": "a calm and lovely afternoon"})
    raise ValueError(kind)


def domain_of(kind: str) -> str:
    return kind.split("-", 1)[0]


@dataclass(frozen=True)
class Record:
    kind: str
    domain: str
    status: int  # 0: no HTTP answer (the client timed out or the connection failed)
    error: str  # the client-side exception's type, "" when an answer came
    started: float  # time.monotonic()
    ended: float
    retry_after: str | None = None
    server_timing: str | None = None  # the gateway's own account of where the time went

    @property
    def latency(self) -> float:
        return self.ended - self.started


@dataclass
class Load:
    """Closed-loop clients, one thread and one connection each, every one at a bounded rate."""

    base_url: str
    key: str
    # kind -> (connections, requests per second per connection)
    plan: dict[str, tuple[int, float]]
    records: list[Record] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for kind, (connections, rate) in self.plan.items():
            for _ in range(connections):
                thread = threading.Thread(target=self._run, args=(kind, rate), daemon=True)
                thread.start()
                self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(max(GATEWAY_TIMEOUTS.values()) + 2 * LATENCY_MARGIN)

    def _run(self, kind: str, rate: float) -> None:
        domain = domain_of(kind)
        timeout = GATEWAY_TIMEOUTS[domain] + 2 * LATENCY_MARGIN
        period = 1.0 / rate
        with httpx.Client(base_url=self.base_url, headers={"X-API-Key": self.key}, timeout=timeout) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = send(client, kind)
                    record = Record(
                        kind,
                        domain,
                        response.status_code,
                        "",
                        started,
                        time.monotonic(),
                        response.headers.get("retry-after"),
                    )
                except httpx.HTTPError as exc:
                    record = Record(kind, domain, 0, type(exc).__name__, started, time.monotonic())
                with self._lock:
                    self.records.append(record)
                next_at = max(next_at + period, time.monotonic())
                self._stop.wait(next_at - time.monotonic())

    def snapshot(self) -> list[Record]:
        with self._lock:
            return list(self.records)


def summary(records: list[Record]) -> dict[str, object]:
    """Figures per domain: requests, answers by status, worst latency."""
    out: dict[str, object] = {}
    for domain in sorted({r.domain for r in records}):
        mine = [r for r in records if r.domain == domain]
        statuses: dict[str, int] = {}
        for r in mine:
            label = str(r.status) if r.status else f"error:{r.error}"
            statuses[label] = statuses.get(label, 0) + 1
        out[domain] = {
            "requests": len(mine),
            "statuses": statuses,
            "worst_latency_s": round(max(r.latency for r in mine), 3),
        }
    return out


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[dict[str, object]]:
    """A dict the test fills with its figures; written to results/chaos/<test>.json (and a line printed)
    whether the test passes or fails, so a failure leaves its numbers behind."""
    figures: dict[str, object] = {"test": request.node.name, "scale": SCALE}
    yield figures
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{request.node.name}.json"
    path.write_text(json.dumps(figures, indent=2, default=_plain) + "\n")
    line = figures.get("line", "")
    print(f"\nchaos {request.node.name}: {line} ({path.relative_to(REPO)})")


def _plain(value: object) -> object:
    if isinstance(value, Record):
        return asdict(value)
    return str(value)


# --- processes -------------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The PIDs of `pid`'s children (a Gunicorn master's workers), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.extend(int(p) for p in task.read_text().split())
        except OSError:
            continue
    return sorted(set(found))


def is_gone(pid: int) -> bool:
    """True once `pid` has exited (gone, or a zombie nobody reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> float:
    """Poll `condition` (state another process changes) until true; the time it became true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return time.monotonic()
