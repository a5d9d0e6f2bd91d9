"""The Gunicorn start-up hook: a metrics directory of its own for each process group, and never the
deletion of anything ModelGate did not write there; the exit hook removes what the master made; a
worker counts among the repository's workers from its fork."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import modelgate_core.gunicorn_conf
from modelgate_core.gunicorn_conf import LIFELINE_ENV, METRICS_MARKER, on_exit, on_starting
from modelgate_core.repository.control import STARTING, Control

CONFIG = Path(modelgate_core.gunicorn_conf.__file__)


def test_a_foreign_directory_is_never_emptied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    precious = tmp_path / "not-ours"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    (precious / "counter_1.db").write_bytes(b"someone else's")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(precious))
    monkeypatch.setenv("MODEL_CONTROL_DIR", str(tmp_path / "control"))
    on_starting(None)
    assert sorted(p.name for p in precious.iterdir()) == ["counter_1.db", "thesis.tex"]


def test_our_directory_loses_its_stale_samples_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = tmp_path / "metrics"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics))
    monkeypatch.setenv("MODEL_CONTROL_DIR", str(tmp_path / "control"))
    on_starting(None)  # new: made and marked as ours
    assert (metrics / METRICS_MARKER).is_file()
    (metrics / "counter_123.db").write_bytes(b"from the last run")
    (metrics / "notes.txt").write_text("keep")
    on_starting(None)
    assert sorted(p.name for p in metrics.iterdir()) == [METRICS_MARKER, "notes.txt"]


def test_without_a_setting_each_start_gets_a_fresh_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    # The hook sets the variables for the workers: give it a copy of the environment to write to.
    environ = {
        k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "MODEL_CONTROL_DIR")
    }
    monkeypatch.setattr(os, "environ", environ)
    on_starting(None)
    made = Path(environ["PROMETHEUS_MULTIPROC_DIR"])
    control = Path(environ["MODEL_CONTROL_DIR"])
    try:
        assert made.is_dir() and [p.name for p in made.iterdir()] == [METRICS_MARKER]
        assert control.is_dir()
    finally:
        on_exit(None)
    assert not made.exists() and not control.exists()


APP = """
async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
"""


@contextmanager
def gunicorn(
    tmp_path: Path, env: dict[str, str], pass_fds: tuple[int, ...] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """A real Gunicorn master on the shared config serving a trivial app; yielded once it answers."""
    (tmp_path / "tinyapp.py").write_text(APP)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "MODEL_CONTROL_DIR")}
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(CONFIG), "--chdir", str(tmp_path), "tinyapp:app"],
        env={**base, "BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "1", **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        pass_fds=pass_fds,
        start_new_session=True,  # its own process group, so a forced stop takes its worker too
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
                time.sleep(0.1)
        yield proc
    finally:
        # A graceful stop takes the worker with the master; a SIGKILLed master would leave it running.
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the master is not reaped: its group is still its own
        proc.wait()
        log.close()


def test_the_master_removes_the_directories_it_made_when_it_exits(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"  # where mkdtemp makes them, so this test sees exactly those
    tmp.mkdir()
    with gunicorn(tmp_path, {"TMPDIR": str(tmp)}) as proc:
        made = sorted(p.name.rsplit("-", 1)[0] for p in tmp.iterdir())
        assert made == ["modelgate-control", "modelgate-metrics"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert list(tmp.iterdir()) == []


def test_directories_named_by_the_environment_outlive_the_master(tmp_path: Path) -> None:
    tmp, metrics, control = tmp_path / "tmp", tmp_path / "metrics", tmp_path / "control"
    for folder in (tmp, metrics, control):
        folder.mkdir()
    env = {"TMPDIR": str(tmp), "PROMETHEUS_MULTIPROC_DIR": str(metrics), "MODEL_CONTROL_DIR": str(control)}
    with gunicorn(tmp_path, env) as proc:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert (metrics / METRICS_MARKER).is_file() and control.is_dir()
    assert list(tmp.iterdir()) == []


def test_a_forked_worker_is_announced_as_starting(tmp_path: Path) -> None:
    """The trivial app never loads a repository, so its worker stays as post_fork announced it."""
    control = tmp_path / "control"
    with gunicorn(tmp_path, {"MODEL_CONTROL_DIR": str(control)}) as proc:
        reports = Control(control).workers()
        assert [report["generation"] for report in reports.values()] == [STARTING]
        (worker,) = reports
        parent = int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert parent == proc.pid


def test_the_master_stops_when_its_launcher_is_gone(tmp_path: Path) -> None:
    # The launcher holds the write end; its death, even by SIGKILL, closes it: here we close it.
    lifeline, keep = os.pipe()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    try:
        with gunicorn(tmp_path, {"TMPDIR": str(tmp), LIFELINE_ENV: str(lifeline)}, (lifeline,)) as proc:
            assert proc.poll() is None  # up and answering, so past when_ready: the watch is on
            os.close(keep)
            keep = -1
            assert proc.wait(30) == 0  # a graceful stop, so the exit hook ran too
    finally:
        os.close(lifeline)
        if keep >= 0:
            os.close(keep)
    assert "the launcher is gone" in (tmp_path / "gunicorn.log").read_text()
    assert list(tmp.iterdir()) == []
