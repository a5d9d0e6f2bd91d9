"""A scikit-learn regressor whose `predict` waits until a gate file exists, for tests that need the real
tabular service's model slot busy for exactly as long as they say (not for a delay they hope is long
enough). Each call appends its row count to a calls file first, so a test counts what the model ran.

The test pickles it into a model folder; the service unpickles it, importing this module by name, so
the service gets this folder on its PYTHONPATH.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

# The gate is never meant to stay shut this long: a test that forgot to open it fails, not hangs.
GATE_PATIENCE_SECONDS = 120.0


class GatedRegressor(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """y = the sum of each row's features, once `gate` exists; every call is logged in `calls`."""

    def __init__(self, gate: str = "", calls: str = "") -> None:
        self.gate = gate
        self.calls = calls

    def fit(self, features: np.ndarray[Any, Any], target: Any = None) -> GatedRegressor:
        self.n_features_in_ = int(np.asarray(features).shape[1])
        return self

    def predict(self, features: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        rows = np.asarray(features, dtype=np.float64)
        with open(self.calls, "a") as log:
            log.write(f"{len(rows)}\n")
        gate = Path(self.gate)
        give_up = time.monotonic() + GATE_PATIENCE_SECONDS
        while not gate.exists():
            if time.monotonic() > give_up:
                raise RuntimeError(f"the gate {gate} never opened")
            time.sleep(0.005)
        return np.asarray(rows.sum(axis=1))
