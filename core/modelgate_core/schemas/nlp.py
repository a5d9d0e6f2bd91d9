"""Text sentiment."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from modelgate_core.schemas.common import REQUEST_CONFIG, ModelRef, StrictModel

# Whitespace-only text has no sentiment: the pattern asks for one visible character, and says so in
# the schema (stripping before the length check would make the schema lie about what is accepted).
SentimentText = Annotated[str, StringConstraints(min_length=1, max_length=5000, pattern=r"\S")]
SentimentLabel = Literal["positive", "negative"]


class SentimentRequest(StrictModel):
    model_config = ConfigDict(
        **REQUEST_CONFIG, json_schema_extra={"examples": [{"text": "I love this product!"}]}
    )

    text: SentimentText


class SentimentPrediction(BaseModel):
    label: SentimentLabel = Field(examples=["positive"])
    score: float = Field(ge=0, le=1, description="Probability of the label", examples=[0.98])
    truncated: bool = Field(
        default=False, description="The text was longer than the model reads and was cut to fit"
    )


class SentimentResponse(SentimentPrediction):
    model: ModelRef


class SentimentBatchRequest(StrictModel):
    model_config = ConfigDict(
        **REQUEST_CONFIG,
        json_schema_extra={"examples": [{"texts": ["I love it", "This is awful"]}]},
    )

    texts: list[SentimentText] = Field(min_length=1, max_length=64)


class SentimentBatchResponse(BaseModel):
    results: list[SentimentPrediction]
    model: ModelRef
