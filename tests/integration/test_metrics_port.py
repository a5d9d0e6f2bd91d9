"""`METRICS_PORT`: the Gunicorn master serves every worker's metrics on an internal port, and the
public port has no `/metrics`. A real gateway under Gunicorn with two workers, no model service needed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack import SERVICES, LocalStack, free_port  # type: ignore[import-not-found]

pytestmark = pytest.mark.integration

REQUESTS = 20  # per generation of workers


def served(exposition: str, route: str) -> float:
    """The gateway's count of 200s on `route` in a scrape (0 when absent)."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "modelgate_http_requests_total" and sample.labels == {
                "service": "gateway",
                "route": route,
                "method": "GET",
                "status": "200",
            }:
                return float(sample.value)
    return 0.0


def workers_of(master: int) -> set[int]:
    """The live child processes of `master` (its Gunicorn workers)."""
    children = set()
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == master and fields[0] not in ("Z", "X"):
            children.add(int(entry.name))
    return children


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    """A gateway with METRICS_PORT set, two workers; yields (master, public URL, metrics URL) once it
    is live."""
    metrics_port = free_port()
    stack = LocalStack(
        ports={name: free_port() for name in SERVICES},  # the services' ports: nobody listens
        run_dir=tmp_path,
        workers=2,
        extra_env={"METRICS_PORT": str(metrics_port)},
    )
    stack.start("gateway")
    public, metrics = stack.url("gateway"), f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        deadline = time.monotonic() + 60
        while True:  # live, not ready: with no service up the gateway is rightly not ready
            assert stack.processes["gateway"].poll() is None, (tmp_path / "gateway.log").read_text()
            try:
                if httpx.get(public + "/health/live", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()
            time.sleep(0.1)
        yield stack.processes["gateway"], public, metrics
    finally:
        stack.stop_all()


def test_the_metrics_port_counts_every_workers_requests_and_the_public_port_has_none(
    gateway: tuple[subprocess.Popen[bytes], str, str],
) -> None:
    master, public, metrics = gateway

    def counted() -> float:
        return served(httpx.get(metrics, timeout=5).text, "/v2")

    def serve_some() -> None:
        for _ in range(REQUESTS):
            # A new connection each time, so that either worker may take it.
            assert httpx.get(public + "/v2", timeout=30).status_code == 200

    assert counted() == 0.0
    wait_until(lambda: len(workers_of(master.pid)) == 2, "two workers")
    first = workers_of(master.pid)
    serve_some()
    # A worker counts a request just after its answer has gone out: wait for the last ones to land.
    wait_until(lambda: counted() >= REQUESTS, f"{REQUESTS} requests counted")
    # Workers that die take nothing with them: their counts stay in the group's total, which no
    # worker's own registry could report (the new ones never saw those requests).
    for pid in first:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: len(workers_of(master.pid) - first) == 2, "two new workers")
    assert httpx.get(public + "/health/live", timeout=60).status_code == 200  # once one has started
    serve_some()
    wait_until(lambda: counted() >= 2 * REQUESTS, f"{2 * REQUESTS} requests counted")
    assert counted() == 2 * REQUESTS
    refused = httpx.get(public + "/metrics", timeout=5)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
