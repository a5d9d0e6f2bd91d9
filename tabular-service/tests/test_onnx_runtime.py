"""The onnx runtime serves real exported graphs with the graph's own tensor specs, refusing the rest."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from modelgate_core.errors import BadRequest
from modelgate_core.oip.dtypes import NUMPY_DTYPES
from modelgate_core.oip.types import TensorSpec
from modelgate_core.repository.runtime import ModelContext
from modelgate_core.repository.settings import read_settings
from tabular_service.onnx_runtime import OnnxRuntime

X, Y = load_iris(return_X_y=True)
ROWS = X.astype(np.float32)


@pytest.fixture(scope="module")
def clf() -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(X, Y)


def exported(clf: LogisticRegression, *, zipmap: bool) -> bytes:
    options = None if zipmap else {id(clf): {"zipmap": False}}
    graph = convert_sklearn(clf, initial_types=[("input", FloatTensorType([None, 4]))], options=options)
    return bytes(graph.SerializeToString())


def save_graph(
    root: Path, name: str, graph: bytes, settings: dict[str, Any] | None = None, file: str = "model.onnx"
) -> ModelContext:
    folder = root / name / "1"
    folder.mkdir(parents=True)
    (folder / file).write_bytes(graph)
    (folder / "model-settings.json").write_text(json.dumps({"runtime": "onnx", **(settings or {})}))
    return ModelContext(name=name, version="1", folder=folder, settings=read_settings(folder))


def loaded(root: Path, name: str, graph: bytes, settings: dict[str, Any] | None = None) -> OnnxRuntime:
    runtime = OnnxRuntime(save_graph(root, name, graph, settings), threads=1)
    runtime.load()
    return runtime


def spec(name: str, datatype: str, shape: list[int]) -> TensorSpec:
    return TensorSpec.model_validate({"name": name, "datatype": datatype, "shape": shape})


def identity_graph(types: Mapping[str, int], dims: list[int | str | None]) -> bytes:
    """One Identity node per element type: input `in_<name>` -> output `out_<name>`."""
    nodes = [helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]) for name in types]
    inputs = [helper.make_tensor_value_info(f"in_{name}", kind, dims) for name, kind in types.items()]
    outputs = [helper.make_tensor_value_info(f"out_{name}", kind, dims) for name, kind in types.items()]
    graph = helper.make_graph(nodes, "identity", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def test_classifier_export_serves_the_estimators_answers(tmp_path: Path, clf: LogisticRegression) -> None:
    runtime = loaded(tmp_path, "iris", exported(clf, zipmap=False))

    assert runtime.inputs == [spec("input", "FP32", [-1, 4])]
    assert runtime.outputs == [spec("label", "INT64", [-1]), spec("probabilities", "FP32", [-1, 3])]
    assert runtime.batchable
    # Two requests merged along axis 0 come back one row per input row.
    first, second = runtime.preprocess({"input": ROWS[:5]}, {}), runtime.preprocess({"input": ROWS[5:]}, {})
    out = runtime.predict({"input": np.concatenate([first["input"], second["input"]])})
    assert list(out) == ["label", "probabilities"]
    np.testing.assert_array_equal(out["label"], clf.predict(ROWS))
    np.testing.assert_allclose(out["probabilities"], clf.predict_proba(ROWS), atol=1e-5, rtol=0)
    described = runtime.describe()
    assert described["model_file"] == "model.onnx"
    assert described["producer"] == "skl2onnx"


def test_zipmap_export_fails_to_load(tmp_path: Path, clf: LogisticRegression) -> None:
    context = save_graph(tmp_path, "zipmap", exported(clf, zipmap=True))
    with pytest.raises(ValueError) as caught:
        OnnxRuntime(context).load()
    assert str(caught.value) == (
        "output 'output_probability' is seq(map(int64,tensor(float))), not a tensor: "
        "export with options={'zipmap': False}"
    )


def test_corrupt_graph_fails_to_load(tmp_path: Path) -> None:
    context = save_graph(tmp_path, "corrupt", b"this is not a protobuf graph")
    with pytest.raises(RuntimeError, match=r"^cannot load model\.onnx: .*[Pp]rotobuf parsing failed"):
        OnnxRuntime(context).load()


def test_missing_graph_fails_to_load(tmp_path: Path, clf: LogisticRegression) -> None:
    context = save_graph(tmp_path, "other", exported(clf, zipmap=False), file="graph.onnx")
    with pytest.raises(RuntimeError, match=r"^no model\.onnx in 1/$"):
        OnnxRuntime(context).load()


def test_model_file_parameter_names_the_graph(tmp_path: Path, clf: LogisticRegression) -> None:
    settings = {"parameters": {"model_file": "graph.onnx"}}
    context = save_graph(tmp_path, "named", exported(clf, zipmap=False), settings, file="graph.onnx")
    runtime = OnnxRuntime(context)
    runtime.load()
    assert runtime.describe()["model_file"] == "graph.onnx"
    np.testing.assert_array_equal(runtime.predict({"input": ROWS})["label"], clf.predict(ROWS))


def test_model_file_outside_the_folder_is_refused(tmp_path: Path, clf: LogisticRegression) -> None:
    settings = {"parameters": {"model_file": "../../elsewhere.onnx"}}
    context = save_graph(tmp_path, "escape", exported(clf, zipmap=False), settings)
    (tmp_path / "elsewhere.onnx").write_bytes(exported(clf, zipmap=False))
    with pytest.raises(ValueError, match=r"is not inside the version folder$"):
        OnnxRuntime(context).load()


def test_every_element_type_maps_to_its_datatype(tmp_path: Path) -> None:
    types = {
        "bool": TensorProto.BOOL,
        "u8": TensorProto.UINT8,
        "u16": TensorProto.UINT16,
        "u32": TensorProto.UINT32,
        "u64": TensorProto.UINT64,
        "i8": TensorProto.INT8,
        "i16": TensorProto.INT16,
        "i32": TensorProto.INT32,
        "i64": TensorProto.INT64,
        "f16": TensorProto.FLOAT16,
        "f32": TensorProto.FLOAT,
        "f64": TensorProto.DOUBLE,
        "text": TensorProto.STRING,
    }
    runtime = loaded(tmp_path, "types", identity_graph(types, ["batch", None, 2]))

    expected = {
        "bool": "BOOL",
        "u8": "UINT8",
        "u16": "UINT16",
        "u32": "UINT32",
        "u64": "UINT64",
        "i8": "INT8",
        "i16": "INT16",
        "i32": "INT32",
        "i64": "INT64",
        "f16": "FP16",
        "f32": "FP32",
        "f64": "FP64",
        "text": "BYTES",
    }
    assert runtime.inputs == [spec(f"in_{name}", kind, [-1, -1, 2]) for name, kind in expected.items()]
    assert runtime.outputs == [spec(f"out_{name}", kind, [-1, -1, 2]) for name, kind in expected.items()]

    # Arrays of each datatype's numpy dtype (as the codec decodes them) feed and come back unchanged.
    feeds = {
        f"in_{name}": np.array([[[b"a", b"b"]], [[b"c", b"d"]]], dtype=object)
        if kind == "BYTES"
        else np.arange(4).reshape(2, 1, 2).astype(NUMPY_DTYPES[kind])
        for name, kind in expected.items()
    }
    out = runtime.predict(runtime.preprocess(feeds, {}))
    for name, kind in expected.items():
        assert out[f"out_{name}"].dtype == NUMPY_DTYPES[kind]
        np.testing.assert_array_equal(out[f"out_{name}"], feeds[f"in_{name}"])


def test_unsupported_element_type_fails_to_load(tmp_path: Path) -> None:
    context = save_graph(tmp_path, "bf16", identity_graph({"x": TensorProto.BFLOAT16}, [-1, 2]))
    with pytest.raises(ValueError, match=r"^input 'in_x' is tensor\(bfloat16\), which the Open Inference"):
        OnnxRuntime(context).load()


def test_text_tensors_go_in_as_str_and_come_back_as_bytes(tmp_path: Path) -> None:
    runtime = loaded(tmp_path, "text", identity_graph({"text": TensorProto.STRING}, [-1]))
    texts = np.array([b"plain", "café".encode()], dtype=object)

    fed = runtime.preprocess({"in_text": texts}, {})
    assert fed["in_text"].tolist() == ["plain", "café"]
    out = runtime.predict(fed)
    assert out["out_text"].dtype == object
    assert out["out_text"].tolist() == [b"plain", "café".encode()]

    with pytest.raises(BadRequest, match=r"^input 'in_text' element 1 is not UTF-8 text$"):
        runtime.preprocess({"in_text": np.array([b"ok", b"\xff\xfe"], dtype=object)}, {})


def test_ort_errors_on_content_become_bad_requests(tmp_path: Path, clf: LogisticRegression) -> None:
    runtime = loaded(tmp_path, "iris", exported(clf, zipmap=False))
    with pytest.raises(BadRequest) as caught:
        runtime.predict({"input": np.zeros((2, 5), dtype=np.float32)})
    assert caught.value.message == (
        "the model refused the input: Got invalid dimensions for input: input for the following "
        "indices index: 1 Got: 5 Expected: 4 Please fix either the inputs/outputs or the model."
    )


def test_declared_tensors_may_narrow_and_select(tmp_path: Path, clf: LogisticRegression) -> None:
    settings = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
    }
    runtime = loaded(tmp_path, "narrow", exported(clf, zipmap=False), settings)
    assert runtime.outputs == [spec("probabilities", "FP32", [-1, 3])]
    out = runtime.predict({"input": ROWS})
    assert list(out) == ["probabilities"]
    np.testing.assert_allclose(out["probabilities"], clf.predict_proba(ROWS), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        (
            {"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]},
            r"^declared inputs do not match the graph's \(input\): not in the graph: features; "
            r"not declared: input$",
        ),
        (
            {"outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}]},
            r"^declared outputs do not match the graph's \(label, probabilities\): not in the graph: scores$",
        ),
        (
            {"inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]},
            "^input 'input' is FP32 in the graph, not FP64$",
        ),
        (
            {"outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]}]},
            r"^output 'probabilities' has shape \[-1, 3\] in the graph; \[-1, -1\] does not fit it$",
        ),
    ],
)
def test_declared_tensors_that_disagree_with_the_graph_fail_to_load(
    tmp_path: Path, clf: LogisticRegression, settings: dict[str, Any], reason: str
) -> None:
    context = save_graph(tmp_path, "bad", exported(clf, zipmap=False), settings)
    with pytest.raises(ValueError, match=reason):
        OnnxRuntime(context).load()
