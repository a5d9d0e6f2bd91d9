"""`kill -9` under load: one tabular worker, then the whole tabular service, then it comes back.

Load runs through the gateway on every domain the whole time. What must hold:
- no 500 and no transport error anywhere, and no request waits past the gateway's timeout for its domain;
- the other domains answer 200 to every request (the rate limit is set far above the load);
- the worker kill costs at most the requests that were in flight when it died (502: the gateway's
  connection was cut mid-request); the surviving worker answers everything after that;
- during the outage the tabular domain answers 502 or 503 only: 502 for a request the kill cut
  mid-flight (the gateway had sent it, the connection died: it cannot know whether the model ran), 503
  for every request sent after (nothing listens: connection refused, or the circuit is open);
- it answers 200 again within `RECOVERY_BOUND` seconds of the service being ready.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from devstack import LocalStack

from .conftest import (
    GATEWAY_TIMEOUTS,
    KILLED_SERVICE,
    LATENCY_MARGIN,
    SCALE,
    Load,
    Record,
    children,
    is_gone,
    send,
    summary,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

# The gateway's circuit breaker retries a failed service after 5 s; a little more for the probe itself.
RECOVERY_BOUND = 10.0
PLAN = {"tabular": (2, 15.0), "tabular-oip": (1, 15.0), "vision": (1, 2.0), "nlp": (1, 4.0)}
TABULAR_CONNECTIONS = PLAN["tabular"][0] + PLAN["tabular-oip"][0]


def test_kill_a_worker_then_the_service_under_load(
    chaos_stack: LocalStack, chaos_key: str, report: dict[str, object]
) -> None:
    master = chaos_stack.processes[KILLED_SERVICE].pid
    workers = children(master)
    assert len(workers) == 2, workers
    phase = 2.0 * SCALE
    with Load(chaos_stack.url("gateway"), chaos_key, PLAN) as load:
        time.sleep(phase)  # the steady state the faults are compared with

        worker_killed = time.monotonic()
        os.kill(workers[0], signal.SIGKILL)
        worker_dead = wait_for(lambda: is_gone(workers[0]), "the killed worker to exit", 10)
        # Gunicorn forks a replacement; it must not take traffic it cannot serve.
        wait_for(lambda: len(children(master)) == 2, "Gunicorn to replace the worker", 30)
        time.sleep(phase)

        group = [master, *children(master)]
        service_killed = time.monotonic()
        os.killpg(master, signal.SIGKILL)  # the master and every worker: its own process group
        chaos_stack.stop(KILLED_SERVICE, signal.SIGKILL)  # reaps it and closes its lifeline
        service_dead = wait_for(lambda: all(is_gone(pid) for pid in group), "the service's processes", 10)
        time.sleep(phase)

        restarted = time.monotonic()
        chaos_stack.start(KILLED_SERVICE)
        chaos_stack.wait_ready(KILLED_SERVICE, timeout=120)
        ready = time.monotonic()
        # Enough time after readiness to see recovery and a steady state again.
        time.sleep(RECOVERY_BOUND / 2 + phase)
    records = load.snapshot()

    tabular = sorted((r for r in records if r.domain == "tabular"), key=lambda r: r.started)
    # Recovered: from the first 200 after which every tabular request is 200.
    returned = [r for r in tabular if r.started >= restarted]
    last_failure = max((r.started for r in returned if r.status != 200), default=restarted)
    back = [r for r in returned if r.started > last_failure]
    recovered_at = back[0].started if back else None
    recovery = None if recovered_at is None else round(recovered_at - ready, 3)
    report.update(
        summary=summary(records),
        outage_s=round(restarted - service_killed, 3),
        kill_to_exit_s=round(service_dead - service_killed, 3),
        service_start_to_ready_s=round(ready - restarted, 3),
        recovery_after_ready_s=recovery,
        # Seconds from the worker kill: the phases, and every tabular answer that was not a 200.
        phases={
            name: round(at - worker_killed, 3)
            for name, at in (
                ("worker_dead", worker_dead),
                ("service_killed", service_killed),
                ("service_dead", service_dead),
                ("restarted", restarted),
                ("ready", ready),
            )
        },
        not_200=[
            (r.kind, r.status, round(r.started - worker_killed, 3), round(r.latency, 3))
            for r in tabular
            if r.status != 200
        ],
        restart_504s=sum(r.status == 504 for r in tabular),
        worker_kill_502s=sum(worker_killed <= r.ended < service_killed and r.status == 502 for r in tabular),
        line=f"{len(records)} requests, 200 again {recovery} s after the service was ready, "
        f"worst latency {max(r.latency for r in records):.2f} s",
    )

    def bad(selected: list[Record], allowed: set[int]) -> list[Record]:
        return [r for r in selected if r.status not in allowed]

    unanswered = [r for r in records if r.status == 0]
    assert not unanswered, unanswered[:5]
    assert not [r for r in records if r.status == 500]
    late = [r for r in records if r.latency > GATEWAY_TIMEOUTS[r.domain] + LATENCY_MARGIN]
    assert not late, late[:5]
    others = [r for r in records if r.domain != "tabular"]
    assert others and not bad(others, {200}), bad(others, {200})[:5]

    before = [r for r in tabular if r.ended < worker_killed]
    assert before and not bad(before, {200})
    # In flight when the worker died: answered (200) or cut (502).
    cut = [r for r in tabular if r.started < worker_dead and worker_killed <= r.ended < service_killed]
    assert not bad(cut, {200, 502}), bad(cut, {200, 502})[:5]
    # Sent after: the survivor's 200, except that a pooled gateway connection to the dead worker whose
    # close the gateway has not yet noticed fails on its next use, and the gateway does not retry a
    # request that may have been sent (gateway/gateway/transport.py): one 502 per such connection at
    # most, and the gateway holds no more connections to tabular than requests in flight to it.
    after_worker = [r for r in tabular if worker_dead <= r.started and r.ended < service_killed]
    assert after_worker and not bad(after_worker, {200, 502}), bad(after_worker, {200, 502})[:5]
    stale = [r for r in after_worker if r.status == 502]
    assert len(stale) <= TABULAR_CONNECTIONS, stale

    cut = [r for r in tabular if r.started < service_killed <= r.ended]
    assert not bad(cut, {200, 502}), bad(cut, {200, 502})[:5]
    # Sent while the killed processes were still exiting: a connection the kernel accepted for them is
    # reset (502), one after their listening socket closed is refused (503).
    dying = [r for r in tabular if service_killed <= r.started < service_dead]
    assert not bad(dying, {502, 503}), bad(dying, {502, 503})[:5]
    # The new master listens before its first worker accepts, so a request that reaches it then waits in
    # the backlog; if the worker takes longer than the gateway's timeout to start, that is a 504 after
    # exactly the timeout (never sooner). Those are checked here and left out below.
    timed_out = [r for r in tabular if r.status == 504]
    assert all(r.started >= service_dead for r in timed_out), timed_out
    assert all(r.latency >= GATEWAY_TIMEOUTS["tabular"] - 0.05 for r in timed_out), timed_out
    returned = [r for r in returned if r.status != 504]
    # Nothing listens (connection refused, then the open circuit): the gateway's own 503.
    down = [r for r in tabular if service_dead <= r.started < restarted and r.status != 504]
    assert down and not bad(down, {503}), bad(down, {503})[:5]
    # Started, models still loading: the service's own 503, until its workers (two, each loading on its
    # own) are ready one after the other: 200 from a ready one, 503 from one still loading. (The OIP
    # route answers 404 meanwhile, a bug that test_oip_answers_503_while_the_service_loads guards;
    # those requests are left out here.)
    assert recovered_at is not None, "the tabular domain never answered 200 steadily again"
    loading = [r for r in returned if r.started < recovered_at and r.kind == "tabular"]
    assert loading and not bad(loading, {200, 503}), bad(loading, {200, 503})[:5]
    assert loading[0].status == 503
    oip = [r for r in returned if r.started < recovered_at and r.kind == "tabular-oip"]
    assert not bad(oip, {200, 503, 404}), bad(oip, {200, 503, 404})[:5]  # 404: the bug named above
    # Within the bound of the service being ready (negative: before wait_ready's next poll saw it).
    assert recovered_at - ready <= RECOVERY_BOUND
    assert max(r.started for r in tabular) - recovered_at >= phase, "too little seen after recovery"


def test_oip_answers_503_while_the_service_loads(chaos_stack: LocalStack, chaos_key: str) -> None:
    """README: 503 while a model is not loaded. A client that reads 404 drops a model that exists.

    As the README says of a restart, a request caught in the new master's backlog before its first
    worker accepts is a 504 after exactly the gateway's timeout (a slow start on a loaded machine);
    such answers are checked for that and left out."""
    chaos_stack.stop(KILLED_SERVICE)
    chaos_stack.start(KILLED_SERVICE)
    seen: list[int] = []
    other: list[str] = []  # what any answer other than 503 before the first 200 said
    backlog: list[tuple[float, str]] = []  # each 504's latency and error code
    try:
        with httpx.Client(
            base_url=chaos_stack.url("gateway"), headers={"X-API-Key": chaos_key}, timeout=10
        ) as client:
            while not seen or seen[-1] != 200:
                assert len(seen) < 5000, "the tabular service never answered 200"
                started = time.monotonic()
                answer = send(client, "tabular-oip")
                if answer.status_code == 504:
                    backlog.append((time.monotonic() - started, answer.json()["code"]))
                    continue
                seen.append(answer.status_code)
                if answer.status_code not in (200, 503):
                    other.append(f"{answer.status_code} {answer.text}")
                time.sleep(0.02)
    finally:
        chaos_stack.wait_ready(KILLED_SERVICE, timeout=120)
    assert set(seen[:-1]) == {503}, other[:3]
    timeout = GATEWAY_TIMEOUTS["tabular"]
    assert all(code == "upstream_timeout" and latency >= timeout - 0.05 for latency, code in backlog), backlog
