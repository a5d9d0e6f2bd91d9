"""The model repository: folders found, versions, broken folders, settling, reloads, unloads, and
explicit load/unload through the shared control directory."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelgate_core.artifacts import Manifest, hash_files, write_manifest
from modelgate_core.errors import BadRequest, NotFound, ServiceUnavailable
from modelgate_core.repository.control import CONTROL_CHECK_SECONDS, Control


def states(repository: Any) -> dict[tuple[str, str | None], tuple[str, str]]:
    return {(e.name, e.version): (e.state, e.reason) for e in repository.index()}


async def test_versions_and_the_default_one(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any, tensor: Any
) -> None:
    write_version(repo_root, "double", "1", factor=2)
    write_version(repo_root, "double", "3", factor=3)
    write_version(repo_root, "double", "latest", factor=9)  # not a version: ignored
    write_version(repo_root, "double", "0", factor=9)  # versions are positive
    (repo_root / "double" / "model.json").write_text('{"version_policy": {"all": {}}}')
    repository = make_repository(repo_root, control_dir)
    await repository.start()
    assert states(repository) == {("double", "1"): ("READY", ""), ("double", "3"): ("READY", "")}
    # The highest version answers by default; any loaded one by name.
    assert (await repository.get("double").infer(tensor(1.0)))["y"].tolist() == [3.0]
    assert (await repository.get("double", "1").infer(tensor(1.0)))["y"].tolist() == [2.0]
    assert repository.versions_of("double") == ["1", "3"]
    with pytest.raises(NotFound, match="Unknown version '2'"):
        repository.get("double", "2")
    with pytest.raises(NotFound, match="Unknown model 'other'"):
        repository.get("other")


async def test_a_broken_folder_is_reported_and_harms_nothing_else(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any, tensor: Any
) -> None:
    write_version(repo_root, "good", "1")
    write_version(repo_root, "fails", "1", settings={"runtime": "sklearn", "parameters": {"fail": "boom"}})
    bad_json = write_version(repo_root, "badjson", "1")
    (bad_json / "model-settings.json").write_text("{not json")
    write_version(repo_root, "unknown", "1", settings={"runtime": "tensorflow"})
    write_version(repo_root, "typo", "1", settings={"runtime": "sklearn", "paramters": {}})
    write_version(repo_root, "elsewhere", "1", settings={"runtime": "text-classification"})

    repository = make_repository(repo_root, control_dir, report_unclaimed=True)
    await repository.start()
    found = states(repository)
    assert found[("good", "1")] == ("READY", "")
    assert found[("fails", "1")] == ("UNAVAILABLE", "RuntimeError: boom")
    assert found[("badjson", "1")][0] == "UNAVAILABLE"
    assert "invalid model-settings.json" in found[("badjson", "1")][1]
    assert "unknown runtime 'tensorflow'" in found[("unknown", "1")][1]
    assert "paramters: Extra inputs are not permitted" in found[("typo", "1")][1]
    # Another service's folder is not this one's business.
    assert ("elsewhere", "1") not in found
    assert (await repository.get("good").infer(tensor(2.0)))["y"].tolist() == [4.0]
    with pytest.raises(ServiceUnavailable, match="RuntimeError: boom"):
        repository.get("fails")

    # A service that does not report unclaimed folders still reports a broken one of its runtime.
    quiet = make_repository(repo_root, control_dir / "quiet")
    await quiet.start()
    assert ("unknown", "1") not in states(quiet)
    assert ("typo", "1") in states(quiet)


async def test_a_manifest_that_does_not_match_its_files_is_refused(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any
) -> None:
    folder = write_version(repo_root, "signed", "1", factor=2)
    manifest = Manifest(
        name="signed",
        version="1.0.0",
        domain="tabular",
        created="2026-01-01T00:00:00Z",
        framework="python",
        data_source="none",
        files=hash_files(folder),
    )
    write_manifest(folder, manifest)
    (folder / "factor.txt").write_text("5")  # edited after the build
    repository = make_repository(repo_root, control_dir)
    await repository.start()
    state, reason = states(repository)[("signed", "1")]
    assert state == "UNAVAILABLE" and "sha256 mismatch for 'factor.txt'" in reason


async def test_a_new_folder_loads_once_its_files_settle(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any, tensor: Any
) -> None:
    repository = make_repository(repo_root, control_dir)
    await repository.start()
    write_version(repo_root, "late", "1", factor=4)
    await repository.reconcile()
    # Seen once: it may still be being copied in, so it is not loaded yet.
    assert states(repository)[("late", "1")] == ("LOADING", "files changing")
    with pytest.raises(ServiceUnavailable, match="LOADING"):
        repository.get("late")
    await repository.reconcile()
    assert (await repository.get("late").infer(tensor(1.0)))["y"].tolist() == [4.0]


async def test_changed_files_reload_and_the_old_version_answers_meanwhile(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any, tensor: Any, doublers: Any
) -> None:
    folder = write_version(repo_root, "double", "1", factor=2)
    repository = make_repository(repo_root, control_dir)
    await repository.start()
    (folder / "factor.txt").write_text("7")
    await repository.reconcile()  # first sight of the change: the old files keep answering
    assert (await repository.get("double").infer(tensor(1.0)))["y"].tolist() == [2.0]
    await repository.reconcile()
    assert (await repository.get("double").infer(tensor(1.0)))["y"].tolist() == [7.0]
    assert [d.unloaded for d in doublers] == [True, False]


async def test_a_removed_folder_is_unloaded_after_its_in_flight_requests(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any, tensor: Any, doublers: Any
) -> None:
    import threading

    folder = write_version(repo_root, "double", "1", factor=2)
    repository = make_repository(repo_root, control_dir)
    await repository.start()
    (runtime,) = doublers
    runtime.gate = threading.Event()
    in_flight = asyncio.create_task(repository.get("double").infer(tensor(3.0)))
    await asyncio.to_thread(runtime.entered.wait, 5)
    shutil.rmtree(folder.parent)
    reconcile = asyncio.create_task(repository.reconcile())
    await asyncio.sleep(0.2)
    # New requests no longer find it; the one in flight is not cut off, and unload waits for it.
    with pytest.raises(NotFound):
        repository.get("double")
    assert not runtime.unloaded
    runtime.gate.set()
    assert (await in_flight)["y"].tolist() == [6.0]
    await reconcile
    assert runtime.unloaded
    assert states(repository) == {}


async def test_explicit_unload_and_load(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any, tensor: Any
) -> None:
    write_version(repo_root, "double", "1", factor=2)
    repository = make_repository(repo_root, control_dir)
    await repository.start()
    await repository.unload("double")
    assert states(repository) == {("double", "1"): ("UNAVAILABLE", "unloaded")}
    await repository.reconcile()  # the folder is still there: polling must not bring it back
    with pytest.raises(ServiceUnavailable, match="unloaded"):
        repository.get("double")
    entries = await repository.load("double")
    assert [(e.name, e.version, e.state) for e in entries] == [("double", "1", "READY")]
    assert (await repository.get("double").infer(tensor(1.0)))["y"].tolist() == [2.0]
    # The control file records it for the other workers.
    control = json.loads((control_dir / "control.json").read_text())
    assert control["unloaded"] == [] and control["loads"]["double"] == control["generation"]

    with pytest.raises(NotFound, match="No model 'ghost'"):
        await repository.load("ghost")
    with pytest.raises(NotFound, match="Unknown model 'ghost'"):
        await repository.unload("ghost")


async def test_load_reports_why_it_failed_and_retries_a_fixed_folder(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any, tensor: Any
) -> None:
    settings_fail = {"runtime": "sklearn", "parameters": {"fail": "weights missing"}}
    folder = write_version(repo_root, "flaky", "1", settings=settings_fail)
    repository = make_repository(repo_root, control_dir)
    await repository.start()
    with pytest.raises(BadRequest, match="version 1: RuntimeError: weights missing"):
        await repository.load("flaky")
    (folder / "model-settings.json").write_text(json.dumps({"runtime": "sklearn"}))
    await repository.load("flaky")
    assert (await repository.get("flaky").infer(tensor(1.5)))["y"].tolist() == [3.0]


async def test_another_worker_follows_a_load_through_the_control_directory(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any, tensor: Any
) -> None:
    """Two repositories on one control directory stand for two workers (one process here, so the
    caller waits only for its own report; the Gunicorn integration test covers separate processes)."""
    write_version(repo_root, "double", "1", factor=2)
    first = make_repository(repo_root, control_dir)
    second = make_repository(repo_root, control_dir)
    await first.start()
    await second.start()
    await first.unload("double")
    assert second.control.changed()  # a stat tells the other worker to look
    await second.reconcile()
    with pytest.raises(ServiceUnavailable):
        second.get("double")
    await first.load("double")
    await second.reconcile()
    assert (await second.get("double").infer(tensor(1.0)))["y"].tolist() == [2.0]


# A worker as Gunicorn's post_fork leaves it: announced as starting. On a line from the test it reports
# the generation of now, as its first pass over the repository would.
STARTING_WORKER = """
import sys
from pathlib import Path
from modelgate_core.repository.control import CONTROL_CHECK_SECONDS, Control
control = Control(Path(sys.argv[1]))
control.announce()
print("announced", flush=True)
sys.stdin.readline()
control.report(control.read().generation, {})
print("reported", flush=True)
sys.stdin.read()
"""


@contextmanager
def starting_worker(control_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    worker = subprocess.Popen(
        [sys.executable, "-c", STARTING_WORKER, str(control_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline() == b"announced\n"
        yield worker
    finally:
        worker.kill()
        worker.wait()


async def test_a_load_waits_for_a_worker_that_is_still_starting(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any
) -> None:
    write_version(repo_root, "double", "1", factor=2)
    repository = make_repository(repo_root, control_dir)
    await repository.start()
    before = Control(control_dir).read().generation
    with starting_worker(control_dir) as worker:
        assert worker.stdin is not None and worker.stdout is not None
        load = asyncio.create_task(repository.load("double"))
        deadline = asyncio.get_running_loop().time() + 30
        while Control(control_dir).read().generation == before:  # the call is under way
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        # Without the starting worker the call answers within a control check or two; with it, never.
        done, _ = await asyncio.wait({load}, timeout=CONTROL_CHECK_SECONDS * 5)
        assert not done
        worker.stdin.write(b"go\n")
        worker.stdin.flush()
        assert worker.stdout.readline() == b"reported\n"
        entries = await asyncio.wait_for(load, 30)
    assert [(e.name, e.version, e.state) for e in entries] == [("double", "1", "READY")]


async def test_a_worker_that_never_finishes_starting_fails_the_call_and_a_dead_one_is_forgotten(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any
) -> None:
    write_version(repo_root, "double", "1", factor=2)
    repository = make_repository(repo_root, control_dir, load_timeout=0.5)
    await repository.start()
    with starting_worker(control_dir) as worker, pytest.raises(ServiceUnavailable) as failed:
        await repository.load("double")
    assert f"Workers [{worker.pid}] did not follow within" in str(failed.value)
    entries = await repository.load("double")  # its report goes with it
    assert [(e.name, e.version, e.state) for e in entries] == [("double", "1", "READY")]


async def test_inputs_are_checked_before_the_model_sees_them(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any
) -> None:
    write_version(repo_root, "double", "1")
    repository = make_repository(repo_root, control_dir)
    await repository.start()
    served = repository.get("double")
    with pytest.raises(BadRequest, match="Unknown input 'z'"):
        await served.infer({"z": np.zeros(1)})
    with pytest.raises(BadRequest, match=r"shape \[1, 1\]; the model expects \[-1\]"):
        await served.infer({"x": np.zeros((1, 1))})
    with pytest.raises(BadRequest, match=r"negative input -1\.0"):
        await served.infer({"x": np.asarray([1.0, -1.0])})


async def test_before_the_first_pass_an_unknown_name_is_503_and_after_it_404(
    repo_root: Path, control_dir: Path, write_version: Any, make_repository: Any
) -> None:
    write_version(repo_root, "iris", "1")
    repository = make_repository(repo_root, control_dir)
    with pytest.raises(ServiceUnavailable, match="repository is loading"):
        repository.get("iris")
    await repository.start()
    assert repository.get("iris").version == "1"
    with pytest.raises(NotFound, match="Unknown model 'absent'"):
        repository.get("absent")
