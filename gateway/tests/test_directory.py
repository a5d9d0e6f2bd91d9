"""The model directory on its own: when it re-reads the services' indexes, and what it answers."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.directory import IndexUnavailable, ModelDirectory
from modelgate_core.errors import Conflict, NotFound, ServiceUnavailable
from modelgate_core.oip.types import RepositoryEntry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Indexes:
    """Each service's index, a count of reads, and an optional pause to make reads overlap."""

    def __init__(self) -> None:
        self.models: dict[str, list[tuple[str, str | None]]] = {
            "tabular": [("iris", "1"), ("iris", "2"), ("fraud", "1")],
            "nlp": [("sentiment", "1")],
        }
        self.down: set[str] = set()
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.asked: dict[str, asyncio.Event] = {}

    async def __call__(self, service: str) -> list[RepositoryEntry]:
        self.reads += 1
        # What the service holds when asked; the answer may then be held back by `gate`.
        answer = [RepositoryEntry(name=n, version=v, state="READY") for n, v in self.models[service]]
        down = service in self.down
        self.asked.setdefault(service, asyncio.Event()).set()
        if self.gate is not None:
            await self.gate.wait()
        if down:
            raise IndexUnavailable("refused")
        return answer


def directory(indexes: Indexes, clock: Clock) -> ModelDirectory:
    return ModelDirectory(
        ["tabular", "nlp"],
        indexes,
        ttl_seconds=2.0,
        stale_after_seconds=30.0,
        miss_interval_seconds=0.5,
        clock=clock,
    )


async def test_locates_models_and_versions() -> None:
    indexes, clock = Indexes(), Clock()
    models = directory(indexes, clock)
    iris = await models.locate("iris")
    assert (iris.service, iris.versions) == ("tabular", ("1", "2"))
    assert (await models.locate("sentiment", "1")).service == "nlp"
    assert indexes.reads == 2  # one read per service, for all three lookups
    with pytest.raises(NotFound, match="Unknown version '3' of model 'iris'"):
        await models.locate("iris", "3")
    with pytest.raises(NotFound, match="Unknown model 'nope'"):
        await models.locate("nope")


async def test_a_miss_rereads_at_once_but_at_most_every_half_second() -> None:
    indexes, clock = Indexes(), Clock()
    models = directory(indexes, clock)
    with pytest.raises(NotFound):
        await models.locate("new")  # first read, then one miss re-read
    reads = indexes.reads
    indexes.models["nlp"].append(("new", "1"))
    clock.now += 0.1
    with pytest.raises(NotFound):
        await models.locate("new")  # within 0.5 s of the last miss re-read: not read again
    assert indexes.reads == reads
    clock.now += 0.4
    assert (await models.locate("new")).service == "nlp"
    assert indexes.reads == reads + 2


async def test_concurrent_misses_share_one_read() -> None:
    indexes, clock = Indexes(), Clock()
    models = directory(indexes, clock)
    await models.locate("iris")
    indexes.models["tabular"].append(("late", "1"))
    indexes.reads = 0
    indexes.gate = asyncio.Event()
    lookups = [asyncio.create_task(models.locate("late")) for _ in range(10)]
    await asyncio.sleep(0)
    indexes.gate.set()
    found = await asyncio.gather(*lookups)
    assert {f.service for f in found} == {"tabular"}
    assert indexes.reads == 2  # one re-read of both services, shared by all ten


async def test_ttl_rereads_and_sees_a_model_move() -> None:
    indexes, clock = Indexes(), Clock()
    models = directory(indexes, clock)
    assert (await models.locate("fraud")).service == "tabular"
    indexes.models["tabular"].remove(("fraud", "1"))
    indexes.models["nlp"].append(("fraud", "1"))
    clock.now += 1.9
    assert (await models.locate("fraud")).service == "tabular"  # still fresh: not re-read
    clock.now += 0.1
    reads = indexes.reads
    # Stale: answered from the current view at once, while one re-read runs in the background.
    assert (await models.locate("fraud")).service == "tabular"
    await models.refresh()  # joins that re-read
    assert indexes.reads == reads + 2  # both services, once
    assert (await models.locate("fraud")).service == "nlp"


