"""Build the card-fraud classifier on transactions simulated offline with `synccfd`.

Features follow the Fraud Detection Handbook (Le Borgne et al.): amount, hour / night and weekend
flags, the card's transaction count and mean amount over 1, 7 and 30 days, and the terminal's
transaction count and fraud rate over 1, 7 and 30 days ending one delay period (7 days) earlier,
since fraud labels only become known after investigation. The split is by time, as in production:
train on earlier days, pick the decision threshold on the last training week, test on later days.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from modelgate_core.artifacts import Manifest, hash_files, utc_now

if TYPE_CHECKING:
    import pandas as pd

NAME = "fraud"
VERSION = "1.0.0"
LIBRARIES = ("synccfd", "scikit-learn", "numpy", "scipy", "pandas", "joblib", "geopandas", "shapely")
SEED = 42

# Simulation size: ~300k transactions and ~10k frauds in well under a minute on two cores.
N_CUSTOMERS = 1500
N_TERMINALS = 3000
N_DAYS = 100
START_DATE = "2018-04-01"

DELAY_DAYS = 7  # fraud labels arrive a week late, so terminal risk uses windows ending a week ago
WINDOWS = (1, 7, 30)
# Day ranges (inclusive-exclusive). The first 37 days only feed the 30-day + 7-day-delay windows;
# the gap before the test period mirrors the delay: labels of the last training week are not known
# when the model is deployed.
TRAIN_DAYS = (37, 65)
VALID_DAYS = (65, 72)
TEST_DAYS = (79, 100)

FEATURES = [
    "tx_amount",
    "tx_hour",
    "tx_during_night",
    "tx_during_weekend",
    *[f"customer_{kind}_{w}day" for w in WINDOWS for kind in ("nb_tx", "avg_amount")],
    *[f"terminal_{kind}_{w}day" for w in WINDOWS for kind in ("nb_tx", "risk")],
]


def _package_dir(name: str) -> Path:
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def inputs() -> list[Path]:
    """The simulator's geographic data and the API schema (its field order must equal FEATURES)."""
    data_dir = _package_dir("synccfd") / "simulator" / "location" / "data"
    schema = Path(__file__).resolve().parent.parent / "core" / "modelgate_core" / "schemas" / "fraud.py"
    return [data_dir / "cities.csv", data_dir / "naturalearth_lowres.csv", schema]


def simulate(
    n_customers: int = N_CUSTOMERS, n_terminals: int = N_TERMINALS, n_days: int = N_DAYS, fast: bool = True
) -> pd.DataFrame:
    """Generate the labelled transactions (synccfd seeds numpy and random itself from random_state).

    `fast` (what the build uses) swaps synccfd's per-transaction pandas lookups for array ones that give
    the same values, see `_with_array_lookups`; tests/test_build_fraud.py checks the two agree exactly.
    """
    from synccfd import DatasetGenerator

    generator = DatasetGenerator(
        n_customers=n_customers,
        n_terminals=n_terminals,
        nb_days=n_days,
        start_date=START_DATE,
        random_state=SEED,
    )
    if fast:
        _with_array_lookups(generator)
    _, _, transactions = generator.generate()
    return transactions


def _with_array_lookups(generator: Any) -> None:
    """Make synccfd's simulation about twice as fast without changing one value it draws or returns.

    Most of its time went to pandas scalar access, several times per simulated transaction: a
    customer's or a terminal's location by `DataFrame.at`, and a customer's profile fields as attributes
    of an `iterrows` Series. The locations are read from arrays made once, as each table is generated
    (their index is a RangeIndex, so a label is a position), and the profile is handed over as a plain
    namespace of the same values. The random draws, in their order, are untouched.
    """
    features = generator.generator.loc_features
    made: dict[str, Callable[[int], dict[str, Any]]] = {}

    def lookup(frame: pd.DataFrame) -> Callable[[int], dict[str, Any]]:
        lat, long = frame["lat"].to_numpy(), frame["long"].to_numpy()
        return lambda i: {"lat": lat[i], "long": long[i]}

    def located(table: str, generate: Callable[..., None]) -> Callable[..., None]:
        def wrapper(*args: Any, **kwargs: Any) -> None:
            generate(*args, **kwargs)
            made[table] = lookup(getattr(features, f"{table}_locations"))

        return wrapper

    features.gen_billing_locations = located("billing", features.gen_billing_locations)
    features.gen_terminal_locations = located("terminal", features.gen_terminal_locations)
    features.get_billing_location = lambda i: made["billing"](i)
    features.get_terminal_location = lambda i: made["terminal"](i)

    transactions_of = generator.generator.generate_customer_transactions
    generator.generator.generate_customer_transactions = lambda profile: transactions_of(
        SimpleNamespace(**profile.to_dict())
    )


