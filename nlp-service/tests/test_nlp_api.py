"""nlp-service API tests: the real app and the real model (models/sentiment), in-process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from modelgate_core.testing import wait_until_ready
from nlp_service.app import NlpSettings, create_app

REPO = Path(__file__).resolve().parents[2]
# The built models; MODEL_REPOSITORY (as the services read it) points elsewhere.
MODELS = Path(os.environ.get("MODEL_REPOSITORY") or REPO / "models")
SINGLE = "/v1/nlp/sentiment"
BATCH = "/v1/nlp/sentiment/batch"

POSITIVE = [
    "I absolutely love this product, it works perfectly and I am so happy with it!",
    "What a wonderful, delightful experience. The staff were kind and everything was excellent.",
    "This is the best movie I have seen in years: brilliant acting and a beautiful story.",
]
NEGATIVE = [
    "This is terrible. It broke after one day and I want my money back.",
    "The worst service I have ever had: rude staff, cold food and a filthy table. Awful.",
    "I hated every minute of this boring, badly acted and painfully stupid film.",
]


@contextmanager
def started(settings: NlpSettings) -> Iterator[TestClient]:
    """The app with its lifespan running and its model loaded (fails if `make models` has not built it)."""
    if not (settings.model_repository / "sentiment" / "1" / "model-settings.json").is_file():
        pytest.fail("models/sentiment is not built (run `make models`)")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_until_ready(client)
        yield client


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with started(NlpSettings(model_repository=MODELS, torch_threads=1, log_json=False)) as client:
        yield client


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The common error shape, with the request ID the response header carries."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) >= {"code", "message", "request_id"}
    assert error["request_id"] == response.headers["x-request-id"]
    assert error["message"]
    if code:
        assert error["code"] == code
    return error


def fields(error: dict[str, Any]) -> list[str]:
    return [d["field"] for d in error["details"]]


# --- What works --------------------------------------------------------------------------------------


OBVIOUS = [(t, "positive") for t in POSITIVE] + [(t, "negative") for t in NEGATIVE]


@pytest.mark.parametrize(("text", "label"), OBVIOUS)
def test_obvious_sentiment(client: TestClient, text: str, label: str) -> None:
    response = client.post(SINGLE, json={"text": text})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] == label
    assert 0.5 < body["score"] <= 1.0  # the probability of the label it chose
    assert body["model"]["name"] == "sentiment"
    assert body["model"]["version"]


def test_batch_keeps_the_order(client: TestClient) -> None:
    texts = [POSITIVE[0], NEGATIVE[0], NEGATIVE[1], POSITIVE[1], POSITIVE[2], NEGATIVE[2]]
    response = client.post(BATCH, json={"texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = ["positive" if text in POSITIVE else "negative" for text in texts]
    assert [r["label"] for r in body["results"]] == expected
    assert all(0.5 < r["score"] <= 1.0 for r in body["results"])
    assert body["model"]["name"] == "sentiment"


def test_batch_matches_single_predictions(client: TestClient) -> None:
    """Padding a text inside a batch does not change its prediction."""
    texts = ["Great.", NEGATIVE[1]]
    batch = client.post(BATCH, json={"texts": texts}).json()["results"]
    for text, result in zip(texts, batch, strict=True):
        single = client.post(SINGLE, json={"text": text}).json()
        assert single["label"] == result["label"]
        assert single["score"] == pytest.approx(result["score"], abs=1e-3)


def test_longest_texts_are_accepted(client: TestClient) -> None:
    """5000 characters (the limit) are truncated to the model's length, not refused."""
    text = ("I love it. " * 500)[:5000]
    response = client.post(SINGLE, json={"text": text})
    assert response.status_code == 200, response.text
    assert response.json()["label"] == "positive"
    full = client.post(BATCH, json={"texts": [text] * 64})
    assert full.status_code == 200, full.text
    assert len(full.json()["results"]) == 64


# --- What is refused ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_empty_text_is_refused(client: TestClient, text: str) -> None:
    error = assert_error(client.post(SINGLE, json={"text": text}), 422, "validation_error")
    assert fields(error) == ["text"]


def test_too_long_text_is_refused(client: TestClient) -> None:
    error = assert_error(client.post(SINGLE, json={"text": "a" * 5001}), 422)
    assert fields(error) == ["text"]
    assert "5000" in error["details"][0]["message"]
    assert "aaaa" not in str(error)  # the input is not echoed back


def test_batch_limits(client: TestClient) -> None:
    error = assert_error(client.post(BATCH, json={"texts": ["fine"] * 65}), 422)
    assert fields(error) == ["texts"]
    error = assert_error(client.post(BATCH, json={"texts": []}), 422)
    assert fields(error) == ["texts"]
    error = assert_error(client.post(BATCH, json={"texts": ["fine", "  ", "a" * 5001]}), 422)
    assert fields(error) == ["texts.1", "texts.2"]


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        (SINGLE, {"text": 42}, "text"),
        (SINGLE, {"text": ["a list"]}, "text"),
        (SINGLE, {"text": None}, "text"),
        (SINGLE, {}, "text"),
        (SINGLE, ["just", "a", "list"], "body"),
        (BATCH, {"texts": "not a list"}, "texts"),
        (BATCH, {"texts": ["ok", 3]}, "texts.1"),
        (BATCH, {"text": "singular"}, "texts"),
    ],
)
def test_wrong_types_are_refused(client: TestClient, path: str, payload: Any, field: str) -> None:
    error = assert_error(client.post(path, json=payload), 422, "validation_error")
    assert field in fields(error)


def test_extra_fields_are_refused(client: TestClient) -> None:
    error = assert_error(client.post(SINGLE, json={"text": "Nice.", "lang": "en"}), 422)
    assert fields(error) == ["lang"]
    error = assert_error(client.post(BATCH, json={"texts": ["Nice."], "top_k": 2}), 422)
    assert fields(error) == ["top_k"]


@pytest.mark.parametrize("body", [b'{"text": "unterminated', b"not json at all", b""])
def test_malformed_json_is_refused(client: TestClient, body: bytes) -> None:
    response = client.post(SINGLE, content=body, headers={"content-type": "application/json"})
    error = assert_error(response, 422, "validation_error")
    assert error["details"]


def test_oversized_body_is_413(tmp_path: Path) -> None:
    """The limit applies while the body is read, before parsing (and before the model is asked)."""
    settings = NlpSettings(model_repository=tmp_path, max_json_bytes=2048, torch_threads=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as small:
        error = assert_error(small.post(BATCH, json={"texts": ["x" * 1000] * 3}), 413, "payload_too_large")
        assert "2048" in error["message"]


def test_model_is_listed(client: TestClient) -> None:
    (model,) = client.get("/v1/models").json()["models"]
    assert model["name"] == "sentiment"
    assert model["state"] == "READY"
    assert model["domain"] == "nlp"


# --- Readiness ---------------------------------------------------------------------------------------


def test_routes_answer_503_without_their_model(tmp_path: Path) -> None:
    """An empty repository is a ready service with nothing to serve: the sentiment routes say why."""
    settings = NlpSettings(model_repository=tmp_path / "nothing-here", torch_threads=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_until_ready(client)
        for path, payload in ((SINGLE, {"text": "Nice."}), (BATCH, {"texts": ["Nice."]})):
            error = assert_error(client.post(path, json=payload), 503, "service_unavailable")
            assert "sentiment" in error["message"]
