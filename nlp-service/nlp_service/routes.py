"""NLP routes; the paths are the public ones, so the gateway forwards them unchanged."""

from __future__ import annotations

from fastapi import APIRouter

from modelgate_core.context import annotate
from modelgate_core.model import ServedModel
from modelgate_core.schemas.common import ErrorResponse, ModelRef
from modelgate_core.schemas.nlp import (
    SentimentBatchRequest,
    SentimentBatchResponse,
    SentimentPrediction,
    SentimentRequest,
    SentimentResponse,
)

ERRORS = {code: {"model": ErrorResponse} for code in (413, 422, 503)}


def nlp_router(sentiment: ServedModel[str, SentimentPrediction]) -> APIRouter:
    router = APIRouter(prefix="/v1/nlp", tags=["nlp"], responses=ERRORS)  # type: ignore[arg-type]

    @router.post("/sentiment", summary="Sentiment of one text")
    async def predict_sentiment(request: SentimentRequest) -> SentimentResponse:
        (prediction,) = await sentiment.infer([request.text])
        return SentimentResponse(**prediction.model_dump(), model=ModelRef(**sentiment.model_ref()))

    @router.post("/sentiment/batch", summary="Sentiment of up to 64 texts")
    async def predict_sentiment_batch(request: SentimentBatchRequest) -> SentimentBatchResponse:
        annotate(batch_size=len(request.texts))
        results = await sentiment.infer(request.texts)
        return SentimentBatchResponse(results=results, model=ModelRef(**sentiment.model_ref()))

    return router
