"""The sklearn runtime serves real fitted estimators exactly as they predict, and refuses what it cannot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import sklearn
import sklearn.base
from sklearn.datasets import load_iris
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import FixedThresholdClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeRegressor

from modelgate_core.errors import BadRequest
from modelgate_core.oip.types import TensorSpec
from modelgate_core.repository.runtime import ModelContext
from modelgate_core.repository.settings import read_settings
from tabular_service.sklearn_runtime import SklearnRuntime

X, Y = load_iris(return_X_y=True)
NAMES = np.array(["setosa", "versicolor", "virginica"])[Y]


def save_model(root: Path, name: str, model: Any, settings: dict[str, Any] | None = None) -> ModelContext:
    folder = root / name / "1"
    folder.mkdir(parents=True)
    joblib.dump(model, folder / "model.joblib")
    (folder / "model-settings.json").write_text(json.dumps({"runtime": "sklearn", **(settings or {})}))
    return ModelContext(name=name, version="1", folder=folder, settings=read_settings(folder))


def loaded(root: Path, name: str, model: Any, settings: dict[str, Any] | None = None) -> SklearnRuntime:
    runtime = SklearnRuntime(save_model(root, name, model, settings), threads=1)
    runtime.load()
    return runtime


def infer(runtime: SklearnRuntime, rows: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
    name = runtime.inputs[0].name
    return dict(runtime.predict(runtime.preprocess({name: rows}, {})))


def spec(name: str, datatype: str, shape: list[int]) -> TensorSpec:
    return TensorSpec.model_validate({"name": name, "datatype": datatype, "shape": shape})


def test_logistic_regression_on_iris(tmp_path: Path) -> None:
    clf = LogisticRegression(max_iter=1000).fit(X, Y)
    runtime = loaded(tmp_path, "iris", clf)

    assert runtime.inputs == [spec("input", "FP64", [-1, 4])]
    assert runtime.outputs == [spec("predict", "INT64", [-1]), spec("predict_proba", "FP64", [-1, 3])]
    assert runtime.batchable
    out = infer(runtime, X)
    assert set(out) == {"predict", "predict_proba"}
    assert out["predict"].dtype == np.int64
    np.testing.assert_array_equal(out["predict"], clf.predict(X))
    np.testing.assert_allclose(out["predict_proba"], clf.predict_proba(X), rtol=1e-12, atol=0)
    assert runtime.describe() == {
        "sklearn_version": sklearn.__version__,
        "threads": 1,
        "estimator": "LogisticRegression",
        "classes": [0, 1, 2],
    }


def test_gradient_boosting_pipeline_and_merged_batches(tmp_path: Path) -> None:
    pipeline = make_pipeline(StandardScaler(), GradientBoostingClassifier(n_estimators=15, random_state=0))
    pipeline.fit(X, Y)
    runtime = loaded(tmp_path, "gb", pipeline)

    assert runtime.inputs == [spec("input", "FP64", [-1, 4])]
    assert runtime.describe()["estimator"] == "Pipeline(StandardScaler, GradientBoostingClassifier)"
    # Two requests' rows merged along axis 0, as the batcher does, come back one row per input row.
    first, second = runtime.preprocess({"input": X[:7]}, {}), runtime.preprocess({"input": X[7:]}, {})
    out = runtime.predict({"input": np.concatenate([first["input"], second["input"]])})
    np.testing.assert_array_equal(out["predict"], pipeline.predict(X))
    np.testing.assert_allclose(out["predict_proba"], pipeline.predict_proba(X), rtol=1e-12, atol=0)


def test_regressor_outputs_float_values_only(tmp_path: Path) -> None:
    features, target = X[:, :3], X[:, 3]
    reg = Ridge().fit(features, target)
    runtime = loaded(tmp_path, "ridge", reg)

    assert runtime.inputs == [spec("input", "FP64", [-1, 3])]
    assert runtime.outputs == [spec("predict", "FP64", [-1])]
    out = infer(runtime, features)
    assert list(out) == ["predict"]
    np.testing.assert_array_equal(out["predict"], reg.predict(features))
    assert "classes" not in runtime.describe()


def test_multi_output_regressor_has_one_column_per_target(tmp_path: Path) -> None:
    tree = DecisionTreeRegressor(max_depth=3, random_state=0).fit(X[:, :2], X[:, 2:])
    runtime = loaded(tmp_path, "tree", tree)

    assert runtime.outputs == [spec("predict", "FP64", [-1, 2])]
    np.testing.assert_array_equal(infer(runtime, X[:, :2])["predict"], tree.predict(X[:, :2]))


def test_string_labels_come_back_as_bytes(tmp_path: Path) -> None:
    clf = LogisticRegression(max_iter=1000).fit(X, NAMES)
    runtime = loaded(tmp_path, "names", clf)

    assert runtime.outputs == [spec("predict", "BYTES", [-1]), spec("predict_proba", "FP64", [-1, 3])]
    out = infer(runtime, X)
    assert out["predict"].dtype == object
    assert out["predict"].tolist() == [label.encode() for label in clf.predict(X)]
    assert runtime.describe()["classes"] == ["setosa", "versicolor", "virginica"]


def test_threshold_classifier_labels_come_from_its_own_predict(tmp_path: Path) -> None:
    # A moved threshold decides other than argmax(predict_proba): predict must not be derived from it.
    is_versicolor = Y == 1
    clf = FixedThresholdClassifier(LogisticRegression(max_iter=1000), threshold=0.3).fit(X, is_versicolor)
    assert (clf.classes_[clf.predict_proba(X).argmax(axis=1)] != clf.predict(X)).any()
    runtime = loaded(tmp_path, "threshold", clf)

    assert runtime.outputs[0] == spec("predict", "BOOL", [-1])
    np.testing.assert_array_equal(infer(runtime, X)["predict"], clf.predict(X))


def test_pickle_from_another_sklearn_version_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clf = LogisticRegression(max_iter=1000).fit(X, Y)
    # Every estimator records `sklearn.base.__version__` in its pickled state: pretend it was older.
    with monkeypatch.context() as patch:
        patch.setattr(sklearn.base, "__version__", "1.5.2")
        context = save_model(tmp_path, "old", clf)
    runtime = SklearnRuntime(context)

    current = sklearn.__version__
    expected = (
        f"model.joblib was saved with scikit-learn 1.5.2; "
        f"this service runs {current}: re-save it with {current}"
    )
    with pytest.raises(RuntimeError) as caught:
        runtime.load()
    assert str(caught.value) == expected


def test_missing_file_is_a_load_error(tmp_path: Path) -> None:
    context = save_model(tmp_path, "gone", LogisticRegression(max_iter=1000).fit(X, Y))
    (context.folder / "model.joblib").unlink()
    with pytest.raises(RuntimeError, match=r"^no model\.joblib in 1/$"):
        SklearnRuntime(context).load()


def test_corrupt_file_is_a_load_error(tmp_path: Path) -> None:
    context = save_model(tmp_path, "corrupt", LogisticRegression(max_iter=1000).fit(X, Y))
    (context.folder / "model.joblib").write_bytes(b"\x80\x05 definitely not a pickle")
    with pytest.raises(RuntimeError, match=r"^cannot read model\.joblib: "):
        SklearnRuntime(context).load()


def test_object_without_predict_is_a_load_error(tmp_path: Path) -> None:
    context = save_model(tmp_path, "dict", {"coef": [1.0, 2.0]})
    with pytest.raises(
        RuntimeError, match=r"^model\.joblib holds a dict, not an estimator with predict\(\)$"
    ):
        SklearnRuntime(context).load()


def test_unfitted_estimator_is_a_load_error(tmp_path: Path) -> None:
    context = save_model(tmp_path, "unfitted", make_pipeline(StandardScaler(), LogisticRegression()))
    with pytest.raises(RuntimeError, match=r"unfitted Pipeline\(StandardScaler, LogisticRegression\)$"):
        SklearnRuntime(context).load()


def test_declared_fp32_input_is_cast_to_float64(tmp_path: Path) -> None:
    clf = LogisticRegression(max_iter=1000).fit(X, Y)
    runtime = loaded(
        tmp_path,
        "fp32",
        clf,
        {"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]},
    )
    assert runtime.inputs == [spec("features", "FP32", [-1, 4])]
    rows = X.astype(np.float32)
    out = infer(runtime, rows)
    np.testing.assert_array_equal(out["predict"], clf.predict(rows.astype(np.float64)))


@pytest.mark.parametrize(
    ("inputs", "reason"),
    [
        (
            [{"name": "input", "datatype": "FP64", "shape": [-1, 5]}],
            "input 'input' declares 5 features; the model was fitted on 4",
        ),
        (
            [{"name": "input", "datatype": "FP64", "shape": [8, 4]}],
            r"input 'input' must have shape \[-1, n_features\], not \[8, 4\]",
        ),
        (
            [{"name": "input", "datatype": "BYTES", "shape": [-1, 4]}],
            "input 'input' must be numeric, not BYTES",
        ),
        (
            [
                {"name": "a", "datatype": "FP64", "shape": [-1, 2]},
                {"name": "b", "datatype": "FP64", "shape": [-1, 2]},
            ],
            "exactly one input tensor; model-settings.json declares 2",
        ),
    ],
)
def test_unusable_declared_inputs_fail_the_load(
    tmp_path: Path, inputs: list[dict[str, Any]], reason: str
) -> None:
    context = save_model(tmp_path, "bad", LogisticRegression(max_iter=1000).fit(X, Y), {"inputs": inputs})
    with pytest.raises(ValueError, match=reason):
        SklearnRuntime(context).load()


def test_declared_outputs_select_what_is_computed(tmp_path: Path) -> None:
    clf = LogisticRegression(max_iter=1000).fit(X, Y)
    runtime = loaded(
        tmp_path,
        "proba",
        clf,
        {"outputs": [{"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]}]},
    )
    out = infer(runtime, X)
    assert list(out) == ["predict_proba"]
    np.testing.assert_allclose(out["predict_proba"], clf.predict_proba(X), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("outputs", "reason"),
    [
        (
            [{"name": "scores", "datatype": "FP64", "shape": [-1]}],
            r"^output 'scores' is not one this model has \(predict, predict_proba\)$",
        ),
        (
            [{"name": "predict", "datatype": "FP64", "shape": [-1]}],
            "^output 'predict' is INT64, not FP64$",
        ),
        (
            [{"name": "predict_proba", "datatype": "FP64", "shape": [-1, 4]}],
            r"output 'predict_proba' has shape \[-1, 3\]; \[-1, 4\] does not fit it",
        ),
    ],
)
def test_unusable_declared_outputs_fail_the_load(
    tmp_path: Path, outputs: list[dict[str, Any]], reason: str
) -> None:
    context = save_model(tmp_path, "bad", LogisticRegression(max_iter=1000).fit(X, Y), {"outputs": outputs})
    with pytest.raises(ValueError, match=reason):
        SklearnRuntime(context).load()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.nan, "input 'input' has nan at row 1, column 2; the model takes only finite numbers"),
        (np.inf, "input 'input' has inf at row 1, column 2; the model takes only finite numbers"),
    ],
)
def test_non_finite_values_are_bad_requests(tmp_path: Path, value: float, message: str) -> None:
    runtime = loaded(tmp_path, "iris", LogisticRegression(max_iter=1000).fit(X, Y))
    rows = X[:3].copy()
    rows[1, 2] = value
    with pytest.raises(BadRequest) as caught:
        runtime.preprocess({"input": rows}, {})
    assert caught.value.message == message


def test_wrong_column_count_is_a_bad_request(tmp_path: Path) -> None:
    runtime = loaded(
        tmp_path,
        "iris",
        LogisticRegression(max_iter=1000).fit(X, Y),
        {"inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, -1]}]},
    )
    with pytest.raises(BadRequest) as caught:
        runtime.preprocess({"input": X[:2, :3]}, {})
    assert caught.value.message == "input 'input' has 3 columns; the model takes 4"


def test_estimator_errors_on_content_become_bad_requests(tmp_path: Path) -> None:
    clf = LogisticRegression(max_iter=1000).fit(X, Y)
    del clf.n_features_in_  # now nothing tells the runtime the column count in advance
    runtime = loaded(tmp_path, "unknown", clf)
    assert runtime.inputs == [spec("input", "FP64", [-1, -1])]

    rows = runtime.preprocess({"input": X[:2, :3]}, {})
    with pytest.raises(BadRequest, match=r"^the model refused the input: ") as caught:
        runtime.predict(rows)
    assert isinstance(caught.value.__cause__, ValueError)


def test_nan_reaches_models_that_handle_it(tmp_path: Path) -> None:
    rows = X.copy()
    rows[::5, 0] = np.nan
    hgb = HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(rows, Y)
    imputed = make_pipeline(SimpleImputer(), LogisticRegression(max_iter=1000)).fit(rows, Y)

    # HistGradientBoosting says so itself; a Pipeline has no such tag and needs `allow_nan`.
    hgb_runtime = loaded(tmp_path, "hgb", hgb)
    imputed_runtime = loaded(tmp_path, "imputed", imputed, {"parameters": {"allow_nan": True}})
    np.testing.assert_array_equal(infer(hgb_runtime, rows)["predict"], hgb.predict(rows))
    np.testing.assert_array_equal(infer(imputed_runtime, rows)["predict"], imputed.predict(rows))
    with pytest.raises(BadRequest, match=r"^input 'input' has inf at row 0, column 1; "):
        imputed_runtime.preprocess({"input": np.array([[1.0, np.inf, 1.0, 1.0]])}, {})

    strict_runtime = loaded(tmp_path, "strict", imputed)
    with pytest.raises(BadRequest, match=r"has nan at row 0, column 0; the model takes only finite numbers$"):
        strict_runtime.preprocess({"input": rows}, {})


def test_labels_parameter_is_checked_and_described(tmp_path: Path) -> None:
    clf = LogisticRegression(max_iter=1000).fit(X, Y)
    labels = ["setosa", "versicolor", "virginica"]
    runtime = loaded(tmp_path, "iris", clf, {"parameters": {"labels": labels}})
    assert runtime.describe()["labels"] == labels

    context = save_model(tmp_path, "short", clf, {"parameters": {"labels": labels[:2]}})
    with pytest.raises(ValueError, match=r"^parameters.labels names 2 classes; the model has 3 classes$"):
        SklearnRuntime(context).load()


def test_passthrough_first_step_still_gives_the_feature_count(tmp_path: Path) -> None:
    pipeline = Pipeline([("keep", "passthrough"), ("lr", LogisticRegression(max_iter=1000))]).fit(X, Y)
    runtime = loaded(tmp_path, "passthrough", pipeline)
    assert runtime.inputs == [spec("input", "FP64", [-1, 4])]
    np.testing.assert_array_equal(infer(runtime, X)["predict"], pipeline.predict(X))