def add_features(tx: pd.DataFrame) -> pd.DataFrame:
    """Add the FEATURES columns to the simulated transactions (vectorised rolling windows)."""
    import numpy as np

    # Stolen-card frauds are moved in time by the simulator, so re-sort; ties broken by id for determinism.
    tx = tx.sort_values(["TX_DATETIME", "TRANSACTION_ID"]).reset_index(drop=True)
    out = tx.copy()
    out["tx_amount"] = tx["TX_AMOUNT"].astype(float)
    out["tx_hour"] = tx["TX_DATETIME"].dt.hour
    out["tx_during_night"] = (out["tx_hour"] <= 6).astype(int)
    out["tx_during_weekend"] = (tx["TX_DATETIME"].dt.weekday >= 5).astype(int)

    # Customer windows: (t - w days, t], the current transaction included.
    by_customer = tx.sort_values(["CUSTOMER_ID", "TX_DATETIME", "TRANSACTION_ID"])
    grouped = by_customer.set_index("TX_DATETIME").groupby("CUSTOMER_ID", sort=True)["TX_AMOUNT"]
    for w in WINDOWS:
        rolling = grouped.rolling(f"{w}D")
        # groupby-rolling returns rows grouped by customer in their sorted order: same as by_customer.
        out.loc[by_customer.index, f"customer_nb_tx_{w}day"] = rolling.count().to_numpy()
        out.loc[by_customer.index, f"customer_avg_amount_{w}day"] = rolling.mean().to_numpy()

    # Terminal windows: transactions and frauds in (t - delay - w, t - delay], as differences of two
    # windows ending now, so that the still-unknown labels of the last `delay` days are never used.
    by_terminal = tx.sort_values(["TERMINAL_ID", "TX_DATETIME", "TRANSACTION_ID"])
    frauds = by_terminal.set_index("TX_DATETIME").groupby("TERMINAL_ID", sort=True)["TX_FRAUD"]
    recent = frauds.rolling(f"{DELAY_DAYS}D")
    recent_n, recent_f = recent.count().to_numpy(), recent.sum().to_numpy()
    for w in WINDOWS:
        longer = frauds.rolling(f"{DELAY_DAYS + w}D")
        n = longer.count().to_numpy() - recent_n
        f = longer.sum().to_numpy() - recent_f
        out.loc[by_terminal.index, f"terminal_nb_tx_{w}day"] = n
        out.loc[by_terminal.index, f"terminal_risk_{w}day"] = np.divide(
            f, n, out=np.zeros_like(f), where=n > 0
        )

    count_columns = [c for c in FEATURES if "_nb_tx_" in c]
    out[count_columns] = out[count_columns].round().astype(int)
    return out


def _days(df: pd.DataFrame, days: tuple[int, int]) -> pd.DataFrame:
    return df[(df["TX_TIME_DAYS"] >= days[0]) & (df["TX_TIME_DAYS"] < days[1])]


