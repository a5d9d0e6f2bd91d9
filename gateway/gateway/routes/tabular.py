"""Tabular routes: iris and fraud."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.deps import State, TabularKey
from gateway.routes.proxy import PROXY_ERRORS, forward
from modelgate_core.schemas.fraud import FraudTransaction
from modelgate_core.schemas.tabular import (
    FraudResponse,
    IrisBatchRequest,
    IrisBatchResponse,
    IrisFeatures,
    IrisResponse,
)

router = APIRouter(prefix="/tabular", tags=["tabular"], responses=PROXY_ERRORS)  # type: ignore[arg-type]

# The body parameters below are validated here (bad input never costs a hop) and documented in the
# OpenAPI schema; the raw body is then forwarded, so nothing is re-serialised.


@router.post("/iris", response_model=IrisResponse, summary="Predict the iris species of one flower")
async def iris(features: IrisFeatures, _key: TabularKey, state: State, request: Request) -> Response:
    return await forward(state, "tabular", request, features.model_dump_json().encode())


@router.post("/iris/batch", response_model=IrisBatchResponse, summary="Predict up to 1000 flowers")
async def iris_batch(batch: IrisBatchRequest, _key: TabularKey, state: State, request: Request) -> Response:
    return await forward(state, "tabular", request, batch.model_dump_json().encode())


@router.post("/fraud", response_model=FraudResponse, summary="Score one card transaction for fraud")
async def fraud(transaction: FraudTransaction, _key: TabularKey, state: State, request: Request) -> Response:
    return await forward(state, "tabular", request, transaction.model_dump_json().encode())
