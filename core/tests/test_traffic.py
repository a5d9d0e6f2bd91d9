"""Versions side by side: the version policy, the default, canary splits, shadow copies, admin changes
of the traffic and how they meet edits of model.json; on the real repository with the doubler."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from modelgate_core.errors import BadRequest, Conflict, NotFound
from modelgate_core.repository.policy import Canary, ModelPolicy, Shadow, Traffic
from modelgate_core.repository.traffic import disagreements


def states(repository: Any) -> dict[tuple[str, str | None], tuple[str, str]]:
    return {(e.name, e.version): (e.state, e.reason) for e in repository.index()}


def write_policy(root: Path, name: str, policy: dict[str, Any]) -> None:
    (root / name / "model.json").write_text(json.dumps(policy))


async def answer(repository: Any, name: str, version: str | None = None) -> float:
    """The factor of the version that answers (the doubler returns factor * x for x = 1)."""
    routed = repository.route(name, version)
    return float((await routed.infer({"x": np.asarray([1.0])}))["y"][0])


def shadow_count(model: str, version: str, outcome: str) -> float:
    labels = {"model": model, "version": version, "outcome": outcome}
    return REGISTRY.get_sample_value("modelgate_shadow_comparisons_total", labels) or 0.0


async def shadowed(root: Path, control_dir: Path, write_version: Any, make_repository: Any) -> Any:
    """A started repository where model `s` version 1 (factor 2) is the default and version 2 (the same
    factor: it agrees) its shadow."""
    write_version(root, "s", "1", factor=2)
    write_version(root, "s", "2", factor=2)
    write_policy(root, "s", {"version_policy": {"all": {}}, "default_version": "1", "shadow": {"version": 2}})
    repository = make_repository(root, control_dir)
    await repository.start()
    return repository


@pytest.fixture
def three_versions(repo_root: Path, write_version: Any) -> Path:
    for version, factor in (("1", 1), ("2", 2), ("3", 3)):
        write_version(repo_root, "m", version, factor=factor)
    return repo_root


async def test_the_default_policy_serves_only_the_latest_version(
    three_versions: Path, control_dir: Path, make_repository: Any
) -> None:
    repository = make_repository(three_versions, control_dir)
    await repository.start()
    assert states(repository) == {
        ("m", "1"): ("UNAVAILABLE", "not in the version policy"),
        ("m", "2"): ("UNAVAILABLE", "not in the version policy"),
        ("m", "3"): ("READY", ""),
    }
    assert await answer(repository, "m") == 3.0
    with pytest.raises(NotFound, match="Unknown version '1'"):
        repository.route("m", "1")


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ({"latest": {"num_versions": 2}}, ["2", "3"]),
        ({"all": {}}, ["1", "2", "3"]),
        ({"specific": {"versions": [1, "3"]}}, ["1", "3"]),
    ],
)
async def test_version_policies(
    three_versions: Path, control_dir: Path, make_repository: Any, policy: dict[str, Any], served: list[str]
) -> None:
    write_policy(three_versions, "m", {"version_policy": policy})
    repository = make_repository(three_versions, control_dir)
    await repository.start()
    assert repository.versions_of("m") == served
    for version in served:
        assert await answer(repository, "m", version) == float(version)


async def test_a_version_the_traffic_names_is_served_even_outside_the_policy(
    three_versions: Path, control_dir: Path, make_repository: Any
) -> None:
    write_policy(three_versions, "m", {"default_version": 1})
    repository = make_repository(three_versions, control_dir)
    await repository.start()
    assert repository.versions_of("m") == ["1", "3"]
    assert await answer(repository, "m") == 1.0  # the configured default, not the highest


async def test_a_canary_gets_its_share_of_unversioned_requests(
    three_versions: Path, control_dir: Path, make_repository: Any
) -> None:
    write_policy(three_versions, "m", {"default_version": "1", "canary": {"version": "2", "percent": 30}})
    repository = make_repository(three_versions, control_dir)
    await repository.start()
    random.seed(7)
    seen = [repository.route("m").version for _ in range(4000)]
    share = seen.count("2") / len(seen)
    # Binomial: the standard deviation of the share is 0.0072 here; 0.03 is over four of them.
    assert abs(share - 0.30) < 0.03, share
    assert set(seen) == {"1", "2"}
    # Pinned requests ignore the split.
    assert {repository.route("m", "3").version for _ in range(50)} == {"3"}


async def test_a_default_or_canary_that_is_not_ready_is_passed_over(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any
) -> None:
    write_version(repo_root, "m", "1", factor=1)
    write_version(repo_root, "m", "2", factor=2, settings={"runtime": "sklearn", "parameters": {"fail": "x"}})
    write_policy(repo_root, "m", {"default_version": "2", "canary": {"version": "1", "percent": 100}})
    repository = make_repository(repo_root, control_dir)
    await repository.start()
    # Version 2 failed to load: version 1 answers, whatever its role, rather than a 503.
    assert {repository.route("m").version for _ in range(20)} == {"1"}
    assert repository.traffic("m")["serving"]["default_version"] == "1"


async def test_admin_traffic_overrides_the_file_until_the_file_changes(
    three_versions: Path, control_dir: Path, make_repository: Any
) -> None:
    write_policy(three_versions, "m", {"version_policy": {"all": {}}, "default_version": "1"})
    repository = make_repository(three_versions, control_dir)
    await repository.start()
    assert await answer(repository, "m") == 1.0

    traffic = await repository.set_traffic("m", Traffic(default_version="2"))
    assert traffic["source"] == "admin" and traffic["serving"]["default_version"] == "2"
    assert await answer(repository, "m") == 2.0
    await repository.reconcile()  # a later scan keeps the override
    assert await answer(repository, "m") == 2.0

    # An edit of model.json after the call is newer: it wins, and the override no longer applies.
    write_policy(three_versions, "m", {"version_policy": {"all": {}}, "default_version": "3"})
    await repository.reconcile()
    assert await answer(repository, "m") == 3.0
    assert repository.traffic("m")["source"] == "model.json"


async def test_promote_and_rollback(three_versions: Path, control_dir: Path, make_repository: Any) -> None:
    write_policy(three_versions, "m", {"version_policy": {"all": {}}, "default_version": "1"})
    repository = make_repository(three_versions, control_dir)
    await repository.start()
    with pytest.raises(Conflict, match="no canary to promote"):
        await repository.promote("m")

    await repository.set_traffic("m", Traffic(default_version="1", canary=Canary(version="2", percent=100)))
    assert {repository.route("m").version for _ in range(20)} == {"2"}
    rolled_back = await repository.rollback("m")
    assert rolled_back["configured"] == {"default_version": "1"}
    assert {repository.route("m").version for _ in range(20)} == {"1"}

    await repository.set_traffic("m", Traffic(default_version="1", canary=Canary(version="3", percent=10)))
    promoted = await repository.promote("m")
    assert promoted["configured"] == {"default_version": "3"}
    assert {repository.route("m").version for _ in range(20)} == {"3"}


async def test_traffic_calls_refuse_what_cannot_be_served(
    three_versions: Path, control_dir: Path, make_repository: Any
) -> None:
    repository = make_repository(three_versions, control_dir)
    await repository.start()
    with pytest.raises(BadRequest, match="has no version 7"):
        await repository.set_traffic("m", Traffic(canary=Canary(version="7", percent=5)))
    with pytest.raises(NotFound, match="Unknown model 'nope'"):
        await repository.set_traffic("nope", Traffic())
    with pytest.raises(BadRequest, match="no output 'label' to compare; it has y"):
        await repository.set_traffic("m", Traffic(shadow=Shadow(version="2", compare=["label"])))
    with pytest.raises(ValueError, match="different versions"):
        Traffic(canary=Canary(version="2", percent=5), shadow=Shadow(version="2"))
    with pytest.raises(ValueError, match="positive integer"):
        Traffic(default_version="latest")
    with pytest.raises(ValueError, match="choose one of"):
        ModelPolicy.model_validate({"version_policy": {"all": {}, "latest": {"num_versions": 1}}})


async def test_a_broken_model_json_keeps_the_last_good_policy(
    three_versions: Path, control_dir: Path, make_repository: Any
) -> None:
    write_policy(three_versions, "m", {"version_policy": {"all": {}}, "default_version": "2"})
    repository = make_repository(three_versions, control_dir)
    await repository.start()
    (three_versions / "m" / "model.json").write_text('{"default_version": "2", "canry": {}}')
    await repository.reconcile()
    assert await answer(repository, "m") == 2.0
    assert repository.versions_of("m") == ["1", "2", "3"]
    assert "canry: Extra inputs are not permitted" in repository.traffic("m")["error"]


async def test_another_worker_follows_a_traffic_change(
    three_versions: Path, control_dir: Path, make_repository: Any
) -> None:
    """Two repositories on one control directory stand for two workers (one process here, so the
    caller waits only for its own report; the Gunicorn integration test covers separate processes)."""
    write_policy(three_versions, "m", {"version_policy": {"all": {}}, "default_version": "1"})
    first = make_repository(three_versions, control_dir)
    second = make_repository(three_versions, control_dir)
    await first.start()
    await second.start()
    second.control.changed()
    await first.set_traffic("m", Traffic(default_version="3"))
    assert await answer(second, "m") == 1.0
    assert second.control.changed()  # a stat tells the other worker to look
    await second.reconcile()
    assert await answer(second, "m") == 3.0


async def test_a_shadow_gets_a_copy_and_its_agreement_is_measured(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any, doublers: list[Any]
) -> None:
    write_version(repo_root, "s", "3", factor=5)  # disagrees with 1
    repository = await shadowed(repo_root, control_dir, write_version, make_repository)
    agree, disagree = shadow_count("s", "2", "agree"), shadow_count("s", "3", "disagree")

    assert await answer(repository, "s") == 2.0
    await repository._mirrors["s"].drained()
    assert shadow_count("s", "2", "agree") == agree + 1

    await repository.set_traffic("s", Traffic(default_version="1", shadow=Shadow(version="3")))
    for _ in range(3):
        assert await answer(repository, "s") == 2.0
    await repository._mirrors["s"].drained()
    assert shadow_count("s", "3", "disagree") == disagree + 3
    # Pinned requests are not copied.
    await answer(repository, "s", "1")
    assert not repository._mirrors["s"]._tasks


async def test_a_shadow_never_delays_the_answer_and_is_skipped_when_saturated(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any, doublers: list[Any]
) -> None:
    repository = await shadowed(repo_root, control_dir, write_version, make_repository)
    shadow_runtime = next(d for d in doublers if d.context.version == "2")
    shadow_runtime.gate = threading.Event()  # the shadow's model hangs
    mirror = repository._mirrors["s"]
    skipped = shadow_count("s", "2", "skipped")
    try:
        for _ in range(mirror.max_in_flight + 3):
            # Each real answer comes back at once although every copy is stuck.
            assert await asyncio.wait_for(answer(repository, "s"), 5) == 2.0
        assert mirror.in_flight == mirror.max_in_flight
        assert shadow_count("s", "2", "skipped") == skipped + 3
    finally:
        shadow_runtime.gate.set()
    await asyncio.wait_for(mirror.drained(), 10)
    assert mirror.in_flight == 0


async def test_a_failing_shadow_is_counted_and_the_answer_stands(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any
) -> None:
    repository = await shadowed(repo_root, control_dir, write_version, make_repository)
    errors = shadow_count("s", "2", "error")
    repository._mirrors["s"].shadow.runtime.preprocess = _raise  # type: ignore[method-assign]
    assert await answer(repository, "s") == 2.0
    await repository._mirrors["s"].drained()
    assert shadow_count("s", "2", "error") == errors + 1


def _raise(*_: Any) -> Any:
    raise RuntimeError("shadow broke")


def test_disagreements_compare_numbers_within_tolerance_and_the_rest_exactly() -> None:
    spec = Shadow(version="2", rtol=1e-3, atol=0)
    base = {"p": np.array([0.5, 0.25]), "label": np.array([b"a", b"b"], dtype=object)}
    assert disagreements(base, {"p": np.array([0.5002, 0.25]), "label": base["label"].copy()}, spec) == {}
    found = disagreements(
        base, {"p": np.array([0.6, 0.25]), "label": np.array([b"a", b"c"], dtype=object)}, spec
    )
    assert found == {"p": "max abs difference 0.1", "label": "1 of 2 values differ"}
    assert disagreements(base, {"p": np.array([0.5])}, spec) == {
        "p": "shape [2] vs [1]",
        "label": "missing from the shadow",
    }
    only_label = Shadow(version="2", compare=["label"])
    assert disagreements(base, {"p": np.array([9.0, 9.0]), "label": base["label"]}, only_label) == {}
