"""nlp-service API tests: the real app and the real model (models/sentiment), in-process."""

from __future__ import annotations

import json
import os
import shutil
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


# Far over the built-in model's 64 tokens, well under the schema's 5000 characters.
LONG = " ".join(["The service was slow but the food was really wonderful and I loved it."] * 20)


def oip_texts(*items: str) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(items)], "data": list(items)}]}


def oip_output(response: Any, name: str) -> list[Any]:
    assert response.status_code == 200, response.text
    (output,) = [o for o in response.json()["outputs"] if o["name"] == name]
    return list(output["data"])


def test_a_long_text_is_cut_and_flagged(client: TestClient) -> None:
    """By default a text longer than the model reads is cut to fit, and the answer says so."""
    long = client.post(SINGLE, json={"text": LONG})
    assert long.status_code == 200, long.text
    assert long.json()["truncated"] is True and long.json()["label"] == "positive"
    short = client.post(SINGLE, json={"text": POSITIVE[0]})
    assert short.status_code == 200, short.text
    assert short.json()["truncated"] is False
    batch = client.post(BATCH, json={"texts": [NEGATIVE[0], LONG]})
    assert [r["truncated"] for r in batch.json()["results"]] == [False, True]
    # The same flag over OIP, as a BOOL output.
    answer = client.post("/v2/models/sentiment/infer", json=oip_texts(NEGATIVE[0], LONG))
    assert oip_output(answer, "truncated") == [False, True]
    (output,) = [o for o in answer.json()["outputs"] if o["name"] == "truncated"]
    assert output["datatype"] == "BOOL"


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


# --- NLP_TRUNCATE=false: too long is refused, not cut ------------------------------------------------


@pytest.fixture(scope="module")
def strict() -> Iterator[TestClient]:
    settings = NlpSettings(model_repository=MODELS, nlp_truncate=False, torch_threads=1, log_json=False)
    with started(settings) as client:
        yield client


def test_truncation_off_refuses_a_long_text_with_422(strict: TestClient) -> None:
    error = assert_error(strict.post(SINGLE, json={"text": LONG}), 422, "validation_error")
    assert "The text is" in error["message"] and "at most 64 tokens" in error["message"]
    assert fields(error) == ["text"]
    assert "wonderful" not in str(error)  # the input is not echoed back
    # What fits is answered as ever.
    short = strict.post(SINGLE, json={"text": POSITIVE[0]})
    assert short.status_code == 200, short.text
    assert short.json()["truncated"] is False and short.json()["label"] == "positive"


def test_truncation_off_names_the_long_text_of_a_batch(strict: TestClient) -> None:
    error = assert_error(strict.post(BATCH, json={"texts": [POSITIVE[0], NEGATIVE[0], LONG]}), 422)
    assert fields(error) == ["texts.2"]
    assert "texts[2] is" in error["message"] and "at most 64 tokens" in error["message"]


def test_truncation_off_is_400_over_oip(strict: TestClient) -> None:
    """OIP answers an input that does not fit the model with 400, in its own error shape."""
    response = strict.post("/v2/models/sentiment/infer", json=oip_texts(POSITIVE[0], LONG))
    assert response.status_code == 400, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["code"] == "bad_request"
    assert "text[1] is" in body["error"] and "at most 64 tokens" in body["error"]
    assert body["request_id"] == response.headers["x-request-id"]
    metadata = strict.get("/v2/models/sentiment").json()
    assert metadata["parameters"]["truncate"] is False


def test_nlp_truncate_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NLP_TRUNCATE", "false")
    assert NlpSettings().nlp_truncate is False
    monkeypatch.setenv("NLP_TRUNCATE", "")  # empty counts as unset
    assert NlpSettings().nlp_truncate is True


def test_a_model_can_refuse_long_texts_on_its_own(tmp_path: Path) -> None:
    """`"truncate": false` in one model's parameters, the service left at its default."""
    built = MODELS / "sentiment" / "1"
    folder = tmp_path / "sentiment" / "1"
    folder.mkdir(parents=True)
    # Without the manifest, which pins the settings file's hash: the folder is the user's own now.
    for path in built.iterdir():
        if path.name not in ("model-settings.json", "manifest.json"):
            # Hard links, not symbolic ones (the repository refuses files that point outside the folder).
            try:
                os.link(path, folder / path.name)
            except OSError:
                shutil.copy2(path, folder / path.name)
    settings = json.loads((built / "model-settings.json").read_text())
    settings["parameters"]["truncate"] = False
    (folder / "model-settings.json").write_text(json.dumps(settings))
    with started(NlpSettings(model_repository=tmp_path, torch_threads=1, log_json=False)) as client:
        error = assert_error(client.post(SINGLE, json={"text": LONG}), 422, "validation_error")
        assert "at most 64 tokens" in error["message"]


# --- Readiness ---------------------------------------------------------------------------------------


def test_routes_answer_503_without_their_model(tmp_path: Path) -> None:
    """An empty repository is a ready service with nothing to serve: the sentiment routes say why."""
    settings = NlpSettings(model_repository=tmp_path / "nothing-here", torch_threads=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_until_ready(client)
        for path, payload in ((SINGLE, {"text": "Nice."}), (BATCH, {"texts": ["Nice."]})):
            error = assert_error(client.post(path, json=payload), 503, "service_unavailable")
            assert "sentiment" in error["message"]
