"""Card-transaction fraud: the model's input features, as one API request.

The fields are exactly the fraud model's input columns, in model order (the build checks this, and the
service refuses an artifact whose feature list differs). The history features follow the Fraud
Detection Handbook: the caller's feature store computes them from the card's and the terminal's past
transactions. Customer windows include the transaction being scored; terminal windows end one delay
period (7 days) before it, because fraud labels are only known after investigation.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from modelgate_core.schemas.common import REQUEST_CONFIG

# Night is 00:00-06:59, as in the handbook (hour <= 6); the validator keeps flag and hour consistent.
NIGHT_LAST_HOUR = 6
_MAX_AMOUNT = 1_000_000.0
_MAX_COUNT = 1_000_000


class FraudTransaction(BaseModel):
    """One card transaction with its engineered features (amounts in the card's currency).

    Beyond each field's range, a vector must be one a real transaction can have: `tx_during_night` is 1
    exactly when `tx_hour` <= 6, and for the customer and the terminal the 1-day count <= the 7-day count
    <= the 30-day count. Anything else is refused with 422.
    """

    model_config = ConfigDict(
        **REQUEST_CONFIG,
        json_schema_extra={
            "examples": [
                {
                    # An ordinary afternoon purchase in line with the card's history, at a clean terminal.
                    "tx_amount": 51.89,
                    "tx_hour": 14,
                    "tx_during_night": 0,
                    "tx_during_weekend": 0,
                    "customer_nb_tx_1day": 2,
                    "customer_avg_amount_1day": 57.77,
                    "customer_nb_tx_7day": 12,
                    "customer_avg_amount_7day": 60.55,
                    "customer_nb_tx_30day": 40,
                    "customer_avg_amount_30day": 64.02,
                    "terminal_nb_tx_1day": 1,
                    "terminal_risk_1day": 0.0,
                    "terminal_nb_tx_7day": 7,
                    "terminal_risk_7day": 0.0,
                    "terminal_nb_tx_30day": 45,
                    "terminal_risk_30day": 0.0222,
                },
                {
                    # A stolen card: at 5 a.m., seven times the card's usual spend, a burst of transactions
                    # today.
                    "tx_amount": 778.5,
                    "tx_hour": 5,
                    "tx_during_night": 1,
                    "tx_during_weekend": 0,
                    "customer_nb_tx_1day": 6,
                    "customer_avg_amount_1day": 225.67,
                    "customer_nb_tx_7day": 20,
                    "customer_avg_amount_7day": 135.28,
                    "customer_nb_tx_30day": 101,
                    "customer_avg_amount_30day": 106.79,
                    "terminal_nb_tx_1day": 0,
                    "terminal_risk_1day": 0.0,
                    "terminal_nb_tx_7day": 9,
                    "terminal_risk_7day": 0.0,
                    "terminal_nb_tx_30day": 43,
                    "terminal_risk_30day": 0.0,
                },
            ]
        },
    )

    tx_amount: float = Field(ge=0, le=_MAX_AMOUNT, allow_inf_nan=False, description="Transaction amount.")
    tx_hour: int = Field(ge=0, le=23, description="Hour of day of the transaction (0-23, local time).")
    tx_during_night: int = Field(ge=0, le=1, description="1 if the hour is 0-6 (night), else 0.")
    tx_during_weekend: int = Field(ge=0, le=1, description="1 if on a Saturday or Sunday, else 0.")
    customer_nb_tx_1day: int = Field(
        ge=1, le=_MAX_COUNT, description="Card's transactions in the last 1 day, this one included."
    )
    customer_avg_amount_1day: float = Field(
        ge=0, le=_MAX_AMOUNT, allow_inf_nan=False, description="Card's mean amount over the last 1 day."
    )
    customer_nb_tx_7day: int = Field(
        ge=1, le=_MAX_COUNT, description="Card's transactions in the last 7 days, this one included."
    )
    customer_avg_amount_7day: float = Field(
        ge=0, le=_MAX_AMOUNT, allow_inf_nan=False, description="Card's mean amount over the last 7 days."
    )
    customer_nb_tx_30day: int = Field(
        ge=1, le=_MAX_COUNT, description="Card's transactions in the last 30 days, this one included."
    )
    customer_avg_amount_30day: float = Field(
        ge=0, le=_MAX_AMOUNT, allow_inf_nan=False, description="Card's mean amount over the last 30 days."
    )
    terminal_nb_tx_1day: int = Field(
        ge=0, le=_MAX_COUNT, description="Terminal's transactions in the 1 day ending 7 days ago."
    )
    terminal_risk_1day: float = Field(
        ge=0, le=1, allow_inf_nan=False, description="Share of those that were fraud (0 if none)."
    )
    terminal_nb_tx_7day: int = Field(
        ge=0, le=_MAX_COUNT, description="Terminal's transactions in the 7 days ending 7 days ago."
    )
    terminal_risk_7day: float = Field(
        ge=0, le=1, allow_inf_nan=False, description="Share of those that were fraud (0 if none)."
    )
    terminal_nb_tx_30day: int = Field(
        ge=0, le=_MAX_COUNT, description="Terminal's transactions in the 30 days ending 7 days ago."
    )
    terminal_risk_30day: float = Field(
        ge=0, le=1, allow_inf_nan=False, description="Share of those that were fraud (0 if none)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        """Refuse feature vectors no real transaction can have (they would get a meaningless score)."""
        if self.tx_during_night != int(self.tx_hour <= NIGHT_LAST_HOUR):
            raise ValueError(f"tx_during_night must be 1 exactly when tx_hour <= {NIGHT_LAST_HOUR}")
        # Longer windows ending at the same moment contain the shorter ones.
        for who in ("customer", "terminal"):
            counts = [getattr(self, f"{who}_nb_tx_{days}day") for days in (1, 7, 30)]
            if not counts[0] <= counts[1] <= counts[2]:
                raise ValueError(f"{who}_nb_tx_1day <= {who}_nb_tx_7day <= {who}_nb_tx_30day must hold")
        return self

    def to_row(self) -> list[float]:
        """The feature values in model column order, as floats."""
        return [float(getattr(self, name)) for name in type(self).model_fields]
