"""The fraud build's faster simulation draws exactly what synccfd's own does."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def load_build_fraud() -> ModuleType:
    # The service folder has a hyphen, so the build script is imported by path, as the orchestrator does.
    spec = importlib.util.spec_from_file_location(
        "build_fraud_under_test", ROOT / "tabular-service" / "build_fraud.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_array_lookups_change_no_simulated_value() -> None:
    # Small, but with every fraud scenario (3 and 4 pick customers, so enough of them are needed).
    build = load_build_fraud()
    size = {"n_customers": 60, "n_terminals": 300, "n_days": 40}
    fast = build.simulate(**size, fast=True)
    plain = build.simulate(**size, fast=False)

    assert len(plain) > 1000 and set(plain["TX_FRAUD_SCENARIO"]) == {0, 1, 2, 3, 4}
    pd.testing.assert_frame_equal(fast, plain, check_exact=True)
