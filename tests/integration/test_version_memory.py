"""Memory of a second version: a one-worker nlp service loads version 2 of the sentiment model beside
version 1, serves it, then has it removed; the worker's resident memory must come back to within
MARGIN_MIB of what it was before version 2, while version 2 itself took at least GROWTH_MIB (so the
check measures a real load, not noise). The figures are printed (`pytest -s`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from polling import wait_for

from devstack import REPO, SERVICES, LocalStack, copy_repository, free_port

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
# A second ONNX session of the model (91 MB of weights) must show at least this much.
GROWTH_MIB = 40
# What the worker may keep after the unload: allocator pages glibc does not hand back.
MARGIN_MIB = 30
TEXT = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["what a lovely day"]}]}


@pytest.fixture(scope="module")
def nlp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, Path]]:
    run_dir = tmp_path_factory.mktemp("memory")
    repository = run_dir / "models"
    copy_repository(REPO / "models" / "sentiment", repository / "sentiment")
    stack = LocalStack(
        ports={name: free_port() for name in SERVICES},
        run_dir=run_dir,
        workers=1,
        repository=repository,
        extra_env={"MODEL_POLL_SECONDS": "0.5"},
    )
    stack.start("nlp")
    try:
        stack.wait_ready("nlp")
        yield stack, repository
    finally:
        stack.stop_all()


def worker_rss(stack: LocalStack) -> int:
    (worker,) = psutil.Process(stack.processes["nlp"].pid).children()
    return int(worker.memory_info().rss)


def settled_rss(stack: LocalStack) -> int:
    """The worker's RSS once it stops moving (three readings within 1 MiB), at most 10 s."""
    readings = [worker_rss(stack)]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.3)
        readings.append(worker_rss(stack))
        if max(readings[-3:]) - min(readings[-3:]) < MIB and len(readings) >= 3:
            break
    return readings[-1]


def versions(url: str) -> dict[str, str]:
    index = httpx.post(f"{url}/v2/repository/index", json={}, timeout=10).json()
    return {e["version"]: e["state"] for e in index if e["name"] == "sentiment"}


def serve(url: str, path: str, times: int = 20) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(times):
            answer = client.post(path, json=TEXT)
            assert answer.status_code == 200, answer.text


def test_a_second_version_is_given_back_when_it_goes(nlp: tuple[LocalStack, Path]) -> None:
    stack, repository = nlp
    url = stack.url("nlp")
    serve(url, "/v2/models/sentiment/infer")
    before = settled_rss(stack)

    (repository / "sentiment" / "model.json").write_text(json.dumps({"version_policy": {"all": {}}}))
    staging = copy_repository(repository / "sentiment" / "1", stack.run_dir / "staging-2")
    staging.rename(repository / "sentiment" / "2")
    wait_for(lambda: versions(url).get("2") == "READY", "version 2 loaded")
    serve(url, "/v2/models/sentiment/versions/2/infer")
    serve(url, "/v2/models/sentiment/versions/1/infer")
    with_two = settled_rss(stack)

    (repository / "sentiment" / "2").rename(stack.run_dir / "retired-2")
    wait_for(lambda: "2" not in versions(url), "version 2 unloaded")
    serve(url, "/v2/models/sentiment/infer")
    after = settled_rss(stack)

    figures = {"before_mib": before / MIB, "with_two_mib": with_two / MIB, "after_mib": after / MIB}
    print("\nsentiment worker RSS:", {k: round(v, 1) for k, v in figures.items()})
    assert with_two - before >= GROWTH_MIB * MIB, figures
    assert after - before <= MARGIN_MIB * MIB, figures
