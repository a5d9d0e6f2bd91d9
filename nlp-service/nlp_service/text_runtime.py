"""`text-classification`: a transformers `save_pretrained` folder served over the Open Inference Protocol.

The folder's tokenizer always tokenises; the network is its ONNX graph (`parameters.onnx_file`) or
its torch weights. Texts are tokenised together in `predict`, so a merged batch is padded to its
longest text only, and texts longer than `max_length` tokens are cut, with a `truncated` flag per
row so that no request loses words silently; or, with truncation off (the service's NLP_TRUNCATE=false,
or `"truncate": false` for one model), refused with `TextTooLong`, naming the text and the limit.

    {"runtime": "text-classification",
     "parameters": {"onnx_file": "model.onnx", "max_length": 128, "labels": ["negative", "positive"],
                    "truncate": true}}
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from modelgate_core.errors import BadRequest
from modelgate_core.oip.types import Parameters, TensorSpec
from modelgate_core.onnx_session import create_session
from modelgate_core.repository.runtime import (
    ModelContext,
    ModelRuntime,
    Tensors,
    check_fixed_tensors,
    declared_or,
)

Backend = Literal["onnx", "torch"]

PLATFORMS: dict[Backend, str] = {"onnx": "onnxruntime_onnx", "torch": "pytorch_torch"}

# What `from_pretrained` reads weights from; without one of them only the ONNX graph can serve.
TORCH_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

TEXT_INPUT = TensorSpec(name="text", datatype="BYTES", shape=[-1])

# Tokens per text where neither the settings nor the manifest say (the fine-tune's own is in its manifest).
DEFAULT_MAX_LENGTH = 128


def _int_parameter(parameters: Parameters, name: str, default: int) -> int:
    value = parameters.get(name, default)
    # bool is an int subclass: `true` in a settings file is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"parameters.{name} must be a positive integer, got {value!r}")
    return value


def _softmax(logits: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities: np.ndarray[Any, np.dtype[np.float32]] = (exp / exp.sum(axis=-1, keepdims=True)).astype(
        np.float32
    )
    return probabilities


# Unicode's White_Space characters: what the `/v1` schema's `\S` pattern (pydantic's regex engine)
# treats as blank. Python's `str.strip()` also strips U+001C..U+001F, which would refuse texts that
# the schema accepts (Schemathesis found one).
UNICODE_WHITE_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)


def _decode_text(element: object, row: int) -> str:
    if isinstance(element, str):
        text = element
    elif isinstance(element, bytes):
        try:
            text = element.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"text[{row}] is not valid UTF-8: {exc.reason} at byte {exc.start}") from exc
    else:
        raise BadRequest(f"text[{row}] must be a string, got {type(element).__name__}")
    if not text.strip(UNICODE_WHITE_SPACE):
        raise BadRequest(f"text[{row}] is empty; send at least one visible character")
    return text


def _bool_parameter(parameters: Parameters, name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"parameters.{name} must be true or false, got {value!r}")
    return value


class TextTooLong(BadRequest):
    """A text longer than the model reads, where truncation is off.

    A 400, as OIP answers every input that does not fit the model; the `/v1/nlp` routes answer it as
    their other invalid input, a 422 naming the field.
    """

    def __init__(self, row: int, tokens: int, max_length: int) -> None:
        self.row = row
        self.tokens = tokens
        self.max_length = max_length
        super().__init__(
            f"text[{row}] is {tokens} tokens long; the model reads at most {max_length} tokens "
            "and truncation is off, so it is refused rather than cut"
        )


class TextClassificationRuntime(ModelRuntime):
    """A sequence classifier: `text` BYTES [-1] in; `label`, `score`, `probabilities`, `truncated` out."""

    runtime = "text-classification"
    # Preprocessing checks the tensors, postprocessing picks outputs: cheaper than a thread hand-off.
    light_steps = True

    def __init__(
        self, context: ModelContext, *, backend: Backend = "onnx", threads: int = 1, truncate: bool = True
    ) -> None:
        super().__init__(context)
        self.requested_backend: Backend = backend
        self.backend: Backend = backend
        self.threads = threads
        self.labels: list[str] = []
        self.max_length = DEFAULT_MAX_LENGTH
        # The service's default (NLP_TRUNCATE); the model's `parameters.truncate` overrides it in `load`.
        self.default_truncate = truncate
        self.truncate = truncate
        # A fast tokenizer is not safe to call from two threads at once ("Already borrowed").
        self._tokenizer_lock = threading.Lock()
        self._tokenizer: Any = None
        self._session: Any = None
        self._model: Any = None
        self._feed_names: list[str] = []
        self._output_name = ""

    # The base declares a ClassVar; here the platform is the backend that loaded, known after `load`.
    @property
    def platform(self) -> str:  # type: ignore[override]
        return PLATFORMS[self.backend]

    def load(self) -> None:
        folder, parameters = self.context.folder, self.context.parameters
        manifest_extra = self.context.manifest.extra if self.context.manifest else {}
        self.max_length = _int_parameter(
            parameters, "max_length", int(manifest_extra.get("max_length", DEFAULT_MAX_LENGTH))
        )
        self.truncate = _bool_parameter(parameters, "truncate", self.default_truncate)
        self._tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.labels = self._read_labels(parameters)
        onnx_file = parameters.get("onnx_file")
        if self.requested_backend == "onnx" and onnx_file:
            self.backend = "onnx"
            self._load_onnx(str(onnx_file))
        else:
            self.backend = "torch"
            self._load_torch()
        self.inputs, self.outputs = declared_or(self.context, [TEXT_INPUT], self._derived_outputs())
        self._check_declared()
        # One warm-up pass, so that the first request does not pay for lazy initialisation; it also
        # checks that the network has one output per label.
        warm = self.predict({"text": np.array(["warm-up"], dtype=object)})["probabilities"]
        if warm.shape != (1, len(self.labels)):
            raise ValueError(
                f"the network outputs {warm.shape[-1]} classes but there are {len(self.labels)} labels"
            )

    def _read_labels(self, parameters: Parameters) -> list[str]:
        given = parameters.get("labels")
        if given is not None:
            if not isinstance(given, list) or not given or not all(isinstance(x, str) for x in given):
                raise ValueError(f"parameters.labels must be a non-empty list of strings, got {given!r}")
            return list(given)
        try:
            config = AutoConfig.from_pretrained(self.context.folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"no parameters.labels and no readable config.json: {exc}") from exc
        id2label = {int(i): str(label).lower() for i, label in config.id2label.items()}
        if sorted(id2label) != list(range(len(id2label))):
            raise ValueError(f"config.json id2label is not numbered 0..n-1: {id2label}")
        return [id2label[i] for i in range(len(id2label))]

    def _load_onnx(self, onnx_file: str) -> None:
        path = self.context.folder / onnx_file
        if not path.is_file():
            raise FileNotFoundError(
                f"parameters.onnx_file {onnx_file!r} is not in {self.context.folder.name}/"
            )
        self._session = create_session(path, self.threads)
        graph_inputs = [node.name for node in self._session.get_inputs()]
        produced = set(self._tokenizer.model_input_names)
        missing = [name for name in graph_inputs if name not in produced]
        if missing:
            raise ValueError(f"{onnx_file} takes inputs {missing} that the tokenizer does not produce")
        self._feed_names = graph_inputs
        self._output_name = str(self._session.get_outputs()[0].name)

    def _load_torch(self) -> None:
        folder = self.context.folder
        if not any((folder / name).is_file() for name in TORCH_WEIGHT_FILES):
            raise FileNotFoundError(
                f"the torch backend needs weights in {folder.name}/ ({' or '.join(TORCH_WEIGHT_FILES[::2])})"
                "; set parameters.onnx_file to serve an ONNX graph instead"
            )
        torch.set_num_threads(self.threads)
        self._model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
        self._model.eval()

    def _derived_outputs(self) -> list[TensorSpec]:
        return [
            TensorSpec(name="label", datatype="BYTES", shape=[-1]),
            TensorSpec(name="score", datatype="FP32", shape=[-1]),
            TensorSpec(name="probabilities", datatype="FP32", shape=[-1, len(self.labels)]),
            TensorSpec(name="truncated", datatype="BOOL", shape=[-1]),
        ]

    def _check_declared(self) -> None:
        check_fixed_tensors(self.runtime, self.inputs, TEXT_INPUT, self.outputs, self._derived_outputs())

    def preprocess(self, inputs: Tensors, parameters: Parameters) -> Tensors:
        elements = inputs["text"].reshape(-1)
        if elements.size == 0:
            raise BadRequest("text holds no texts")
        texts = [_decode_text(element, row) for row, element in enumerate(elements)]
        return {"text": np.array(texts, dtype=object)}

    def predict(self, batch: Tensors) -> Tensors:
        texts = [str(text) for text in batch["text"]]
        tensor_type = "np" if self.backend == "onnx" else "pt"
        with self._tokenizer_lock:
            encoded = self._tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_length, return_tensors=tensor_type
            )
        truncated = self._truncated_rows(texts, encoded)
        if not self.truncate and truncated.any():
            # Refused before the network runs. In a merged batch the served version then runs each
            # request alone, so that the row named is the sender's own and only its request fails.
            row = int(truncated.argmax())
            raise TextTooLong(row, self._token_count(texts[row]), self.max_length)
        if self.backend == "onnx":
            feed = {name: encoded[name] for name in self._feed_names}
            probabilities = _softmax(self._session.run([self._output_name], feed)[0])
        else:
            with torch.inference_mode():
                logits = self._model(**encoded).logits
            probabilities = torch.softmax(logits, dim=-1).float().numpy()
        return {"probabilities": probabilities, "truncated": truncated}

    def _truncated_rows(self, texts: Sequence[str], encoded: Any) -> np.ndarray[Any, np.dtype[np.bool_]]:
        encodings = getattr(encoded, "encodings", None)
        if encodings is not None:
            # A fast tokenizer keeps what truncation cut off: no second pass over the texts.
            return np.array([len(encoding.overflowing) > 0 for encoding in encodings], dtype=np.bool_)
        with self._tokenizer_lock:
            lengths = [len(ids) for ids in self._tokenizer(list(texts), truncation=False)["input_ids"]]
        return np.array([length > self.max_length for length in lengths], dtype=np.bool_)

    def _token_count(self, text: str) -> int:
        """Tokens in `text` uncut, special ones included (as `max_length` counts them)."""
        with self._tokenizer_lock:
            return len(self._tokenizer(text, truncation=False, verbose=False)["input_ids"])

    def postprocess(self, outputs: Tensors, parameters: Parameters) -> Tensors:
        probabilities = np.asarray(outputs["probabilities"], dtype=np.float32)
        best = probabilities.argmax(axis=-1)
        everything: dict[str, np.ndarray[Any, Any]] = {
            "label": np.array([self.labels[i].encode() for i in best], dtype=object),
            "score": probabilities[np.arange(len(best)), best],
            "probabilities": probabilities,
            "truncated": np.asarray(outputs["truncated"], dtype=np.bool_),
        }
        return {spec.name: everything[spec.name] for spec in self.outputs}

    def unload(self) -> None:
        self._session = None
        self._model = None
        self._tokenizer = None

    def artifact_version(self) -> str | None:
        """The version of the artifact that answers: an ONNX export's own, or the torch weights' parent."""
        return self.exported_or_parent_version(answers_from_parent=self.backend == "torch")

    def describe(self) -> Parameters:
        return {
            "backend": self.backend,
            "labels": self.labels,
            "max_length": self.max_length,
            "truncate": self.truncate,
            "artifact_version": self.artifact_version(),
        }
