"""Versions live, under load: wrk keeps 4 connections busy on iris's unversioned routes (OIP infer,
`:predict`, `/v1/tabular/iris`) through the real gateway and a two-worker tabular service while the test
adds version 2 (`make model-versions`' layout), moves a canary from 0 to 50 to 100 %, rolls back, canaries
again, promotes, and removes version 1. Every answer must be 200, and each phase's split (from the
`X-Model-Version` of every answer) must match what was configured: exactly for 0 and 100 %, within four
standard deviations of a binomial share for 50 % (about 4 x 0.5/sqrt(n), stated with the figures)."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from model_repository import publish_builtin, publish_second_versions
from polling import wait_for

from devstack import REPO, SERVICES, LocalStack, free_port

pytestmark = pytest.mark.integration

CONNECTIONS = 4
# Answers after a change returns but sent before it (in flight on a connection) are not counted.
SETTLE = 0.3
MEASURE = 2.5  # seconds of load measured per phase


# Windows that span a change (its own time), not a measured steady phase.
TRANSITIONS = ("adding version 2", "removing version 1")


@dataclass
class Answer:
    at: float
    status: int
    version: str
    route: str


@pytest.fixture(scope="module")
def tabular_and_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, Path, str]]:
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed: run scripts/ensure_test_services.sh (make test does)")
    run_dir = tmp_path_factory.mktemp("versions")
    repository = run_dir / "models"
    repository.mkdir()
    publish_builtin(REPO / "artifacts", repository, ["iris"])
    stack = LocalStack(
        ports={name: free_port() for name in SERVICES},
        run_dir=run_dir,
        workers=2,
        repository=repository,
        # The load measures the versions, not the key's rate limit.
        extra_env={
            "MODEL_POLL_SECONDS": "0.5",
            "RATE_LIMIT_PER_SECOND": "100000",
            "RATE_LIMIT_BURST": "100000",
        },
    )
    stack.start("tabular")
    stack.start("gateway")
    try:
        stack.wait_ready("tabular")
        key = stack.create_key("versions", "*")
        wait_for(lambda: _status(stack, key, "/v2/models/iris/ready") == 200, "iris ready via the gateway")
        yield stack, repository, key
    finally:
        stack.stop_all()


def _status(stack: LocalStack, key: str, path: str) -> int:
    try:
        return httpx.get(stack.url("gateway") + path, headers={"X-API-Key": key}, timeout=5).status_code
    except httpx.HTTPError:
        return 0


def index_states(stack: LocalStack, key: str) -> dict[str, str]:
    answer = httpx.post(
        stack.url("gateway") + "/v2/repository/index", headers={"X-API-Key": key}, json={}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    return {e["version"]: e["state"] for e in answer.json() if e["name"] == "iris"}


def traffic(
    stack: LocalStack, key: str, method: str, suffix: str = "", body: object = None
) -> dict[str, object]:
    answer = httpx.request(
        method,
        stack.url("gateway") + f"/v2/repository/models/iris/traffic{suffix}",
        headers={"X-API-Key": key},
        json=body,
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


def read_answers(prefix: Path) -> list[Answer]:
    answers = []
    for path in prefix.parent.glob(prefix.name + ".*"):
        for line in path.read_text().splitlines():
            at, status, version, route = line.split()
            answers.append(Answer(float(at), int(status), version, route))
    return sorted(answers, key=lambda a: a.at)


def test_traffic_calls_refuse_bad_input_clearly(tabular_and_gateway: tuple[LocalStack, Path, str]) -> None:
    stack, _, key = tabular_and_gateway
    url = stack.url("gateway") + "/v2/repository/models"
    headers = {"X-API-Key": key, "content-type": "application/json"}
    cases = [
        ("iris", b"{not json", 400, "Invalid traffic: body: Invalid JSON"),
        ("iris", b'{"canary": {"version": "two", "percent": 10}}', 400, "a version is a positive integer"),
        ("iris", b'{"canary": {"version": 1, "percent": 500}}', 400, "less than or equal to 100"),
        ("iris", b'{"canary": {"version": 7, "percent": 5}}', 400, "Model 'iris' has no version 7"),
        ("iris", b'{"defualt_version": "1"}', 400, "defualt_version: Extra inputs are not permitted"),
        # Only tabular runs here: a name nobody answering knows is 503 (a silent service may hold it).
        ("ghost", b'{"default_version": "1"}', 503, "Unknown model 'ghost' among the services that answer"),
    ]
    for name, body, status, message in cases:
        answer = httpx.put(f"{url}/{name}/traffic", content=body, headers=headers, timeout=10)
        assert answer.status_code == status, (body, answer.text)
        assert message in answer.json()["error"], (body, answer.text)
    promote = httpx.post(f"{url}/iris/traffic/promote", headers=headers, timeout=10)
    assert promote.status_code == 409 and "no canary to promote" in promote.json()["error"], promote.text


def shadow_counts(stack: LocalStack) -> dict[str, float]:
    """modelgate_shadow_comparisons_total of iris's shadow, by outcome, from the service's /metrics."""
    text = httpx.get(stack.url("tabular") + "/metrics", timeout=10).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("modelgate_shadow_comparisons_total{") and 'model="iris"' in line:
            outcome = line.split('outcome="')[1].split('"')[0]
            counts[outcome] = counts.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_a_shadow_sees_every_default_request_and_never_answers(
    tabular_and_gateway: tuple[LocalStack, Path, str],
) -> None:
    """Runs first: it leaves version 2 loaded and the traffic back on version 1 alone."""
    stack, repository, key = tabular_and_gateway
    publish_second_versions(REPO / "artifacts", repository)
    wait_for(lambda: index_states(stack, key).get("2") == "READY", "version 2 loaded")
    shadow = {"version": "2", "compare": ["predict"]}  # the class; probabilities differ by estimator
    applied = traffic(stack, key, "PUT", body={"default_version": "1", "shadow": shadow})
    assert applied["serving"] == {"default_version": "1", "canary": None, "shadow": "2"}
    before = shadow_counts(stack)
    flowers = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 5.1, 1.8], [6.0, 2.7, 5.1, 1.6]]
    with httpx.Client(base_url=stack.url("gateway"), headers={"X-API-Key": key}, timeout=10) as client:
        for i in range(40):
            sepal_length, sepal_width, petal_length, petal_width = flowers[i % len(flowers)]
            answer = client.post(
                "/v1/tabular/iris",
                json={
                    "sepal_length": sepal_length,
                    "sepal_width": sepal_width,
                    "petal_length": petal_length,
                    "petal_width": petal_width,
                },
            )
            assert answer.status_code == 200, answer.text
            # The default answers; the shadow's answer is never returned.
            assert answer.headers["x-model-version"] == "1" and answer.json()["model"]["model_version"] == "1"

    def compared() -> float:
        now = shadow_counts(stack)
        return sum(now.get(o, 0.0) - before.get(o, 0.0) for o in ("agree", "disagree", "error", "skipped"))

    wait_for(lambda: compared() == 40, "40 shadow comparisons", 20)
    now = shadow_counts(stack)
    assert now.get("error", 0.0) == before.get("error", 0.0) and now.get("skipped", 0.0) == before.get(
        "skipped", 0.0
    )
    outcomes = {o: now.get(o, 0.0) - before.get(o, 0.0) for o in ("agree", "disagree")}
    print("\nshadow outcomes over 40 requests:", outcomes)
    # Version 2 is another estimator: it agrees on the clear flowers (the first two of every four).
    assert outcomes["agree"] >= 20, outcomes
    assert traffic(stack, key, "PUT", body={"default_version": "1"})["serving"]["shadow"] is None  # type: ignore[index]


def test_every_request_answers_while_versions_change(
    tabular_and_gateway: tuple[LocalStack, Path, str],
) -> None:
    stack, repository, key = tabular_and_gateway
    prefix = stack.run_dir / "answers"
    wrk = subprocess.Popen(
        [
            "wrk", "-t", "2", "-c", str(CONNECTIONS), "-d", "600s", "--timeout", "10s",
            "-s", str(Path(__file__).with_name("versions_load.lua")),
            stack.url("gateway"), "--", key, str(prefix),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    # phase name -> (start, end, expected share of version 2 or None when only checked for 200s)
    phases: dict[str, tuple[float, float, float | None]] = {}

    def measure(name: str, share_of_2: float | None) -> None:
        start = time.time() + SETTLE
        time.sleep(SETTLE + MEASURE)
        phases[name] = (start, time.time(), share_of_2)

    try:
        wait_for(lambda: any(prefix.parent.glob(prefix.name + ".*")), "wrk's first answers", 30)
        measure("version 1 alone", 0.0)

        publish_second_versions(REPO / "artifacts", repository)  # model.json first, then iris/2
        changing = time.time()
        wait_for(lambda: index_states(stack, key).get("2") == "READY", "version 2 loaded")
        phases["adding version 2"] = (changing, time.time(), 0.0)  # the default stays 1 meanwhile
        measure("version 2 loaded, default 1", 0.0)

        for percent in (0, 50, 100):
            canary = {"version": 2, "percent": percent}
            applied = traffic(stack, key, "PUT", body={"default_version": "1", "canary": canary})
            assert applied["serving"] == {
                "default_version": "1",
                "canary": {"version": "2", "percent": percent},
                "shadow": None,
            }
            measure(f"canary {percent} %", percent / 100)

        rolled = traffic(stack, key, "POST", "/rollback")
        assert rolled["configured"] == {"default_version": "1"}
        measure("rolled back", 0.0)

        traffic(stack, key, "PUT", body={"default_version": "1", "canary": {"version": 2, "percent": 50}})
        measure("canary 50 % again", 0.5)
        promoted = traffic(stack, key, "POST", "/promote")
        assert promoted["configured"] == {"default_version": "2"}
        measure("promoted", 1.0)

        # Version 1 goes: moved out whole, as an operator would; its in-flight requests finish first.
        removing = time.time()
        (repository / "iris" / "1").rename(stack.run_dir / "iris-1-retired")
        wait_for(lambda: "1" not in index_states(stack, key), "version 1 unloaded")
        phases["removing version 1"] = (removing, time.time(), 1.0)
        measure("version 1 removed", 1.0)
    finally:
        wrk.send_signal(signal.SIGINT)
        summary, _ = wrk.communicate(timeout=30)

    answers = read_answers(prefix)
    report = {}
    for name, (start, end, share) in phases.items():
        window = [a for a in answers if start <= a.at < end]
        versions = [a.version for a in window]
        n = len(window)
        seen = versions.count("2") / n if n else float("nan")
        report[name] = {
            "requests": n,
            "errors": sum(a.status != 200 for a in window),
            "version 2 share": round(seen, 4),
            "routes": sorted({a.route for a in window}),
        }
        if share is not None:
            tolerance = 0.0 if share in (0.0, 1.0) else 4 * math.sqrt(share * (1 - share) / n)
            report[name]["tolerance"] = round(tolerance, 4)
    print("\nversions under load:", json.dumps(report, indent=1), "\nwrk:", summary, sep="\n")
    failed = [a for a in answers if a.status != 200]
    assert not failed, (len(failed), failed[:5])
    for name, (_, _, share) in phases.items():
        figures = report[name]
        if name not in TRANSITIONS:  # a change's own window may be short; a measured one is not
            assert figures["requests"] >= 30 and figures["routes"] == ["predict", "v1", "v2"], (name, figures)
        if share is not None:
            assert abs(figures["version 2 share"] - share) <= figures["tolerance"] + 1e-4, (name, figures)
    assert set(a.version for a in answers) == {"1", "2"}
    assert "Socket errors" not in summary and "Non-2xx" not in summary, summary

    # A request pinned to the version that is gone: 404 in the OIP error shape, not a 500.
    gone = httpx.post(
        stack.url("gateway") + "/v2/models/iris/versions/1/infer",
        headers={"X-API-Key": key},
        json={
            "inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 4], "data": [5.9, 3.0, 5.1, 1.8]}]
        },
        timeout=10,
    )
    assert gone.status_code == 404, gone.text
    assert gone.json()["error"] == "Unknown version '1' of model 'iris'"
