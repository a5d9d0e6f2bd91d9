"""The Gunicorn start-up hook: a metrics directory of its own for each process group, and never the
deletion of anything ModelGate did not write there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelgate_core.gunicorn_conf import METRICS_MARKER, on_starting


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
    assert made.is_dir() and [p.name for p in made.iterdir()] == [METRICS_MARKER]
    assert Path(environ["MODEL_CONTROL_DIR"]).is_dir()
