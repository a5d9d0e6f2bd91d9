"""The fraud build's faster simulation draws exactly what synccfd's own does."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from build_models import load_build_module  # noqa: E402


def test_the_array_lookups_change_no_simulated_value() -> None:
    # Small, but with every fraud scenario (3 and 4 pick customers, so enough of them are needed).
    # Imported by path, by the orchestrator's own loader (the service folder has a hyphen).
    build = load_build_module("fraud", ROOT / "tabular-service" / "build_fraud.py")
    size = {"n_customers": 60, "n_terminals": 300, "n_days": 40}
    fast = build.simulate(**size, fast=True)
    plain = build.simulate(**size, fast=False)

    assert len(plain) > 1000 and set(plain["TX_FRAUD_SCENARIO"]) == {0, 1, 2, 3, 4}
    pd.testing.assert_frame_equal(fast, plain, check_exact=True)