def build(out_dir: Path, progress: Callable[[str], None]) -> Manifest:
    """Simulate, engineer features, fit a gradient-boosted classifier, pick the threshold, evaluate."""
    # Heavy imports here, not at module level: the orchestrator imports this file even when cached.
    import joblib
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import (
        average_precision_score,
        f1_score,
        precision_recall_curve,
        precision_score,
        recall_score,
        roc_auc_score,
    )
    from sklearn.pipeline import Pipeline

    from modelgate_core.schemas.fraud import FraudTransaction

    if list(FraudTransaction.model_fields) != FEATURES:
        raise RuntimeError(
            f"schema FraudTransaction fields {list(FraudTransaction.model_fields)} != {FEATURES}"
        )

    progress(f"simulating {N_CUSTOMERS} customers, {N_TERMINALS} terminals, {N_DAYS} days with synccfd ...")
    tx = simulate()
    progress(f"{len(tx):,} transactions, {int(tx['TX_FRAUD'].sum()):,} frauds; computing features ...")
    df = add_features(tx)

    train, valid, test = (_days(df, d) for d in (TRAIN_DAYS, VALID_DAYS, TEST_DAYS))
    for part, rows in (("train", train), ("validation", valid), ("test", test)):
        progress(
            f"{part}: days {rows['TX_TIME_DAYS'].min()}-{rows['TX_TIME_DAYS'].max()}, "
            f"{len(rows):,} transactions, {int(rows['TX_FRAUD'].sum()):,} frauds"
        )

    def fit(rows: pd.DataFrame) -> Pipeline:
        # No early stopping: its random validation split would tie the model to row order.
        clf = HistGradientBoostingClassifier(
            max_iter=300,
            learning_rate=0.05,
            max_leaf_nodes=31,
            l2_regularization=1.0,
            early_stopping=False,
            random_state=SEED,
        )
        return Pipeline([("clf", clf)]).fit(rows[FEATURES].to_numpy(np.float64), rows["TX_FRAUD"].to_numpy())

    def scores(model: Pipeline, rows: pd.DataFrame) -> np.ndarray:
        return np.asarray(model.predict_proba(rows[FEATURES].to_numpy(np.float64))[:, 1])

    progress("fitting on the training days ...")
    model = fit(train)
    precision, recall, thresholds = precision_recall_curve(valid["TX_FRAUD"], scores(model, valid))
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    threshold = float(round(thresholds[int(np.argmax(f1))], 6))
    # The deployed model is the one the threshold was chosen for: a refit would shift its scores.
    progress(f"threshold {threshold:.4f} (validation F1 {f1.max():.4f}); evaluating on the test days ...")
    y_test, p_test = test["TX_FRAUD"].to_numpy(), scores(model, test)
    flagged = p_test >= threshold
    metrics = {
        "roc_auc": float(roc_auc_score(y_test, p_test)),
        "average_precision": float(average_precision_score(y_test, p_test)),
        "precision": float(precision_score(y_test, flagged, zero_division=0)),
        "recall": float(recall_score(y_test, flagged)),
        "f1": float(f1_score(y_test, flagged)),
        "threshold": threshold,
        "n_train": float(len(train)),
        "n_valid": float(len(valid)),
        "n_test": float(len(test)),
        "test_fraud_rate": float(y_test.mean()),
    }
    progress(", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not k.startswith("n_")))

    joblib.dump(model, out_dir / "model.joblib")
    return Manifest(
        name=NAME,
        version=VERSION,
        domain="tabular",
        created=utc_now(),
        framework=f"scikit-learn {version('scikit-learn')}",
        data_source=(
            f"synccfd {version('synccfd')} simulation: {N_CUSTOMERS} customers, {N_TERMINALS} terminals, "
            f"{N_DAYS} days from {START_DATE}, seed {SEED}; train days {TRAIN_DAYS[0]}-{TRAIN_DAYS[1] - 1}, "
            f"threshold chosen on days {VALID_DAYS[0]}-{VALID_DAYS[1] - 1}, test days "
            f"{TEST_DAYS[0]}-{TEST_DAYS[1] - 1}"
        ),
        metrics=metrics,
        extra={
            "threshold": threshold,
            "threshold_rule": "max F1 on the validation week",
            "features": FEATURES,
            "delay_days": DELAY_DAYS,
            "estimator": "HistGradientBoostingClassifier",
        },
        files=hash_files(out_dir),
    )
