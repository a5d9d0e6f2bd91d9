"""A tiny real runtime (y = factor * x) and helpers to lay out a model repository in a test."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelgate_core.errors import BadRequest
from modelgate_core.oip.types import Parameters, TensorSpec
from modelgate_core.repository.control import Control
from modelgate_core.repository.repository import ModelRepository, ServingOptions
from modelgate_core.repository.runtime import ModelContext, ModelRuntime, Tensors


class Doubler(ModelRuntime):
    """y = factor * x for a 1-D FP64 input `x`; refuses negative inputs in preprocess.

    Registered under the `sklearn` runtime name in these tests (the repository only needs a factory).
    `calls` records the rows of every predict call; `gate`, when set, holds predict until released.
    """

    runtime = "sklearn"
    platform = "doubler"
    instances: list[Doubler] = []

    def __init__(self, context: ModelContext) -> None:
        super().__init__(context)
        self.calls: list[int] = []
        self.threads: set[int] = set()
        self.unloaded = False
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        Doubler.instances.append(self)

    def load(self) -> None:
        if self.context.parameters.get("fail"):
            raise RuntimeError(str(self.context.parameters["fail"]))
        self.factor = float((self.context.folder / "factor.txt").read_text())
        self.delay = float(self.context.parameters.get("delay", 0))
        self.inputs = [TensorSpec(name="x", datatype="FP64", shape=[-1])]
        self.outputs = [TensorSpec(name="y", datatype="FP64", shape=[-1])]

    def preprocess(self, inputs: Tensors, parameters: Parameters) -> Tensors:
        if (inputs["x"] < 0).any():
            raise BadRequest(f"negative input {float(inputs['x'].min())}")
        return inputs

    def predict(self, batch: Tensors) -> Tensors:
        self.calls.append(len(batch["x"]))
        self.threads.add(threading.get_ident())
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)  # a model takes a while: callers pile up behind it
        return {"y": batch["x"] * self.factor}

    def unload(self) -> None:
        self.unloaded = True

    def describe(self) -> Parameters:
        return {"factor": self.factor}


def _write_version(
    root: Path, name: str, version: str, factor: float = 2.0, settings: dict[str, Any] | None = None
) -> Path:
    """A version folder of the doubler: `factor.txt` and its model-settings.json."""
    folder = root / name / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "factor.txt").write_text(str(factor))
    (folder / "model-settings.json").write_text(json.dumps(settings or {"runtime": "sklearn"}))
    return folder


def _make_repository(root: Path, control_dir: Path, **options: Any) -> ModelRepository:
    serving = ServingOptions(
        max_concurrency=options.pop("max_concurrency", 1),
        batching=options.pop("batching", None),
        unload_timeout=options.pop("unload_timeout", 10.0),
    )
    return ModelRepository(
        root, "tabular", {"sklearn": Doubler}, Control(control_dir), options=serving, **options
    )


@pytest.fixture
def repo_root(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    return root


@pytest.fixture
def control_dir(tmp_path: Path) -> Path:
    return tmp_path / "control"


@pytest.fixture
def write_version() -> Any:
    """`write_version(root, name, version, factor=2.0, settings=None) -> folder`."""
    return _write_version


@pytest.fixture
def make_repository() -> Any:
    """`make_repository(root, control_dir, **options) -> ModelRepository` serving the doubler."""
    Doubler.instances.clear()
    return _make_repository


@pytest.fixture
def doubler_runtime() -> type[Doubler]:
    return Doubler


@pytest.fixture
def doublers() -> list[Doubler]:
    """Every doubler loaded by this test, in load order."""
    return Doubler.instances


@pytest.fixture
def tensor() -> Any:
    """`tensor(1.0, 2.0) -> {"x": array}`, the doubler's input."""

    def make(*values: float) -> dict[str, np.ndarray[Any, Any]]:
        return {"x": np.asarray(values, dtype=np.float64)}

    return make
