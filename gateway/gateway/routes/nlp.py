"""NLP routes: sentiment."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.deps import NlpKey, State
from gateway.routes.proxy import PROXY_ERRORS, forward
from modelgate_core.schemas.nlp import (
    SentimentBatchRequest,
    SentimentBatchResponse,
    SentimentRequest,
    SentimentResponse,
)

router = APIRouter(prefix="/nlp", tags=["nlp"], responses=PROXY_ERRORS)  # type: ignore[arg-type]


@router.post("/sentiment", response_model=SentimentResponse, summary="Sentiment of one text")
async def sentiment(body: SentimentRequest, _key: NlpKey, state: State, request: Request) -> Response:
    return await forward(state, "nlp", request, body.model_dump_json().encode())


@router.post("/sentiment/batch", response_model=SentimentBatchResponse, summary="Sentiment of up to 64 texts")
async def sentiment_batch(
    body: SentimentBatchRequest, _key: NlpKey, state: State, request: Request
) -> Response:
    return await forward(state, "nlp", request, body.model_dump_json().encode())
