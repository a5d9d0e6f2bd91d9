"""Iris and fraud runners: scikit-learn pipelines saved with joblib by the build scripts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from modelgate_core.artifacts import Manifest
from modelgate_core.model import ModelRunner
from modelgate_core.schemas.fraud import FraudTransaction
from modelgate_core.schemas.tabular import IrisFeatures, IrisPrediction


class IrisRunner(ModelRunner[IrisFeatures, IrisPrediction]):
    """Logistic-regression pipeline over the four iris measurements."""

    def load(self, model_dir: Path, manifest: Manifest) -> None:
        self.pipeline: Any = joblib.load(model_dir / "model.joblib")
        self.labels: list[str] = list(manifest.extra["labels"])

    def preprocess(self, item: IrisFeatures) -> list[float]:
        return item.to_row()

    def predict(self, batch: Sequence[list[float]]) -> Sequence[np.ndarray]:
        return list(self.pipeline.predict_proba(np.asarray(batch, dtype=np.float64)))

    def postprocess(self, raw: np.ndarray) -> IrisPrediction:
        class_id = int(np.argmax(raw))
        return IrisPrediction(
            label=self.labels[class_id],  # type: ignore[arg-type]
            class_id=class_id,
            probabilities={label: round(float(p), 6) for label, p in zip(self.labels, raw, strict=True)},
        )


class FraudRunner(ModelRunner[FraudTransaction, tuple[float, bool, float]]):
    """Gradient-boosted classifier over engineered transaction features, with a chosen threshold."""

    def load(self, model_dir: Path, manifest: Manifest) -> None:
        self.pipeline: Any = joblib.load(model_dir / "model.joblib")
        self.threshold = float(manifest.extra["threshold"])
        expected, schema = list(manifest.extra["features"]), list(FraudTransaction.model_fields)
        if expected != schema:
            # The artifact and the API schema must agree column for column, or predictions are garbage.
            raise ValueError(f"fraud artifact expects features {expected}, the API schema has {schema}")

    def preprocess(self, item: FraudTransaction) -> list[float]:
        return item.to_row()

    def predict(self, batch: Sequence[list[float]]) -> Sequence[float]:
        return [float(p) for p in self.pipeline.predict_proba(np.asarray(batch, dtype=np.float64))[:, 1]]

    def postprocess(self, raw: float) -> tuple[float, bool, float]:
        return round(raw, 6), raw >= self.threshold, self.threshold
