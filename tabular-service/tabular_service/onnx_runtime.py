"""The `onnx` runtime: an ONNX graph run by ONNX Runtime on the CPU, its tensors as OIP tensors.

Inputs and outputs come from the graph itself; model-settings.json may restate them (same names and
datatypes, fixing some variable dims) and may list only some outputs, which then are all that runs.

Runtime-specific `parameters`: `model_file`, the graph's file name in the version folder
(default `model.onnx`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from modelgate_core.errors import BadRequest
from modelgate_core.oip.dtypes import NUMPY_DTYPES
from modelgate_core.oip.types import Datatype, Parameters, TensorSpec
from modelgate_core.onnx_session import create_session
from modelgate_core.repository.runtime import ModelContext, ModelRuntime, Tensors

DEFAULT_MODEL_FILE = "model.onnx"

Array = np.ndarray[Any, Any]

# ONNX element types the Open Inference Protocol and numpy can both carry.
ELEMENT_DATATYPES: dict[str, Datatype] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

# ORT's own error prefix, e.g. "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : ".
_ORT_PREFIX = re.compile(r"^\s*\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")


class OnnxRuntime(ModelRuntime):
    runtime = "onnx"
    # Preprocessing checks the tensors, postprocessing picks outputs: cheaper than a thread hand-off.
    light_steps = True
    platform = "onnxruntime_onnx"

    def __init__(self, context: ModelContext, *, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        super().__init__(context)
        self.threads = threads
        self._session: Any = None
        self._model_file = DEFAULT_MODEL_FILE
        self._output_names: list[str] = []
        # ORT's errors for what it was fed; set by `load` so that onnxruntime is imported only then.
        self._content_errors: tuple[type[Exception], ...] = ()
        self._ort_version = ""
        self._producer = ""

    def load(self) -> None:
        self._model_file = _model_file(self.context.parameters)
        path = self.context.folder / self._model_file
        if not _inside(path, self.context.folder):
            raise ValueError(f"parameters.model_file {self._model_file!r} is not inside the version folder")
        if not path.is_file():
            raise RuntimeError(f"no {self._model_file} in {self.context.folder.name}/")
        try:
            session = create_session(path, self.threads)
        except Exception as exc:
            raise RuntimeError(f"cannot load {self._model_file}: {_ort_message(exc)}") from exc

        graph_inputs = [_graph_spec("input", arg) for arg in session.get_inputs()]
        graph_outputs = [_graph_spec("output", arg) for arg in session.get_outputs()]
        settings = self.context.settings
        self.inputs = _checked("input", settings.inputs, graph_inputs, all_required=True)
        self.outputs = _checked("output", settings.outputs, graph_outputs, all_required=False)
        self._output_names = [spec.name for spec in self.outputs]

        import onnxruntime
        from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

        self._content_errors = (InvalidArgument, Fail, RuntimeException)
        self._ort_version = onnxruntime.__version__
        self._producer = str(session.get_modelmeta().producer_name or "")
        self._session = session

    def unload(self) -> None:
        self._session = None

    def preprocess(self, inputs: Tensors, parameters: Parameters) -> Tensors:
        # Text is decoded here, per request, so one request's bad bytes never fail a merged batch.
        return {
            spec.name: _as_text(spec.name, inputs[spec.name])
            if spec.datatype == "BYTES"
            else inputs[spec.name]
            for spec in self.inputs
        }

    def predict(self, batch: Tensors) -> Tensors:
        if self._session is None:
            raise RuntimeError("the ONNX model is not loaded")
        feeds = {spec.name: batch[spec.name] for spec in self.inputs}
        try:
            results = self._session.run(self._output_names, feeds)
        except self._content_errors as exc:
            raise BadRequest(f"the model refused the input: {_ort_message(exc)}") from exc
        outputs: dict[str, Array] = {}
        for spec, result in zip(self.outputs, results, strict=True):
            value = np.asarray(result)
            outputs[spec.name] = _as_bytes(value) if spec.datatype == "BYTES" else value
        if self.batchable:
            self._check_rows(len(feeds[self.inputs[0].name]), outputs)
        return outputs

    def _check_rows(self, rows: int, outputs: dict[str, Array]) -> None:
        # A merged batch is split back by rows: an output that is not one row per input row would
        # hand requests each other's answers.
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != rows:
                raise RuntimeError(f"output '{name}' has shape {list(value.shape)} for {rows} input rows")

    def describe(self) -> Parameters:
        info: Parameters = {"model_file": self._model_file, "threads": self.threads}
        if self._ort_version:
            info["onnxruntime_version"] = self._ort_version
        if self._producer:
            info["producer"] = self._producer
        return info


def _model_file(parameters: Parameters) -> str:
    value = parameters.get("model_file", DEFAULT_MODEL_FILE)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"parameters.model_file must be a file name, not {value!r}")
    return value


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _graph_spec(kind: str, arg: Any) -> TensorSpec:
    """An ORT `NodeArg` as a TensorSpec, or a load error saying why it cannot be one."""
    onnx_type = str(arg.type)
    if not onnx_type.startswith("tensor("):
        hint = ": export with options={'zipmap': False}" if "map(" in onnx_type else ""
        raise ValueError(f"{kind} '{arg.name}' is {onnx_type}, not a tensor{hint}")
    datatype = ELEMENT_DATATYPES.get(onnx_type)
    if datatype is None:
        raise ValueError(
            f"{kind} '{arg.name}' is {onnx_type}, which the Open Inference Protocol cannot carry "
            f"from numpy (supported: {', '.join(ELEMENT_DATATYPES)})"
        )
    # Symbolic ("batch") and unknown (None) dims are variable.
    shape = [dim if isinstance(dim, int) and dim >= 0 else -1 for dim in (arg.shape or [])]
    return TensorSpec(name=str(arg.name), datatype=datatype, shape=shape)


def _narrows(declared: list[int], graph: list[int]) -> bool:
    """Whether a declared shape fits the graph's, fixing at most some of its -1 dims."""
    return len(declared) == len(graph) and all(
        want == have or (have == -1 and want >= 0) for want, have in zip(declared, graph, strict=True)
    )


