"""The iris build produces a loadable, verified artifact that classifies a textbook setosa."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import joblib
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "core"))  # until modelgate_core is installed editable
sys.path.insert(0, str(ROOT / "scripts"))

from build_models import load_build_module  # noqa: E402

from modelgate_core.artifacts import read_manifest, verify_files, write_manifest  # noqa: E402


def load_build_iris() -> ModuleType:
    # Imported by path, by the orchestrator's own loader (the service folder has a hyphen).
    return load_build_module("iris", ROOT / "tabular-service" / "build_iris.py")


def test_build_iris(tmp_path: Path) -> None:
    messages: list[str] = []
    manifest = load_build_iris().build(tmp_path, messages.append)

    assert manifest.name == "iris" and manifest.domain == "tabular"
    assert manifest.extra["labels"] == ["setosa", "versicolor", "virginica"]
    assert manifest.extra["features"] == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert manifest.metrics["accuracy"] >= 0.9
    assert manifest.metrics["macro_f1"] >= 0.9
    assert manifest.metrics["n_test"] == 30
    assert set(manifest.files) == {"model.joblib"}
    assert messages  # progress was reported

    write_manifest(tmp_path, manifest)
    verify_files(tmp_path, read_manifest(tmp_path))

    model = joblib.load(tmp_path / "model.joblib")
    proba = model.predict_proba(np.array([[5.1, 3.5, 1.4, 0.2]]))[0]
    assert manifest.extra["labels"][int(np.argmax(proba))] == "setosa"
    assert abs(proba.sum() - 1) < 1e-9


def test_build_iris_is_deterministic(tmp_path: Path) -> None:
    build = load_build_iris().build
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    assert build(first, lambda _: None).metrics == build(second, lambda _: None).metrics
