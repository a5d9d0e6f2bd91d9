"""SIGTERM during in-flight requests: every request still gets its answer, then the process exits."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from devstack import LocalStack, free_port  # type: ignore[import-not-found]

pytestmark = pytest.mark.integration

TEXTS = ["What a wonderful, happy day this has been, I loved every minute of it"] * 64


@pytest.mark.parametrize("name", ["gateway", "nlp"])
def test_sigterm_loses_no_in_flight_request(stack: LocalStack, api_key: str, tmp_path, name: str) -> None:  # type: ignore[no-untyped-def]
    # A second copy of one process, on its own port, so the shared stack is not disturbed.
    extra = LocalStack(
        ports={**stack.ports, name: free_port()},
        run_dir=tmp_path,
        workers=1,
        extra_env={"API_KEYS_FILE": str(stack.run_dir / "api_keys.json")},
    )
    extra.start(name)
    extra.wait_ready(name)
    proc = extra.processes[name]

    def call(_: int) -> int:
        with httpx.Client(base_url=extra.url(name), headers={"X-API-Key": api_key}, timeout=60) as client:
            return client.post("/v1/nlp/sentiment/batch", json={"texts": TEXTS}).status_code

    try:
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(call, i) for i in range(6)]
            time.sleep(0.5)  # the batches are queued behind one another in the model by now
            proc.send_signal(signal.SIGTERM)
            codes = [f.result() for f in futures]
        assert proc.wait(60) == 0
    finally:
        extra.stop_all()
    assert codes == [200] * 6
    log = (tmp_path / f"{name}.log").read_text()
    assert "SIGTERM received: draining in-flight requests" in log