def _checked(
    kind: str, declared: list[TensorSpec] | None, graph: list[TensorSpec], *, all_required: bool
) -> list[TensorSpec]:
    """The declared tensors, once they agree with the graph's; the graph's when none are declared."""
    if declared is None:
        return graph
    by_name = {spec.name: spec for spec in graph}
    names = [spec.name for spec in declared]
    problems = []
    if duplicates := sorted({name for name in names if names.count(name) > 1}):
        problems.append(f"declared twice: {', '.join(duplicates)}")
    if unknown := [name for name in names if name not in by_name]:
        problems.append(f"not in the graph: {', '.join(unknown)}")
    if all_required and (missing := [name for name in by_name if name not in names]):
        problems.append(f"not declared: {', '.join(missing)}")
    if problems:
        raise ValueError(
            f"declared {kind}s do not match the graph's ({', '.join(by_name)}): {'; '.join(problems)}"
        )
    for spec in declared:
        have = by_name[spec.name]
        if spec.datatype != have.datatype:
            raise ValueError(f"{kind} '{spec.name}' is {have.datatype} in the graph, not {spec.datatype}")
        if not _narrows(spec.shape, have.shape):
            raise ValueError(
                f"{kind} '{spec.name}' has shape {have.shape} in the graph; {spec.shape} does not fit it"
            )
    return declared


def _as_text(name: str, values: Array) -> Array:
    """A BYTES tensor (object array of bytes) as the str array ORT wants for string tensors."""
    texts: list[str] = []
    for index, value in enumerate(values.ravel().tolist()):
        if isinstance(value, bytes):
            try:
                texts.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                raise BadRequest(f"input '{name}' element {index} is not UTF-8 text") from None
        else:
            texts.append(str(value))
    # Object dtype, not fixed-width "U": one long text must not widen every element of a batch.
    return np.array(texts, dtype=object).reshape(values.shape)


def _as_bytes(values: Array) -> Array:
    encoded = [value if isinstance(value, bytes) else str(value).encode("utf-8") for value in values.ravel()]
    return np.array(encoded, dtype=NUMPY_DTYPES["BYTES"]).reshape(values.shape)


def _ort_message(exc: BaseException, limit: int = 300) -> str:
    """ORT's message without its error-code prefix, on one line and cut short."""
    text = " ".join(_ORT_PREFIX.sub("", str(exc)).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
