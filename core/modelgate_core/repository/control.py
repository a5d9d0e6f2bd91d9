"""How the Gunicorn workers of one service agree on explicit `load` / `unload` calls.

A request reaches one worker, but every worker holds its own copy of each model. The workers share a
small directory (`MODEL_CONTROL_DIR`; the Gunicorn config makes one per service at start-up):

- `control.json`: a generation number, the names unloaded on purpose (polling must not bring them
  back while their folder is still there) and, per name, the generation that asked to load it now.
  Written under an exclusive `flock`, atomically (temp file + rename).
- `workers/<pid>.json`: each worker's last seen generation and its models' states, rewritten after
  each reconcile. The Gunicorn config writes the first one right after the fork, as `STARTING`.

The worker that takes a call bumps the generation, reconciles itself, then waits until every live
worker reports that generation: a `load` answers when the model is ready everywhere (or failed),
including in a worker that is still starting (it reports `STARTING` until its first pass is done).
Workers look at `control.json` every `CONTROL_CHECK_SECONDS`, a stat call, so they follow within a
fraction of a second; the repository folder itself is scanned every `MODEL_POLL_SECONDS`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONTROL_CHECK_SECONDS = 0.2
# The generation a worker reports from its fork until its first pass over the repository: behind
# every call, so that a call waits for it instead of answering while it cannot serve yet.
STARTING = -1


@dataclass
class ControlState:
    generation: int = 0
    unloaded: set[str] = field(default_factory=set)
    # name -> generation of the explicit load that asked for it (load it now, without waiting for the
    # folder to settle).
    loads: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(
            {"generation": self.generation, "unloaded": sorted(self.unloaded), "loads": self.loads}
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ControlState:
        data = json.loads(raw)
        return cls(
            int(data["generation"]), set(data["unloaded"]), {k: int(v) for k, v in data["loads"].items()}
        )


class Control:
    """The shared directory of one service's workers."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.workers_dir = directory / "workers"
        self.workers_dir.mkdir(parents=True, exist_ok=True)
        self.path = directory / "control.json"
        self._lock_path = directory / "control.lock"
        self._seen_mtime: int | None = None

    @contextmanager
    def locked(self) -> Iterator[ControlState]:
        """Read, let the caller change, and write back the state, holding the lock throughout."""
        with open(self._lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self.read()
                yield state
                _write_atomic(self.path, state.to_json())
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> ControlState:
        try:
            return ControlState.from_json(self.path.read_bytes())
        except FileNotFoundError:
            return ControlState()
        except (ValueError, KeyError, TypeError):
            # A damaged file must not stop the workers: start over from "nothing explicit".
            return ControlState()

    def changed(self) -> bool:
        """Whether control.json changed since the last call (one stat)."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._seen_mtime:
            return False
        self._seen_mtime = mtime
        return True

    def report(self, generation: int, models: dict[str, Any]) -> None:
        """Publish this worker's generation and model states."""
        _write_atomic(
            self.workers_dir / f"{os.getpid()}.json",
            json.dumps({"generation": generation, "models": models, "at": time.time()}).encode(),
        )

    def announce(self) -> None:
        """Report this process as a worker that is starting (nothing loaded, behind every call)."""
        self.report(STARTING, {})

    def workers(self) -> dict[int, dict[str, Any]]:
        """The reports of the live workers (a dead worker's report is removed)."""
        reports: dict[int, dict[str, Any]] = {}
        for path in self.workers_dir.glob("*.json"):
            try:
                pid = int(path.stem)
            except ValueError:
                continue
            if not _alive(pid):
                path.unlink(missing_ok=True)
                continue
            try:
                reports[pid] = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue  # being rewritten, or gone: the next look will see it
        return reports

    def forget_self(self) -> None:
        (self.workers_dir / f"{os.getpid()}.json").unlink(missing_ok=True)


def default_control() -> Control:
    """The control directory in `MODEL_CONTROL_DIR` when set (the Gunicorn config sets it for all
    workers), else a new one of this process's own (an app run in-process), removed with the `Control`
    or at exit."""
    configured = os.environ.get("MODEL_CONTROL_DIR")
    if configured:
        return Control(Path(configured))
    control = Control(Path(tempfile.mkdtemp(prefix="modelgate-control-")))
    weakref.finalize(control, shutil.rmtree, control.directory, ignore_errors=True)
    return control


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
