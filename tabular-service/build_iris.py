"""Build the iris species classifier: StandardScaler + LogisticRegression on scikit-learn's bundled iris.

Run through `scripts/build_models.py`; `build()` writes `model.joblib` into a folder and returns the
manifest (the orchestrator adds the cache key to the version and writes `manifest.json`).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from modelgate_core.artifacts import Manifest, hash_files, utc_now

NAME = "iris"
VERSION = "1.0.0"
LIBRARIES = ("scikit-learn", "numpy", "scipy", "joblib")
SEED = 42
LABELS = ["setosa", "versicolor", "virginica"]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def inputs() -> list[Path]:
    """Files whose bytes define this model besides this script: the iris CSV bundled with scikit-learn."""
    spec = find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-learn is not installed")
    return [Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "iris.csv"]


def build(out_dir: Path, progress: Callable[[str], None]) -> Manifest:
    """Train on a stratified 80 % split, evaluate on the held-out 20 %, save `model.joblib`."""
    # Heavy imports here, not at module level: the orchestrator imports this file even when cached.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = Pipeline(
        [("scale", StandardScaler()), ("clf", LogisticRegression(C=1.0, max_iter=1000, random_state=SEED))]
    )
    return train(out_dir, progress, pipeline, NAME, VERSION, "StandardScaler + LogisticRegression")


def train(
    out_dir: Path, progress: Callable[[str], None], estimator: Any, name: str, version_: str, described: str
) -> Manifest:
    """Fit `estimator` on the split every iris version shares, evaluate it, save `model.joblib`."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import train_test_split

    data = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data, data.target, test_size=0.2, stratify=data.target, random_state=SEED
    )
    progress(f"training {described} on {len(x_train)} flowers, testing on {len(x_test)}")
    estimator.fit(x_train, y_train)
    predicted = estimator.predict(x_test)
    metrics = {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "macro_f1": float(f1_score(y_test, predicted, average="macro")),
        "n_train": float(len(x_train)),
        "n_test": float(len(x_test)),
    }
    progress(f"held-out accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}")

    # The service maps class ids to names through `labels`; make sure the order is scikit-learn's.
    if [str(n) for n in data.target_names] != LABELS:
        raise RuntimeError(f"unexpected iris class order {list(data.target_names)}")
    joblib.dump(estimator, out_dir / "model.joblib")
    return Manifest(
        name=name,
        version=version_,
        domain="tabular",
        created=utc_now(),
        framework=f"scikit-learn {version('scikit-learn')}",
        data_source="UCI iris (150 flowers, bundled with scikit-learn); stratified 80/20 split, seed 42",
        metrics=metrics,
        extra={"labels": LABELS, "features": FEATURES, "units": "cm", "estimator": described},
        files=hash_files(out_dir),
    )
