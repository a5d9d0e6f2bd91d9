"""Redis restarts under a running gateway: keys persist and no request fails on a stale connection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from devstack import LocalStack, free_port

pytestmark = pytest.mark.integration

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def test_keys_survive_and_no_request_fails(stack: LocalStack, tmp_path: Path, redis_starter) -> None:  # type: ignore[no-untyped-def]
    start_redis = redis_starter
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    redis = start_redis(port, redis_dir, persist=True)
    gateway = LocalStack(
        ports={**stack.ports, "gateway": free_port()},
        run_dir=tmp_path,
        workers=2,
        extra_env={"REDIS_URL": url, "KEY_CACHE_SECONDS": "0"},
    )
    try:
        key = subprocess.run(
            [sys.executable, "-m", "gateway.keys", "create", "--name", "durable", "--scopes", "tabular"],
            env={**os.environ, "REDIS_URL": url},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        gateway.start("gateway")
        gateway.wait_ready("gateway")

        def statuses(n: int) -> list[int]:
            codes = []
            for _ in range(n):  # a fresh connection each time, so both workers answer some
                with httpx.Client(base_url=gateway.url("gateway"), headers={"X-API-Key": key}) as client:
                    codes.append(client.post("/v1/tabular/iris", json=IRIS).status_code)
            return codes

        assert statuses(6) == [200] * 6
        redis.terminate()
        redis.wait(10)
        redis = start_redis(port, redis_dir, persist=True)
        assert statuses(10) == [200] * 10
    finally:
        gateway.stop_all()
        redis.terminate()
        redis.wait(10)
