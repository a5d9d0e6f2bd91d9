"""The built-in tabular routes (`/v1/tabular/iris`, `/iris/batch`, `/fraud`), kept as they were for
their clients, answered by the repository's `iris` and `fraud` models (sklearn runtime): the typed
request becomes the model's input tensor, its `predict_proba` output becomes the typed answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter

from modelgate_core.errors import ServiceUnavailable
from modelgate_core.repository.repository import ModelRepository
from modelgate_core.repository.traffic import Routed
from modelgate_core.schemas.common import ErrorResponse, ModelRef
from modelgate_core.schemas.fraud import FraudTransaction
from modelgate_core.schemas.tabular import (
    FraudResponse,
    IrisBatchRequest,
    IrisBatchResponse,
    IrisFeatures,
    IrisPrediction,
    IrisResponse,
)

ERRORS = {code: {"model": ErrorResponse} for code in (413, 422, 503)}


def _setting(served: Routed, name: str) -> Any:
    """A model parameter from model-settings.json, else from the built artifact's manifest."""
    context = served.runtime.context
    if name in context.parameters:
        return context.parameters[name]
    if context.manifest is not None and name in context.manifest.extra:
        return context.manifest.extra[name]
    raise ServiceUnavailable(f"Model '{served.name}' has no '{name}' parameter for this route")


async def _probabilities(served: Routed, rows: Sequence[list[float]]) -> np.ndarray[Any, Any]:
    (spec,) = served.inputs
    dtype = np.float32 if spec.datatype == "FP32" else np.float64
    outputs = await served.infer({spec.name: np.asarray(rows, dtype=dtype)})
    return np.asarray(outputs["predict_proba"], dtype=np.float64)


def _iris_prediction(labels: list[str], probabilities: np.ndarray[Any, Any]) -> IrisPrediction:
    class_id = int(np.argmax(probabilities))
    return IrisPrediction(
        label=labels[class_id],  # type: ignore[arg-type]  # the artifact's labels are the schema's
        class_id=class_id,
        probabilities={label: round(float(p), 6) for label, p in zip(labels, probabilities, strict=True)},
    )


def tabular_router(repository: ModelRepository) -> APIRouter:
    router = APIRouter(prefix="/v1/tabular", tags=["tabular"], responses=ERRORS)  # type: ignore[arg-type]

    async def predict_iris(instances: Sequence[IrisFeatures]) -> tuple[list[IrisPrediction], ModelRef]:
        served = repository.require("iris")
        labels = [str(label) for label in _setting(served, "labels")]
        probabilities = await _probabilities(served, [f.to_row() for f in instances])
        ref = ModelRef.of(served)
        return [_iris_prediction(labels, p) for p in probabilities], ref

    @router.post("/iris", summary="Predict the iris species of one flower")
    async def iris(features: IrisFeatures) -> IrisResponse:
        (prediction,), ref = await predict_iris([features])
        return IrisResponse(**prediction.model_dump(), model=ref)

    @router.post("/iris/batch", summary="Predict the iris species of up to 1000 flowers")
    async def iris_batch(request: IrisBatchRequest) -> IrisBatchResponse:
        results, ref = await predict_iris(request.instances)
        return IrisBatchResponse(results=results, model=ref)

    @router.post("/fraud", summary="Score one card transaction for fraud")
    async def fraud(transaction: FraudTransaction) -> FraudResponse:
        served = repository.require("fraud")
        features = list(_setting(served, "features"))
        if features != list(FraudTransaction.model_fields):
            # The model and the API schema must agree column for column, or predictions are garbage.
            raise ServiceUnavailable("The fraud model's features do not match this route's schema")
        threshold = float(_setting(served, "threshold"))
        probability = float((await _probabilities(served, [transaction.to_row()]))[0, 1])
        return FraudResponse(
            fraud_probability=round(probability, 6),
            is_fraud=probability >= threshold,
            threshold=threshold,
            model=ModelRef.of(served),
        )

    return router
