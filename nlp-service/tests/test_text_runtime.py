"""The `text-classification` runtime on the built-in sentiment folder: both backends, real sentences.

The folder is `models/sentiment/1` as `make models` writes it (MODEL_REPOSITORY points elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import AutoTokenizer

from modelgate_core.batching import BatchPolicy
from modelgate_core.errors import BadRequest
from modelgate_core.repository.runtime import ModelContext
from modelgate_core.repository.served import ServedVersion
from modelgate_core.repository.settings import SETTINGS_FILE, ModelSettings, read_settings
from nlp_service.text_runtime import TextClassificationRuntime, TextTooLong

REPO = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("MODEL_REPOSITORY") or REPO / "models")
# With their labels; all shorter than the folder's max_length (64 tokens), so nothing is cut.
LABELLED = {
    "I absolutely love this product, it works perfectly and I am so happy with it!": b"positive",
    "This is terrible. It broke after one day and I want my money back.": b"negative",
    "Thanks @united, smooth flight and we even landed early :)": b"positive",
    "Delayed 3 hours again and nobody at the gate can tell us why": b"negative",
}
SENTENCES = list(LABELLED)
LONG_TEXT = " ".join(f"word{i % 97} was great" if i % 3 else "fine" for i in range(2000))

Runtime = TextClassificationRuntime


@pytest.fixture(scope="module")
def folder() -> Path:
    built = MODELS / "sentiment" / "1"
    if not (built / SETTINGS_FILE).is_file():
        pytest.fail(f"{built} is not built: run make models")
    return built


def context_of(folder: Path, settings: ModelSettings | None = None) -> ModelContext:
    return ModelContext.of_folder("sentiment", "1", folder, settings)


def loaded(folder: Path, backend: Any, settings: ModelSettings | None = None) -> Runtime:
    runtime = Runtime(context_of(folder, settings), backend=backend, threads=1)
    runtime.load()
    return runtime


@pytest.fixture(scope="module")
def onnx_runtime(folder: Path) -> Runtime:
    return loaded(folder, "onnx")


@pytest.fixture(scope="module")
def torch_runtime(folder: Path) -> Runtime:
    return loaded(folder, "torch")


def texts(*items: str | bytes) -> dict[str, np.ndarray[Any, Any]]:
    return {"text": np.array([t.encode() if isinstance(t, str) else t for t in items], dtype=object)}


def infer(runtime: Runtime, *items: str | bytes) -> Any:
    return runtime.postprocess(runtime.predict(runtime.preprocess(texts(*items), {})), {})


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_clear_sentences_get_their_label(backend: str, request: pytest.FixtureRequest) -> None:
    runtime: Runtime = request.getfixturevalue(f"{backend}_runtime")
    out = infer(runtime, "I love this", "this is awful")
    assert out["label"].tolist() == [b"positive", b"negative"]
    assert out["probabilities"].shape == (2, 2) and out["probabilities"].dtype == np.float32
    np.testing.assert_allclose(out["probabilities"].sum(axis=-1), 1.0, atol=1e-6)
    assert out["score"].dtype == np.float32
    np.testing.assert_array_equal(out["score"], out["probabilities"].max(axis=-1))
    assert out["truncated"].tolist() == [False, False] and out["truncated"].dtype == np.bool_


def test_a_long_text_is_cut_and_says_so(onnx_runtime: Runtime, folder: Path) -> None:
    out = infer(onnx_runtime, LONG_TEXT, "I love this")
    assert out["truncated"].tolist() == [True, False]
    assert out["label"][1] == b"positive"
    # Cut means cut: the long text answers as its first max_length tokens would.
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ids = tokenizer(LONG_TEXT, truncation=True, max_length=onnx_runtime.max_length)["input_ids"]
    prefix = tokenizer.decode(ids[1:-1])
    np.testing.assert_allclose(
        infer(onnx_runtime, prefix)["probabilities"][0], out["probabilities"][0], atol=1e-4
    )


def test_the_backends_agree_as_the_export_measured(onnx_runtime: Runtime, torch_runtime: Runtime) -> None:
    """ONNX and torch on the same folder: as close as the export measured them on the held-out split
    (whichever precision it shipped), as one batch or one by one, with the same labels."""
    manifest = onnx_runtime.context.manifest
    assert manifest is not None
    tolerance = manifest.metrics["max_abs_diff_probs"]
    # One by one, a text also moves by as much as the export saw batching move one.
    alone_tolerance = tolerance + manifest.metrics["batch_variation"]
    prepared = onnx_runtime.preprocess(texts(*SENTENCES), {})
    expected = torch_runtime.predict(prepared)["probabilities"]
    together = onnx_runtime.predict(prepared)["probabilities"]
    one_by_one = np.concatenate(
        [
            onnx_runtime.predict({"text": np.array([text], dtype=object)})["probabilities"]
            for text in prepared["text"]
        ]
    )
    np.testing.assert_allclose(together, expected, rtol=0, atol=tolerance)
    np.testing.assert_allclose(one_by_one, expected, rtol=0, atol=alone_tolerance)
    for got in (expected, together, one_by_one):
        raw = {"probabilities": got, "truncated": np.zeros(len(got), np.bool_)}
        labels = onnx_runtime.postprocess(raw, {})["label"]
        assert labels.tolist() == list(LABELLED.values())


def test_merged_requests_each_get_their_rows(onnx_runtime: Runtime) -> None:
    first = onnx_runtime.preprocess(texts(*SENTENCES[:1]), {})
    second = onnx_runtime.preprocess(texts(LONG_TEXT, *SENTENCES[1:]), {})
    merged = onnx_runtime.predict({"text": np.concatenate([first["text"], second["text"]])})
    mine = onnx_runtime.postprocess({name: rows[1:] for name, rows in merged.items()}, {})
    alone = onnx_runtime.postprocess(onnx_runtime.predict(second), {})
    assert mine["truncated"].tolist() == [True, False, False, False]
    assert mine["label"].tolist() == alone["label"].tolist()
    np.testing.assert_allclose(mine["probabilities"], alone["probabilities"], atol=1e-3)


@pytest.mark.parametrize(
    ("element", "message"),
    [
        (b"caf\xe9 was great", "not valid UTF-8"),
        (b"", "is empty"),
        (b" \n\t ", "is empty"),
        (1234, "must be a string"),
    ],
)
def test_bad_texts_are_400(onnx_runtime: Runtime, element: object, message: str) -> None:
    batch = {"text": np.array([b"I love this", element], dtype=object)}
    with pytest.raises(BadRequest, match=message) as caught:
        onnx_runtime.preprocess(batch, {})
    assert caught.value.status_code == 400
    assert "text[1]" in caught.value.message


def test_metadata_follows_the_backend(onnx_runtime: Runtime, torch_runtime: Runtime) -> None:
    manifest = onnx_runtime.context.manifest
    assert manifest is not None
    assert onnx_runtime.platform == "onnxruntime_onnx" and torch_runtime.platform == "pytorch_torch"
    assert onnx_runtime.artifact_version() == manifest.version
    assert torch_runtime.artifact_version() == manifest.extra["parent"]["version"]
    assert manifest.version.startswith(str(torch_runtime.artifact_version()) + ".onnx")
    for runtime in (onnx_runtime, torch_runtime):
        assert runtime.batchable and runtime.labels == ["negative", "positive"]
        assert runtime.max_length == read_settings(runtime.context.folder).parameters["max_length"]
        assert [(s.name, s.datatype, s.shape) for s in runtime.inputs] == [("text", "BYTES", [-1])]
        assert {s.name: (s.datatype, s.shape) for s in runtime.outputs} == {
            "label": ("BYTES", [-1]),
            "score": ("FP32", [-1]),
            "probabilities": ("FP32", [-1, 2]),
            "truncated": ("BOOL", [-1]),
        }


def with_parameters(folder: Path, **changes: Any) -> ModelSettings:
    settings = read_settings(folder)
    return settings.model_copy(update={"parameters": {**settings.parameters, **changes}})


def test_labels_from_the_settings_win(folder: Path) -> None:
    runtime = loaded(folder, "onnx", with_parameters(folder, labels=["bad", "good"]))
    assert infer(runtime, "I love this")["label"].tolist() == [b"good"]
    with pytest.raises(ValueError, match="outputs 2 classes but there are 3 labels"):
        loaded(folder, "onnx", with_parameters(folder, labels=["a", "b", "c"]))


def test_the_torch_backend_needs_weights(folder: Path, tmp_path: Path) -> None:
    # The ONNX export's folder without its graph: tokenizer and config, but no torch weights.
    for path in folder.iterdir():
        if path.is_file() and path.suffix in (".json", ".txt"):
            shutil.copy2(path, tmp_path / path.name)
    settings = ModelSettings(runtime="text-classification")
    runtime = Runtime(ModelContext("sentiment", "1", tmp_path, settings), backend="onnx")
    with pytest.raises(FileNotFoundError, match="the torch backend needs weights"):
        runtime.load()
    assert runtime.artifact_version() is None


@pytest.mark.parametrize("max_length", [0, "128", True])
def test_a_bad_max_length_fails_the_load(folder: Path, max_length: object) -> None:
    with pytest.raises(ValueError, match="max_length must be a positive integer"):
        loaded(folder, "onnx", with_parameters(folder, max_length=max_length))


def test_no_texts_is_400(onnx_runtime: Runtime) -> None:
    with pytest.raises(BadRequest, match="holds no texts"):
        onnx_runtime.preprocess({"text": np.array([], dtype=object)}, {})


def test_blank_means_what_the_v1_schema_means(onnx_runtime: Runtime) -> None:
    """A text the `/v1` schema accepts is never refused as blank over `/v2`, and the other way round
    (Schemathesis found U+001E: Python's `str.strip()` calls it blank, the schema's `\\S` does not)."""
    from pydantic import TypeAdapter, ValidationError

    from modelgate_core.schemas.nlp import SentimentText

    schema = TypeAdapter(SentimentText)
    disagree = []
    for codepoint in range(0x3100):
        if 0xD800 <= codepoint <= 0xDFFF:
            continue  # surrogates are not text
        char = chr(codepoint)
        try:
            schema.validate_python(char)
            accepted = True
        except ValidationError:
            accepted = False
        try:
            onnx_runtime.preprocess({"text": np.array([char.encode()], dtype=object)}, {})
            taken = True
        except BadRequest:
            taken = False
        if accepted != taken:
            disagree.append(hex(codepoint))
    assert disagree == []


# --- Truncation off: a text longer than the model reads is refused -----------------------------------


def strict(folder: Path, **changes: Any) -> Runtime:
    """The runtime as a service with NLP_TRUNCATE=false builds it (the model's parameters may differ)."""
    runtime = Runtime(context_of(folder, with_parameters(folder, **changes)), truncate=False)
    runtime.load()
    return runtime


def test_truncation_off_refuses_a_long_text_naming_it(folder: Path) -> None:
    runtime = strict(folder)
    assert runtime.truncate is False and runtime.describe()["truncate"] is False
    tokens = len(AutoTokenizer.from_pretrained(folder, local_files_only=True)(LONG_TEXT)["input_ids"])
    assert tokens > runtime.max_length == 64
    with pytest.raises(TextTooLong) as caught:
        infer(runtime, "I love this", LONG_TEXT)
    error = caught.value
    assert error.status_code == 400  # what OIP answers for an input that does not fit the model
    assert (error.row, error.tokens, error.max_length) == (1, tokens, 64)
    assert f"text[1] is {tokens} tokens long; the model reads at most 64 tokens" in error.message
    # What fits is still answered, and nothing was cut.
    out = infer(runtime, "I love this", "this is awful")
    assert out["label"].tolist() == [b"positive", b"negative"]
    assert out["truncated"].tolist() == [False, False]


def test_a_text_of_exactly_max_length_tokens_is_not_too_long(folder: Path) -> None:
    runtime = strict(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ids = tokenizer(LONG_TEXT, truncation=True, max_length=64)["input_ids"]
    exact = tokenizer.decode(ids[1:-1])
    assert len(tokenizer(exact)["input_ids"]) == 64
    assert infer(runtime, exact)["truncated"].tolist() == [False]
    with pytest.raises(TextTooLong):
        infer(runtime, exact + " and more")


def test_the_models_parameter_overrides_the_services_default(folder: Path) -> None:
    """`"truncate"` in model-settings.json wins over the service's NLP_TRUNCATE, either way."""
    assert infer(strict(folder, truncate=True), LONG_TEXT)["truncated"].tolist() == [True]
    runtime = Runtime(context_of(folder, with_parameters(folder, truncate=False)), truncate=True)
    runtime.load()
    with pytest.raises(TextTooLong, match=r"text\[0\]"):
        infer(runtime, LONG_TEXT)


@pytest.mark.parametrize("truncate", ["false", 0, None])
def test_a_bad_truncate_fails_the_load(folder: Path, truncate: object) -> None:
    with pytest.raises(ValueError, match=r"parameters\.truncate must be true or false"):
        loaded(folder, "onnx", with_parameters(folder, truncate=truncate))


async def test_in_a_merged_batch_only_the_long_texts_request_fails(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two requests merged into one model call (the batch closes when their 4 texts are in): the one
    with the long text gets the error, naming its own row (1, not the merged batch's 3); the other
    gets its answer."""
    caplog.set_level(logging.INFO, logger="modelgate.model")
    served = ServedVersion(strict(folder), batching=BatchPolicy(max_batch_size=4, max_wait_ms=60_000))
    fine, long = await asyncio.gather(
        served.infer(texts(SENTENCES[0], SENTENCES[1])),
        served.infer(texts(SENTENCES[2], LONG_TEXT)),
        return_exceptions=True,
    )
    assert "merged batch failed" in caplog.text  # they did share one call
    assert isinstance(fine, dict) and fine["label"].tolist() == [LABELLED[t] for t in SENTENCES[:2]]
    assert isinstance(long, TextTooLong) and long.row == 1
