"""Where a service's control directory comes from, and that a process's own one does not outlive it."""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path

import pytest

from modelgate_core.repository.control import default_control


def test_an_in_process_control_directory_goes_with_its_control(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MODEL_CONTROL_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    control = default_control()
    directory = control.directory
    assert directory.parent == tmp_path and (directory / "workers").is_dir()
    del control
    gc.collect()
    assert not directory.exists()


def test_the_configured_control_directory_is_never_removed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shared = tmp_path / "shared-control"
    monkeypatch.setenv("MODEL_CONTROL_DIR", str(shared))
    control = default_control()
    assert control.directory == shared
    del control
    gc.collect()
    assert (shared / "workers").is_dir()
