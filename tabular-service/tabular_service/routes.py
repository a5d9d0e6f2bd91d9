"""Tabular routes; the paths are the public ones, so the gateway forwards them unchanged."""

from __future__ import annotations

from fastapi import APIRouter

from modelgate_core.model import ServedModel
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


def tabular_router(
    iris: ServedModel[IrisFeatures, IrisPrediction],
    fraud: ServedModel[FraudTransaction, tuple[float, bool, float]],
) -> APIRouter:
    router = APIRouter(prefix="/v1/tabular", tags=["tabular"], responses=ERRORS)  # type: ignore[arg-type]

    @router.post("/iris", summary="Predict the iris species of one flower")
    async def predict_iris(features: IrisFeatures) -> IrisResponse:
        (prediction,) = await iris.infer([features])
        return IrisResponse(**prediction.model_dump(), model=ModelRef(**iris.model_ref()))

    @router.post("/iris/batch", summary="Predict the iris species of up to 1000 flowers")
    async def predict_iris_batch(request: IrisBatchRequest) -> IrisBatchResponse:
        results = await iris.infer(request.instances)
        return IrisBatchResponse(results=results, model=ModelRef(**iris.model_ref()))

    @router.post("/fraud", summary="Score one card transaction for fraud")
    async def predict_fraud(transaction: FraudTransaction) -> FraudResponse:
        ((probability, is_fraud, threshold),) = await fraud.infer([transaction])
        return FraudResponse(
            fraud_probability=probability,
            is_fraud=is_fraud,
            threshold=threshold,
            model=ModelRef(**fraud.model_ref()),
        )

    return router
