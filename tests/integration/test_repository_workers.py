"""Several Gunicorn workers of one service agree on the repository: an explicit load answers once
every worker serves the model, an unload once none does, and a deleted folder leaves them all."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import joblib
import pytest
from sklearn.datasets import load_iris
from sklearn.tree import DecisionTreeClassifier

from devstack import SERVICES, LocalStack, free_port

pytestmark = pytest.mark.integration

WORKERS = 3
# Enough requests that each of the workers answers several (the kernel spreads connections).
REQUESTS = 60


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, Path]]:
    run_dir = tmp_path_factory.mktemp("workers")
    repository = run_dir / "models"
    repository.mkdir()
    # A long poll interval: what the workers agree on here comes from the load/unload calls alone.
    stack = LocalStack(
        ports={name: free_port() for name in SERVICES},
        run_dir=run_dir,
        workers=WORKERS,
        repository=repository,
        extra_env={"MODEL_POLL_SECONDS": "3600"},
    )
    stack.start("tabular")
    try:
        stack.wait_ready("tabular")
        yield stack, repository
    finally:
        stack.stop_all()


def add_tree(repository: Path) -> DecisionTreeClassifier:
    features, target = load_iris(return_X_y=True)
    tree = DecisionTreeClassifier(random_state=0).fit(features, target)
    staging = repository.parent / "staging-tree"
    staging.mkdir()
    joblib.dump(tree, staging / "model.joblib")
    (staging / "model-settings.json").write_text(json.dumps({"runtime": "sklearn"}))
    (repository / "tree").mkdir()
    staging.rename(repository / "tree" / "1")
    return tree


def answers(url: str) -> dict[int, int]:
    """Status -> count over REQUESTS fresh connections (each may land on any worker)."""
    counts: dict[int, int] = {}
    body = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
    for _ in range(REQUESTS):
        with httpx.Client(timeout=10) as fresh:
            status = fresh.post(f"{url}/v2/models/tree/infer", json=body).status_code
        counts[status] = counts.get(status, 0) + 1
    return counts


def test_the_service_is_ready_once_every_worker_has_loaded(tabular: tuple[LocalStack, Path]) -> None:
    stack, _ = tabular
    reports = stack.control("tabular").workers()
    assert sorted(report["generation"] for report in reports.values()) == [0] * WORKERS


def test_load_and_unload_reach_every_worker(tabular: tuple[LocalStack, Path]) -> None:
    stack, repository = tabular
    url = stack.url("tabular")
    add_tree(repository)
    # No poll will find it for an hour: only the load call can make the workers take it.
    loaded = httpx.post(f"{url}/v2/repository/models/tree/load", timeout=120)
    assert loaded.status_code == 200, loaded.text
    assert answers(url) == {200: REQUESTS}

    unloaded = httpx.post(f"{url}/v2/repository/models/tree/unload", timeout=120)
    assert unloaded.status_code == 200, unloaded.text
    assert answers(url) == {503: REQUESTS}

    assert httpx.post(f"{url}/v2/repository/models/tree/load", timeout=120).status_code == 200
    assert answers(url) == {200: REQUESTS}


def test_a_deleted_folder_leaves_every_worker(tabular: tuple[LocalStack, Path]) -> None:
    stack, repository = tabular
    url = stack.url("tabular")
    if not (repository / "tree").exists():
        add_tree(repository)
    assert httpx.post(f"{url}/v2/repository/models/tree/load", timeout=120).status_code == 200
    shutil.rmtree(repository / "tree")
    # A load call names the model, and makes every worker look at the folder now.
    gone = httpx.post(f"{url}/v2/repository/models/tree/load", timeout=120)
    assert gone.status_code == 404, gone.text
    assert answers(url) == {404: REQUESTS}