async def test_refresh_after_a_change_does_not_reuse_an_older_read() -> None:
    indexes, clock = Indexes(), Clock()
    models = directory(indexes, clock)
    await models.locate("iris")
    indexes.gate = asyncio.Event()
    indexes.asked.clear()
    running = asyncio.create_task(models.refresh())
    await indexes.asked.setdefault("nlp", asyncio.Event()).wait()
    indexes.models["nlp"].append(("loaded", "1"))  # changed while that read is under way
    forced = asyncio.create_task(models.refresh(reuse_running=False))
    await asyncio.sleep(0)
    indexes.gate.set()
    await asyncio.gather(running, forced)
    assert "loaded" in {e.name for e in models.entries()}


async def test_a_silent_service_keeps_its_models_until_they_age_out() -> None:
    indexes, clock = Indexes(), Clock()
    models = directory(indexes, clock)
    await models.locate("sentiment")
    indexes.down.add("nlp")
    clock.now += 10
    assert (await models.locate("sentiment")).service == "nlp"
    await models.refresh()  # the background re-read that call started
    assert (await models.locate("sentiment")).service == "nlp"
    stale = [e for e in models.entries() if e.name == "sentiment"]
    assert stale[0].state == "UNAVAILABLE" and stale[0].reason == "the nlp service is not answering"
    clock.now += 25  # 35 s after its last answer, 25 s after it was first found silent
    await models.refresh()
    assert (await models.locate("sentiment")).service == "nlp"
    clock.now += 5  # 30 s silent
    await models.refresh()
    with pytest.raises(ServiceUnavailable, match=r"Unknown model 'sentiment' .*not answering now: nlp"):
        await models.locate("sentiment")
    assert (await models.locate("iris")).service == "tabular"


async def test_a_name_two_services_claim_is_a_conflict(caplog: pytest.LogCaptureFixture) -> None:
    indexes, clock = Indexes(), Clock()
    indexes.models["nlp"].append(("iris", "7"))
    models = directory(indexes, clock)
    with caplog.at_level(logging.WARNING, logger="gateway.directory"), pytest.raises(Conflict) as raised:
        await models.locate("iris")
    assert raised.value.status_code == 409
    assert "tabular, nlp" in raised.value.message
    warnings = [r for r in caplog.records if r.getMessage() == "model claimed by several services"]
    assert len(warnings) == 1 and warnings[0].__dict__["services"] == ["tabular", "nlp"]
    clock.now += 3
    with pytest.raises(Conflict):
        await models.locate("iris")
    assert len([r for r in caplog.records if r.getMessage() == "model claimed by several services"]) == 1
    assert (await models.locate("fraud")).service == "tabular"  # the rest is unaffected


async def test_unsafe_names_from_an_index_are_ignored() -> None:
    indexes, clock = Indexes(), Clock()
    indexes.models["tabular"] += [("..", "1"), ("a/b", "1"), ("ok", ".."), ("x" * 65, "1")]
    models = directory(indexes, clock)
    await models.refresh()
    assert {e.name for e in models.entries()} == {"iris", "fraud", "sentiment"}
    for name in ("..", "a/b"):
        with pytest.raises(NotFound):
            await models.locate(name)


async def test_staleness_counts_from_the_first_silence_not_the_last_answer() -> None:
    """No traffic for a long time, then the service restarts: its models are still known."""
    indexes, clock = Indexes(), Clock()
    models = directory(indexes, clock)
    await models.locate("sentiment")
    clock.now += 3600  # an idle hour: nothing asked for a re-read
    indexes.down.add("nlp")
    await models.refresh()
    assert (await models.locate("sentiment")).service == "nlp"
