"""Build version 2 of the iris classifier: a random forest on version 1's split (`build_iris.train`),
so that a canary or shadow of it against version 1 (the README's walk-through) compares two real models.

Run through `scripts/build_models.py`; laid out as `models/iris/2/` by `make model-versions`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from modelgate_core.artifacts import Manifest

NAME = "iris-v2"
VERSION = "2.0.0"
LIBRARIES = ("scikit-learn", "numpy", "scipy", "joblib")
_VERSION_1 = Path(__file__).with_name("build_iris.py")


def _version_1() -> ModuleType:
    # By path, as the orchestrator loads build scripts (service folders are not packages).
    spec = importlib.util.spec_from_file_location("modelgate_build_iris_for_v2", _VERSION_1)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inputs() -> list[Path]:
    """Version 1's inputs and its script, whose training code and split this build uses."""
    return [*_version_1().inputs(), _VERSION_1]


def build(out_dir: Path, progress: Callable[[str], None]) -> Manifest:
    from sklearn.ensemble import RandomForestClassifier

    iris = _version_1()
    forest = RandomForestClassifier(n_estimators=50, max_depth=4, random_state=iris.SEED)
    manifest: Manifest = iris.train(out_dir, progress, forest, NAME, VERSION, "RandomForestClassifier")
    return manifest
