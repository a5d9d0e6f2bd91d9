"""Tabular models: iris species and card-transaction fraud."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelgate_core.schemas.common import REQUEST_CONFIG, ModelRef, StrictModel

# Real flowers are a few centimetres; > 0 and ≤ 100 refuses garbage without refusing odd specimens.
Centimetres = Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]
IrisLabel = Literal["setosa", "versicolor", "virginica"]


class IrisFeatures(StrictModel):
    """One flower's measurements, in centimetres."""

    model_config = ConfigDict(
        **REQUEST_CONFIG,
        json_schema_extra={
            "examples": [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}]
        },
    )

    sepal_length: Centimetres
    sepal_width: Centimetres
    petal_length: Centimetres
    petal_width: Centimetres

    def to_row(self) -> list[float]:
        return [self.sepal_length, self.sepal_width, self.petal_length, self.petal_width]


class IrisPrediction(BaseModel):
    label: IrisLabel = Field(examples=["setosa"])
    class_id: int = Field(ge=0, le=2, examples=[0])
    probabilities: dict[str, float] = Field(examples=[{"setosa": 0.97, "versicolor": 0.03, "virginica": 0.0}])


class IrisResponse(IrisPrediction):
    model: ModelRef


class IrisBatchRequest(StrictModel):
    instances: list[IrisFeatures] = Field(min_length=1, max_length=1000)


class IrisBatchResponse(BaseModel):
    results: list[IrisPrediction]
    model: ModelRef


class FraudResponse(BaseModel):
    fraud_probability: float = Field(ge=0, le=1, examples=[0.03])
    is_fraud: bool = Field(examples=[False])
    threshold: float = Field(ge=0, le=1, examples=[0.42])
    model: ModelRef
