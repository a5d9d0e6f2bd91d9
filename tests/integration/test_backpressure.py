"""Overload over real processes: the tabular service (one worker, MAX_QUEUED_REQUESTS=3, one model slot)
behind the real gateway, serving a model whose slot the test holds (tests/integration/gated_model.py).

- A burst far over capacity: exactly the requests over the bound get 503 with Retry-After at once,
  while the model is still busy; the accepted ones then succeed; the gateway's circuit stays closed.
- A gateway that gives up (TABULAR_TIMEOUT=1, so it sends X-Request-Deadline-Ms: 1000): the service
  drops the request it still had queued instead of running the model for nobody.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest

from devstack import LocalStack, free_port

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gated_model import GatedRegressor  # noqa: E402  (the service imports it by this name too)

pytestmark = pytest.mark.integration

BOUND = 3
INFER = "/v2/models/gated/infer"


@dataclass
class Overload:
    service: LocalStack  # tabular + a gateway that waits 60 s
    impatient: LocalStack  # a second gateway in front of the same service that waits 1 s
    keys: dict[str, str]
    gate: Path
    calls: Path

    def ran(self) -> list[int]:
        """Rows of every model call so far."""
        return [int(line) for line in self.calls.read_text().split()] if self.calls.exists() else []


def body(*row: float) -> dict[str, object]:
    return {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP64", "data": list(row)}]}


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll `condition` (state another process changes) until true; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def dropped(stack: LocalStack, reason: str) -> float:
    text = httpx.get(stack.url("tabular") + "/metrics", timeout=10).text
    prefix = f'modelgate_dropped_requests_total{{model="gated",reason="{reason}"}} '
    values = [float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix)]
    return sum(values)


@pytest.fixture(scope="module")
def overload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Overload]:
    base = tmp_path_factory.mktemp("backpressure")
    gate, calls = base / "gate", base / "calls"
    folder = base / "models" / "gated" / "1"
    folder.mkdir(parents=True)
    (folder / "model-settings.json").write_text('{"runtime": "sklearn"}')
    model = GatedRegressor(gate=str(gate), calls=str(calls)).fit(np.zeros((1, 2)))
    joblib.dump(model, folder / "model.joblib")

    ports = {name: free_port() for name in ("tabular", "gateway", "vision", "nlp")}
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        "PYTHONPATH": path,
        "MAX_QUEUED_REQUESTS": str(BOUND),
        "INFERENCE_CONCURRENCY": "1",
        "TABULAR_TIMEOUT": "60",
        "LOG_LEVEL": "WARNING",
    }
    (base / "run").mkdir()
    (base / "run-impatient").mkdir()
    service = LocalStack(ports, base / "run", repository=base / "models", extra_env=env)
    impatient = LocalStack(
        {**ports, "gateway": free_port()},
        base / "run-impatient",
        repository=base / "models",
        extra_env={**env, "TABULAR_TIMEOUT": "1"},
    )
    try:
        service.start("tabular")
        service.start("gateway")
        impatient.start("gateway")
        service.wait_ready("tabular", timeout=120)
        keys = {
            "service": service.create_key("bp", "tabular"),
            "impatient": impatient.create_key("bp", "tabular"),
        }
        for stack, key in ((service, keys["service"]), (impatient, keys["impatient"])):
            url = stack.url("gateway") + "/v2/models/gated/ready"
            wait_for(lambda url=url, key=key: _status(url, key) == 200, f"{url} to answer 200", timeout=120)
        yield Overload(service, impatient, keys, gate, calls)
    finally:
        gate.touch()  # never leave a model thread waiting
        impatient.stop_all()
        service.stop_all()


def _status(url: str, key: str) -> int:
    try:
        return httpx.get(url, headers={"X-API-Key": key}, timeout=5).status_code
    except httpx.HTTPError:
        return 0


@pytest.fixture
def shut(overload: Overload) -> Iterator[Overload]:
    """The gate shut, the model idle, and nothing left waiting at the end."""
    overload.gate.unlink(missing_ok=True)
    yield overload
    overload.gate.touch()


async def test_a_burst_far_over_capacity_gets_fast_503s_and_the_accepted_requests_succeed(
    shut: Overload,
) -> None:
    over = 20
    refused_before = dropped(shut.service, "queue_full")
    ran_before = len(shut.ran())
    async with httpx.AsyncClient(
        base_url=shut.service.url("gateway"),
        headers={"X-API-Key": shut.keys["service"]},
        timeout=90,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    ) as client:
        first = asyncio.create_task(client.post(INFER, json=body(1, 2)))
        await asyncio.to_thread(wait_for, lambda: len(shut.ran()) == ran_before + 1, "the model to start")

        # The model is busy: BOUND requests may wait for it, the `over` after them may not.
        burst = [asyncio.create_task(client.post(INFER, json=body(i, 0.5))) for i in range(BOUND + over)]
        for refusals, next_done in enumerate(asyncio.as_completed(burst, timeout=30), start=1):
            assert (await next_done).status_code == 503
            if refusals == over:
                break
        # Every refusal came back while the model was still held: none waited for the slot.
        assert not shut.gate.exists() and not first.done()
        assert sum(task.done() for task in burst) == over

        shut.gate.touch()
        assert (await first).json()["outputs"][0]["data"] == [3.0]
        answers = await asyncio.gather(*burst)
        refused = [r for r in answers if r.status_code == 503]
        accepted = {i: r for i, r in enumerate(answers) if r.status_code != 503}
        assert len(refused) == over
        for response in refused:
            assert response.headers["retry-after"] == "1"
            error = response.json()
            assert error["code"] == "service_unavailable" and "busy" in error["error"]
            assert error["request_id"] == response.headers["x-request-id"]
        assert len(accepted) == BOUND
        for i, response in accepted.items():
            assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [i + 0.5]
        # The model ran the accepted requests only; the gateway did not count the service's refusals
        # as failures (five in a row would have opened its circuit): the next request is served.
        assert len(shut.ran()) == ran_before + 1 + BOUND
        after = await client.post(INFER, json=body(2, 2))
        assert after.status_code == 200 and after.json()["outputs"][0]["data"] == [4.0]
    assert dropped(shut.service, "queue_full") == refused_before + over


async def test_a_request_the_gateway_gave_up_on_is_dropped_before_the_model_runs(shut: Overload) -> None:
    late_before = dropped(shut.service, "deadline")
    ran_before = len(shut.ran())
    async with (
        httpx.AsyncClient(
            base_url=shut.service.url("gateway"), headers={"X-API-Key": shut.keys["service"]}, timeout=90
        ) as patient,
        httpx.AsyncClient(
            base_url=shut.impatient.url("gateway"), headers={"X-API-Key": shut.keys["impatient"]}, timeout=90
        ) as hasty,
    ):
        first = asyncio.create_task(patient.post(INFER, json=body(1, 2)))
        await asyncio.to_thread(wait_for, lambda: len(shut.ran()) == ran_before + 1, "the model to start")
        # Queued behind the busy model; this gateway waits 1 s, says so, and gives up.
        timed_out = await hasty.post(INFER, json=body(5, 5))
        assert timed_out.status_code == 504 and timed_out.json()["code"] == "upstream_timeout"
        # The service's deadline is the budget counted from the request's arrival, which came before
        # the gateway's 504: a second after that, it has certainly passed.
        await asyncio.sleep(1.05)
        assert len(shut.ran()) == ran_before + 1 and not first.done()
        shut.gate.touch()
        assert (await first).status_code == 200
    await asyncio.to_thread(
        wait_for, lambda: dropped(shut.service, "deadline") == late_before + 1, "the service to drop it"
    )
    assert len(shut.ran()) == ran_before + 1  # the model never ran for the request nobody waited for
