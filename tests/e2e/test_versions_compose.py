"""Versions in the compose stack: a second iris version dropped into the mounted repository, a canary
set by an admin call through the gateway, and that call's traffic still in force after the tabular
container restarts (it lives on the service's own volume, written by the image's uid 1000)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from model_repository import publish_second_versions
from polling import wait_for

if TYPE_CHECKING:
    from tests.e2e.conftest import ComposeStack

REPO = Path(__file__).resolve().parents[2]

FLOWER = {"sepal_length": 5.9, "sepal_width": 3.0, "petal_length": 5.1, "petal_width": 1.8}


def answering_versions(client: httpx.Client, times: int = 20) -> set[str]:
    versions = set()
    for _ in range(times):
        answer = client.post("/v1/tabular/iris", json=FLOWER)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-model-version"] == answer.json()["model"]["model_version"]
        versions.add(answer.headers["x-model-version"])
    return versions


def test_a_canary_set_through_the_gateway_survives_a_restart(
    stack: ComposeStack, client: httpx.Client
) -> None:
    publish_second_versions(REPO / "artifacts", stack.repository)
    for path in (stack.repository / "iris").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)  # the containers read it as uid 1000
    (stack.repository / "iris" / "model.json").chmod(0o644)
    created = stack.run(
        "exec", "-T", "gateway", "python", "-m", "gateway.keys", "create",
        "--name", "e2e-versions", "--scopes", "admin,tabular",
    )  # fmt: skip
    admin = {"X-API-Key": next(t for t in created.stdout.split() if t.startswith("mg_"))}
    traffic_url = f"{stack.base_url}/v2/repository/models/iris/traffic"

    def ready_versions() -> list[str]:
        answer = httpx.get(f"{stack.base_url}/v2/models/iris", headers=admin, timeout=10)
        return list(answer.json().get("versions", [])) if answer.status_code == 200 else []

    wait_for(lambda: ready_versions() == ["1", "2"], "iris version 2 served beside version 1", 90, 0.5)
    assert answering_versions(client) == {"1"}  # model.json keeps 1 the default

    canary = {"default_version": "1", "canary": {"version": "2", "percent": 100}}
    applied = httpx.put(traffic_url, json=canary, headers=admin, timeout=60)
    assert applied.status_code == 200, applied.text
    assert applied.json()["source"] == "admin"
    assert answering_versions(client) == {"2"}  # every tabular worker follows before the call answers

    try:
        stack.run("restart", "tabular-service", timeout=180)
        stack.wait_healthy("tabular-service")

        def tabular_back() -> bool:
            return client.post("/v1/tabular/iris", json=FLOWER).status_code == 200

        wait_for(tabular_back, "tabular back through the gateway", 90, 0.5)
        assert answering_versions(client) == {"2"}
        kept = httpx.get(traffic_url, headers=admin, timeout=10).json()
        assert kept["source"] == "admin" and kept["configured"] == canary, kept
    finally:
        rolled = httpx.post(f"{traffic_url}/rollback", headers=admin, timeout=60)
    assert rolled.status_code == 200, rolled.text
    assert answering_versions(client) == {"1"}
