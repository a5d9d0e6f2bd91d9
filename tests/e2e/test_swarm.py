"""compose.yaml on Docker Swarm, for real: `docker stack deploy` (through deploy/swarm/stack.py) on a
single-node swarm, two nlp-service replicas that share the traffic, a rolling update of the nlp service
under wrk's load that loses no request, and `docker stack rm` leaving nothing behind. The tests run in
file order on one stack (tests/e2e/swarm.py); the machine's swarm state is left as it was found.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.swarm import SwarmStack, Wrk, swarm_state

pytestmark = pytest.mark.e2e

POSITIVE = "I love this, what a wonderful day"
SENTIMENT = "/v1/nlp/sentiment"
# Tasks an update replaces: each one's successor must be healthy first (start-first), so two make it a
# rolling update, not a restart.
NLP_REPLICAS = 2


@pytest.fixture(scope="module")
def swarm() -> Iterator[SwarmStack]:
    state_before = swarm_state()[0]
    started = time.monotonic()
    stack = SwarmStack.open()
    up_seconds = time.monotonic() - started
    print(f"\n[swarm] stack {stack.name}: every task running, gateway ready {up_seconds:.1f}s after deploy")
    try:
        yield stack
    finally:
        stack.close()
        assert swarm_state()[0] == state_before, "the swarm state was not left as found"


@pytest.fixture(scope="module")
def client(swarm: SwarmStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=swarm.base_url, headers={"X-API-Key": swarm.api_key}, timeout=30) as http:
        yield http


def test_stack_runs_two_nlp_replicas_behind_dns_round_robin(swarm: SwarmStack, client: httpx.Client) -> None:
    assert len(swarm.running_tasks("nlp-service")) == NLP_REPLICAS
    for service in ("tabular-service", "vision-service", "nlp-service", "redis"):
        spec = swarm.inspect_service(service)["Spec"]
        assert isinstance(spec, dict)
        # dnsrr: the name resolves to each task, which the gateway's ReplicaResolver spreads over.
        assert spec["EndpointSpec"]["Mode"] == "dnsrr", service
    gateway_ports = swarm.inspect_service("gateway")["Endpoint"]
    assert isinstance(gateway_ports, dict)
    assert [(p["PublishedPort"], p["PublishMode"]) for p in gateway_ports["Ports"]] == [(swarm.port, "host")]
    ready = client.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"tabular": "ready", "vision": "ready", "nlp": "ready", "redis": "ready"}
    answer = client.post(SENTIMENT, json={"text": POSITIVE})
    assert answer.status_code == 200, answer.text
    assert answer.json()["label"] == "positive"


def test_requests_spread_over_both_replicas(swarm: SwarmStack, client: httpx.Client) -> None:
    # Our own request IDs (the gateway passes them on): the count is of these 40 requests only, whatever
    # else the access log flushes in the same moment.
    marker = f"swarm-spread-{uuid.uuid4().hex[:12]}"
    since = swarm.now()
    for number in range(40):
        answer = client.post(
            SENTIMENT, json={"text": POSITIVE}, headers={"X-Request-ID": f"{marker}-{number}"}
        )
        assert answer.status_code == 200, answer.text
    containers = swarm.containers("nlp-service")
    assert len(containers) == NLP_REPLICAS
    # The access log is written in batches (LOG_FLUSH_SECONDS): wait for all 40 lines.
    deadline = time.monotonic() + 10
    while True:
        served = [swarm.requests_served(c, since, f'"request_id":"{marker}-') for c in containers]
        if sum(served) >= 40 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(f"[swarm] 40 requests over {NLP_REPLICAS} nlp-service tasks: {served}")
    assert sum(served) == 40, served
    assert all(n >= 5 for n in served), served  # round-robin per request, not stuck on one task


def test_rolling_update_under_load_loses_no_request(swarm: SwarmStack, tmp_path: Path) -> None:
    """`docker service update --force`: every nlp task replaced one at a time (start-first: the new one
    healthy before the old one gets SIGTERM, which then drains for DRAIN_SECONDS) while wrk keeps 8
    connections busy through the gateway. Not one request may fail or time out."""
    before = set(swarm.running_tasks("nlp-service"))
    body = json.dumps({"text": POSITIVE})
    load = Wrk(f"{swarm.base_url}{SENTIMENT}", body, swarm.api_key, tmp_path)
    try:
        # Under load before the update starts: wait until the services log requests from wrk.
        deadline, since = time.monotonic() + 30, swarm.now()
        while (
            sum(
                swarm.requests_served(c, since, f'"path":"{SENTIMENT}"')
                for c in swarm.containers("nlp-service")
            )
            < 20
        ):
            assert time.monotonic() < deadline, "wrk's requests did not reach the nlp service"
            assert load.process.poll() is None, load.output.read_text()
            time.sleep(0.5)
        started = time.monotonic()
        update, state = swarm.update("nlp-service")
        update_seconds = time.monotonic() - started
    finally:
        result = load.stop()
    after = set(swarm.running_tasks("nlp-service"))
    print(
        f"[swarm] rolling update of {NLP_REPLICAS} nlp tasks: {update_seconds:.1f}s; under load "
        f"{result.requests} requests in {result.seconds:.1f}s ({result.requests / result.seconds:.1f}/s), "
        f"{result.non_2xx} non-2xx, socket errors {result.socket_errors}"
    )
    assert update.returncode == 0, update.stderr
    assert state == "completed", state
    assert len(after) == NLP_REPLICAS and not after & before, (before, after)
    assert result.requests >= 200, result.output
    assert result.errors == 0, result.output


def test_stack_rm_leaves_nothing_behind(swarm: SwarmStack) -> None:
    """`docker stack rm` removes the services, their containers and the networks; the named volumes
    (Redis's keys, the model services' traffic) stay, as with `docker compose down` without -v, until
    removed on purpose."""
    swarm.stack_rm()
    left = swarm.leftovers()
    kept = sorted(
        swarm.service(v) for v in ("nlp-traffic", "redis-data", "tabular-traffic", "vision-traffic")
    )
    assert {**left, "volumes": sorted(left["volumes"])} == {
        "services": [], "containers": [], "networks": [], "volumes": kept
    }, left  # fmt: skip
    swarm.remove_volumes()
    assert swarm.leftovers() == {"services": [], "containers": [], "networks": [], "volumes": []}
