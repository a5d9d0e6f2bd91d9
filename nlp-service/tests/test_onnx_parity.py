"""Through the real app, RUNTIME=onnx and RUNTIME=torch on the same built folder answer alike.

As close as the ONNX export measured the two on the held-out split (its manifest's
`max_abs_diff_probs`, whichever precision it shipped), with the same labels, each answer naming the
artifact that gave it; and merging requests into shared model calls changes no answer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from modelgate_core.artifacts import Manifest, read_manifest
from modelgate_core.testing import wait_until_ready
from nlp_service.app import NlpSettings, create_app

REPO = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("MODEL_REPOSITORY") or REPO / "models")
FOLDER = MODELS / "sentiment" / "1"
SINGLE, BATCH = "/v1/nlp/sentiment", "/v1/nlp/sentiment/batch"
SENTENCES = {
    "I absolutely love this product, it works perfectly and I am so happy with it!": "positive",
    "What a wonderful, delightful experience. The staff were kind and everything was excellent.": "positive",
    "Thanks @united, smooth flight and we even landed early :)": "positive",
    "This is terrible. It broke after one day and I want my money back.": "negative",
    "The worst service I have ever had: rude staff, cold food and a filthy table. Awful.": "negative",
    "Delayed 3 hours again and nobody at the gate can tell us why": "negative",
}
# The API rounds scores to 6 decimals, so two rounded scores may differ by one step more than the model's.
ROUNDING = 1e-6


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    if not (FOLDER / "model-settings.json").is_file():
        pytest.fail(f"{FOLDER} is not built (run `make models`)")
    return read_manifest(FOLDER)


@contextmanager
def started(**environment: str) -> Iterator[TestClient]:
    """The app as a deployment configures it, from the environment, with its model loaded."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MODEL_REPOSITORY", str(MODELS))
        for name, value in environment.items():
            env.setenv(name, value)
        settings = NlpSettings(torch_threads=1, log_json=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_until_ready(client)
        yield client


# Batching off: each request is one model call, so only the backend differs between the two.
@pytest.fixture(scope="module")
def onnx_client(manifest: Manifest) -> Iterator[TestClient]:
    with started(RUNTIME="onnx", BATCHING="false") as client:
        yield client


@pytest.fixture(scope="module")
def torch_client(manifest: Manifest) -> Iterator[TestClient]:
    with started(RUNTIME="torch", BATCHING="false") as client:
        yield client


def post(client: TestClient, path: str, payload: dict[str, Any]) -> Any:
    response = client.post(path, json=payload)
    assert response.status_code == 200, response.text
    return response.json()


def assert_same_results(got: list[dict[str, Any]], expected: list[dict[str, Any]], tolerance: float) -> None:
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], rel=0, abs=tolerance)


def test_onnx_and_torch_answer_alike(
    onnx_client: TestClient, torch_client: TestClient, manifest: Manifest
) -> None:
    tolerance = manifest.metrics["max_abs_diff_probs"] + ROUNDING
    texts = {"texts": list(SENTENCES)}
    onnx_results = post(onnx_client, BATCH, texts)["results"]
    assert [r["label"] for r in onnx_results] == list(SENTENCES.values())
    assert_same_results(onnx_results, post(torch_client, BATCH, texts)["results"], tolerance)
    one = {"text": "I love it!"}
    assert_same_results([post(onnx_client, SINGLE, one)], [post(torch_client, SINGLE, one)], tolerance)


@pytest.mark.parametrize(("backend", "platform"), [("onnx", "onnxruntime_onnx"), ("torch", "pytorch_torch")])
def test_the_answer_names_the_artifact_that_gave_it(
    backend: str, platform: str, manifest: Manifest, request: pytest.FixtureRequest
) -> None:
    client: TestClient = request.getfixturevalue(f"{backend}_client")
    # The folder holds the ONNX export and the torch weights it was exported from.
    artifact = manifest.version if backend == "onnx" else manifest.extra["parent"]["version"]
    assert (".onnx" in artifact) == (backend == "onnx")  # ".onnx." or ".onnx-int8."
    model = {"name": "sentiment", "version": artifact, "model_version": "1"}
    assert post(client, BATCH, {"texts": list(SENTENCES)[:2]})["model"] == model
    assert post(client, SINGLE, {"text": "I love it!"})["model"] == model
    (info,) = client.get("/v1/models").json()["models"]
    assert info["name"] == "sentiment" and info["version"] == artifact
    metadata = client.get("/v2/models/sentiment").json()
    assert metadata["platform"] == platform and metadata["parameters"]["backend"] == backend


def test_runtime_and_batching_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME", "torch")
    monkeypatch.setenv("BATCH_MAX_WAIT_MS", "2.5")
    settings = NlpSettings()
    assert settings.runtime == "torch" and settings.batch_max_wait_ms == 2.5
    monkeypatch.delenv("RUNTIME")
    assert NlpSettings().runtime == "onnx"


def test_merged_requests_answer_as_unmerged_and_keep_their_order(
    onnx_client: TestClient, manifest: Manifest
) -> None:
    """Single and batch requests merged into shared model calls each get their own results, in order,
    as close to the unbatched answers as the export saw batching move a text."""
    tolerance = manifest.metrics["batch_variation"] + ROUNDING
    texts = list(SENTENCES)
    alone = {text: post(onnx_client, SINGLE, {"text": text}) for text in texts}
    assert [alone[text]["label"] for text in texts] == list(SENTENCES.values())
    requests = [(BATCH, {"texts": texts[i:] + texts[:i]}) for i in range(3)]
    requests += [(SINGLE, {"text": t}) for t in texts]
    requests += [(BATCH, {"texts": texts * 10})]  # 60 inputs: more than a batch
    with (
        started(BATCHING="true", BATCH_MAX_WAIT_MS="100") as client,
        ThreadPoolExecutor(len(requests)) as pool,
    ):
        answers = list(pool.map(lambda r: post(client, r[0], r[1]), requests))
    for (_, payload), answer in zip(requests, answers, strict=True):
        sent = payload["texts"] if "texts" in payload else [payload["text"]]
        got = answer.get("results", [answer])
        assert_same_results(got, [alone[text] for text in sent], tolerance)
