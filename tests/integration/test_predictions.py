"""Real predictions through the real gateway and services, over real sockets."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sklearn.datasets import load_iris

pytestmark = pytest.mark.integration

ASSETS = Path(__file__).resolve().parents[1] / "assets"

IRIS_NAMES = ["setosa", "versicolor", "virginica"]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def iris_samples() -> list[tuple[dict[str, float], str]]:
    """The average flower of each species, and the first recorded flower of each (clear cases; iris
    has a few borderline versicolor/virginica flowers that no linear model gets right)."""
    data = load_iris()
    samples = []
    for class_id, species in enumerate(IRIS_NAMES):
        rows = data.data[data.target == class_id]
        for row in (rows.mean(axis=0), rows[0]):
            samples.append((dict(zip(FEATURES, (round(float(v), 2) for v in row), strict=True)), species))
    return samples


def test_iris_predicts_known_flowers(gateway: httpx.Client) -> None:
    for features, species in iris_samples():
        body = gateway.post("/v1/tabular/iris", json=features).json()
        assert body["label"] == species, (features, body)
        assert body["class_id"] == IRIS_NAMES.index(species)
        assert set(body["probabilities"]) == set(IRIS_NAMES)
        assert abs(sum(body["probabilities"].values()) - 1) < 1e-3
        assert body["probabilities"][species] == max(body["probabilities"].values())
        assert body["model"]["name"] == "iris" and body["model"]["version"]


def test_iris_batch_keeps_order(gateway: httpx.Client) -> None:
    samples = iris_samples()
    body = gateway.post("/v1/tabular/iris/batch", json={"instances": [f for f, _ in samples]}).json()
    assert [r["label"] for r in body["results"]] == [s for _, s in samples]
    assert body["model"]["name"] == "iris"


def test_fraud_scores_the_documented_examples(gateway: httpx.Client) -> None:
    spec = gateway.get("/openapi.json").json()
    legit, suspicious = spec["components"]["schemas"]["FraudTransaction"]["examples"]
    low = gateway.post("/v1/tabular/fraud", json=legit).json()
    high = gateway.post("/v1/tabular/fraud", json=suspicious).json()
    for body in (low, high):
        assert 0 <= body["fraud_probability"] <= 1
        assert body["is_fraud"] == (body["fraud_probability"] >= body["threshold"])
        assert body["model"]["name"] == "fraud"
    assert low["is_fraud"] is False
    assert high["fraud_probability"] > low["fraud_probability"]


def test_coffee_photo_is_espresso(gateway: httpx.Client) -> None:
    with open(ASSETS / "coffee.jpg", "rb") as photo:
        response = gateway.post("/v1/vision/classify", files={"file": ("coffee.jpg", photo, "image/jpeg")})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 5
    assert "espresso" in [p["label"] for p in predictions]
    assert [p["score"] for p in predictions] == sorted((p["score"] for p in predictions), reverse=True)
    assert response.json()["model"]["name"] == "imagenet"


def test_cat_photo_as_png_is_a_cat_and_top_k_applies(gateway: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.open(ASSETS / "chelsea.jpg").save(buffer, format="PNG")
    response = gateway.post(
        "/v1/vision/classify",
        params={"top_k": 3},
        files={"file": ("cat.png", buffer.getvalue(), "image/png")},
    )
    labels = [p["label"] for p in response.json()["predictions"]]
    assert len(labels) == 3
    assert any("cat" in label for label in labels), labels


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I love this, what a wonderful day!", "positive"),
        ("This is the best thing that ever happened to me, thank you so much", "positive"),
        ("This is terrible, I hate it.", "negative"),
        ("Worst service ever, I am so angry and disappointed", "negative"),
    ],
)
def test_sentiment(gateway: httpx.Client, text: str, label: str) -> None:
    body = gateway.post("/v1/nlp/sentiment", json={"text": text}).json()
    assert body["label"] == label
    assert 0.5 <= body["score"] <= 1
    assert body["model"]["name"] == "sentiment"


def test_sentiment_batch(gateway: httpx.Client) -> None:
    texts = ["I adore my new phone", "I hate waiting in line for hours", "Such a lovely, happy morning"]
    body = gateway.post("/v1/nlp/sentiment/batch", json={"texts": texts}).json()
    assert [r["label"] for r in body["results"]] == ["positive", "negative", "positive"]


def test_model_catalog(gateway: httpx.Client) -> None:
    body = gateway.get("/v1/models").json()
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == {"iris", "fraud", "imagenet", "sentiment"}
    assert body["unavailable"] == []
    assert {m["domain"] for m in models.values()} == {"tabular", "vision", "nlp"}
    assert models["sentiment"]["metrics"]["accuracy"] >= 0.88
    assert models["fraud"]["metrics"]["roc_auc"] > 0.5
    assert all(m["version"] and m["state"] == "READY" for m in models.values())
