"""The rate limit is shared through Redis by every gateway worker: N allowed in all, the rest 429."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from devstack import LocalStack, free_port  # type: ignore[import-not-found]

pytestmark = pytest.mark.integration

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
BURST = 10
REQUESTS = 40


def test_limit_is_shared_across_gateway_workers(stack: LocalStack, redis_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"REDIS_URL": redis_url, "RATE_LIMIT_FAIL_OPEN": "false"}
    gateway = LocalStack(
        ports={**stack.ports, "gateway": free_port()}, run_dir=tmp_path, workers=3, extra_env=env
    )
    key = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.keys",
            "create",
            "--name",
            "shared",
            "--scopes",
            "tabular",
            "--rate",
            "0.001",
            "--burst",
            str(BURST),
        ],
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    gateway.start("gateway")
    try:
        gateway.wait_ready("gateway")

        def call(_: int) -> int:
            # A new connection per request, so the kernel spreads them over the workers.
            with httpx.Client(base_url=gateway.url("gateway"), headers={"X-API-Key": key}) as client:
                return client.post("/v1/tabular/iris", json=IRIS).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(call, range(REQUESTS)))
        time.sleep(0.3)
        pids = {
            line.split('"pid":')[1].split(",")[0]
            for line in (tmp_path / "gateway.log").read_text().splitlines()
            if '"modelgate.access"' in line and "/v1/tabular/iris" in line
        }
    finally:
        gateway.stop_all()
    assert codes.count(200) == BURST, codes
    assert codes.count(429) == REQUESTS - BURST
    assert len(pids) >= 2, "the requests should have been served by several workers"
