"""The built-in sentiment routes (`/v1/nlp/sentiment`, `/sentiment/batch`), kept as they were for
their clients, answered by the repository's `sentiment` model (text-classification runtime)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from fastapi import APIRouter

from modelgate_core.context import annotate
from modelgate_core.errors import Unprocessable
from modelgate_core.repository.repository import ModelRepository
from modelgate_core.schemas.common import ErrorResponse, ModelRef
from modelgate_core.schemas.nlp import (
    SentimentBatchRequest,
    SentimentBatchResponse,
    SentimentPrediction,
    SentimentRequest,
    SentimentResponse,
)
from nlp_service.text_runtime import TextTooLong

ERRORS = {code: {"model": ErrorResponse} for code in (413, 422, 503)}


def nlp_router(repository: ModelRepository) -> APIRouter:
    router = APIRouter(prefix="/v1/nlp", tags=["nlp"], responses=ERRORS)  # type: ignore[arg-type]

    async def classify(texts: Sequence[str], field: str) -> tuple[list[SentimentPrediction], ModelRef]:
        served = repository.require("sentiment")
        batch = np.array([t.encode("utf-8") for t in texts], dtype=object)
        try:
            out = await served.infer({"text": batch})
        except TextTooLong as exc:
            raise _too_long(exc, field) from exc
        predictions = [
            SentimentPrediction(
                label=label.decode() if isinstance(label, bytes) else str(label),  # type: ignore[arg-type]
                score=round(float(score), 6),
                truncated=bool(truncated),
            )
            for label, score, truncated in zip(out["label"], out["score"], out["truncated"], strict=True)
        ]
        return predictions, ModelRef.of(served)

    @router.post("/sentiment", summary="Sentiment of one text")
    async def sentiment(request: SentimentRequest) -> SentimentResponse:
        (prediction,), ref = await classify([request.text], "text")
        return SentimentResponse(**prediction.model_dump(), model=ref)

    @router.post("/sentiment/batch", summary="Sentiment of up to 64 texts")
    async def sentiment_batch(request: SentimentBatchRequest) -> SentimentBatchResponse:
        annotate(batch_size=len(request.texts))
        results, ref = await classify(request.texts, "texts")
        return SentimentBatchResponse(results=results, model=ref)

    return router


def _too_long(exc: TextTooLong, field: str) -> Unprocessable:
    """The runtime's refusal as these routes' invalid input: a 422 naming the field, as the schema's."""
    name = field if field == "text" else f"{field}.{exc.row}"
    where = "The text" if field == "text" else f"texts[{exc.row}]"
    message = (
        f"{where} is {exc.tokens} tokens long; the model reads at most {exc.max_length} tokens "
        "and truncation is off, so it is refused rather than cut"
    )
    return Unprocessable(message, details=[{"field": name, "message": message, "type": "too_long"}])
