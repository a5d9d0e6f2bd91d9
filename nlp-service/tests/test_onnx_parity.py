"""The ONNX artifact answers like the torch one: real sentences agree, and the service answers either way."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from modelgate_core.artifacts import Manifest, read_manifest
from modelgate_core.testing import wait_until_ready
from nlp_service.app import NlpSettings, create_app
from nlp_service.onnx_runner import OnnxSentimentRunner
from nlp_service.runners import SentimentRunner

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR") or REPO / "artifacts")
SENTENCES = {
    "I absolutely love this product, it works perfectly and I am so happy with it!": "positive",
    "What a wonderful, delightful experience. The staff were kind and everything was excellent.": "positive",
    "Thanks @united, smooth flight and we even landed early :)": "positive",
    "This is terrible. It broke after one day and I want my money back.": "negative",
    "The worst service I have ever had: rude staff, cold food and a filthy table. Awful.": "negative",
    "Delayed 3 hours again and nobody at the gate can tell us why": "negative",
}
# fp32 runs the same arithmetic in other kernels; int8 rounds the weights, so clear sentences move a
# little (held-out worst case and agreement are in the artifact's manifest).
TOLERANCE = {"fp32": 1e-4, "int8": 0.05}


def manifest_of(name: str) -> Manifest:
    if not (ARTIFACTS / name / "manifest.json").is_file():
        pytest.skip(f"artifacts/{name} is not built (run `make models`)")
    return read_manifest(ARTIFACTS / name)


def test_onnx_probabilities_equal_torch_on_real_sentences() -> None:
    torch_manifest, onnx_manifest = manifest_of("sentiment"), manifest_of("sentiment-onnx")
    assert onnx_manifest.extra["parent"]["version"] == torch_manifest.version
    precision = onnx_manifest.extra["precision"]
    marker = "onnx-int8" if precision == "int8" else "onnx"
    assert onnx_manifest.version.startswith(f"{torch_manifest.version}.{marker}.")
    # What the export promised: the served ONNX model is as accurate as required on the held-out split.
    assert onnx_manifest.metrics["accuracy"] >= 0.88
    torch_runner, onnx_runner = SentimentRunner(torch_threads=1), OnnxSentimentRunner(torch_threads=1)
    torch_runner.load(ARTIFACTS / "sentiment", torch_manifest)
    onnx_runner.load(ARTIFACTS / "sentiment-onnx", onnx_manifest)
    texts = list(SENTENCES)
    expected = np.stack(torch_runner.predict(texts))
    together = np.stack(onnx_runner.predict(texts))
    one_by_one = np.stack([onnx_runner.predict([t])[0] for t in texts])
    for got in (together, one_by_one):
        np.testing.assert_allclose(got, expected, atol=TOLERANCE[precision])
        assert [onnx_runner.postprocess(p).label for p in got] == list(SENTENCES.values())


@contextmanager
def started(settings: NlpSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_until_ready(client)
        yield client


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_service_answers_with_either_runtime(runtime: str) -> None:
    artifact = "sentiment-onnx" if runtime == "onnx" else "sentiment"
    manifest = manifest_of(artifact)
    settings = NlpSettings(artifacts_dir=ARTIFACTS, runtime=runtime, torch_threads=1, log_json=False)
    with started(settings) as client:
        body = client.post("/v1/nlp/sentiment/batch", json={"texts": list(SENTENCES)}).json()
        assert [r["label"] for r in body["results"]] == list(SENTENCES.values())
        assert body["model"] == {"name": "sentiment", "version": manifest.version}
        single = client.post("/v1/nlp/sentiment", json={"text": "I love it!"}).json()
        assert single["label"] == "positive" and single["model"]["version"] == manifest.version
        (info,) = client.get("/v1/models").json()["models"]
        assert info["name"] == "sentiment" and info["artifact"] == artifact
        assert info["metrics"]["accuracy"] >= 0.88


def test_runtime_and_batching_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME", "torch")
    monkeypatch.setenv("BATCH_MAX_WAIT_MS", "2.5")
    settings = NlpSettings()
    assert settings.runtime == "torch" and settings.batch_max_wait_ms == 2.5
    monkeypatch.delenv("RUNTIME")
    assert NlpSettings().runtime == "onnx"


def test_concurrent_requests_keep_their_own_order() -> None:
    """Single and batch requests merged into shared model calls each get their own results, in order."""
    manifest_of("sentiment-onnx")
    settings = NlpSettings(artifacts_dir=ARTIFACTS, torch_threads=1, log_json=False, batch_max_wait_ms=100)
    texts, labels = list(SENTENCES), list(SENTENCES.values())
    requests = [("/v1/nlp/sentiment/batch", {"texts": texts[i:] + texts[:i]}) for i in range(3)]
    requests += [("/v1/nlp/sentiment", {"text": t}) for t in texts]
    requests += [("/v1/nlp/sentiment/batch", {"texts": texts * 10})]  # 60 inputs: more than a batch
    with started(settings) as client, ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda r: client.post(r[0], json=r[1]), requests))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    for i in range(3):
        assert [r["label"] for r in answers[i].json()["results"]] == labels[i:] + labels[:i]
    assert [a.json()["label"] for a in answers[3:9]] == labels
    assert [r["label"] for r in answers[9].json()["results"]] == labels * 10
