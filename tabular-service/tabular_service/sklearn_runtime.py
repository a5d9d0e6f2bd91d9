"""The `sklearn` runtime: a fitted scikit-learn estimator or pipeline, saved with joblib, as an OIP model.

One 2-D numeric input (rows x features, cast to float64), and up to two outputs: `predict` (one label
or value per row) and, for classifiers that have it, `predict_proba` (one probability per class).

Unpickling runs arbitrary code, so a model folder must come from a trusted build (the repository
checks its manifest); it is never something a client uploads.

Runtime-specific `parameters` in model-settings.json:
- `allow_nan` (bool): let NaN through to the model (an imputer or HistGradientBoosting handles it).
  Defaults to the estimator's own `allow_nan` tag, which a Pipeline never sets.
- `labels` (list of str): display names of the classes, in `classes_` order, shown in metadata.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from sklearn.base import is_clusterer, is_outlier_detector
from sklearn.exceptions import InconsistentVersionWarning, NotFittedError
from sklearn.model_selection import FixedThresholdClassifier, TunedThresholdClassifierCV
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC, NuSVC
from sklearn.utils import get_tags
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from modelgate_core.errors import BadRequest
from modelgate_core.oip.dtypes import NUMPY_DTYPES
from modelgate_core.oip.types import Datatype, Parameters, TensorSpec
from modelgate_core.repository.runtime import ModelContext, ModelRuntime, Tensors

MODEL_FILE = "model.joblib"
PREDICT = "predict"
PREDICT_PROBA = "predict_proba"

Array = np.ndarray[Any, Any]

# Classifiers whose `predict` is not the argmax of `predict_proba`: Platt-scaled SVM probabilities can
# disagree with the SVM's decision, and threshold classifiers move the decision away from 0.5.
_PREDICT_IS_NOT_ARGMAX = (SVC, NuSVC, FixedThresholdClassifier, TunedThresholdClassifierCV)


class SklearnRuntime(ModelRuntime):
    runtime = "sklearn"
    # Preprocessing checks the tensors, postprocessing picks outputs: cheaper than a thread hand-off.
    light_steps = True
    platform = "sklearn"

    def __init__(self, context: ModelContext, *, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        super().__init__(context)
        self.threads = threads
        self._estimator: Any = None
        self._classes: Array | None = None
        # The `predict` output's value per class, so labels can be looked up from argmax(proba).
        self._class_values: Array | None = None
        self._labels_from_proba = False
        self._n_features: int | None = None
        self._allow_nan = False
        self._labels: list[str] | None = None

    # -- load ---------------------------------------------------------------------------------------

    def load(self) -> None:
        estimator = _read_estimator(self.context.folder / MODEL_FILE)
        classes = _classes_of(estimator)
        has_proba = classes is not None and callable(getattr(estimator, PREDICT_PROBA, None))
        n_outputs = _n_outputs(estimator)
        derived_outputs = [
            TensorSpec(
                name=PREDICT,
                datatype=_predict_datatype(estimator, classes),
                shape=[-1] if n_outputs == 1 else [-1, n_outputs],
            )
        ]
        if has_proba:
            assert classes is not None
            derived_outputs.append(TensorSpec(name=PREDICT_PROBA, datatype="FP64", shape=[-1, len(classes)]))

        self.inputs, self._n_features = _checked_inputs(self.context, _n_features_of(estimator))
        self.outputs = _checked_outputs(self.context, derived_outputs)
        parameters = self.context.parameters
        self._allow_nan = _allow_nan(parameters, estimator)
        self._labels = _labels(parameters, classes)

        self._estimator = estimator
        self._classes = classes
        if classes is not None:
            self._class_values = _as_datatype(classes, derived_outputs[0].datatype)
        self._labels_from_proba = has_proba and _predict_is_argmax(estimator)
        # After unpickling, which loads the BLAS/OpenMP libraries the limit applies to. The limit is
        # process-wide (the libraries have no other kind), so it is set once here: limiting around
        # every call cost more CPU than the iris model's own prediction (py-spy, bench/oip.py).
        threadpool_limits(limits=self.threads)

    def unload(self) -> None:
        self._estimator = None

    # -- per request --------------------------------------------------------------------------------

    def preprocess(self, inputs: Tensors, parameters: Parameters) -> Tensors:
        # Checked here, per request, so that one request's bad rows never fail a merged batch.
        spec = self.inputs[0]
        rows = np.asarray(inputs[spec.name], dtype=np.float64)
        if rows.ndim != 2:
            raise BadRequest(f"input '{spec.name}' must be 2-D (rows x features), not {rows.ndim}-D")
        if self._n_features is not None and rows.shape[1] != self._n_features:
            raise BadRequest(
                f"input '{spec.name}' has {rows.shape[1]} columns; the model takes {self._n_features}"
            )
        bad = np.isinf(rows) if self._allow_nan else ~np.isfinite(rows)
        if bad.any():
            row, column = (int(i) for i in np.argwhere(bad)[0])
            accepted = "numbers or NaN" if self._allow_nan else "finite numbers"
            raise BadRequest(
                f"input '{spec.name}' has {rows[row, column]} at row {row}, column {column}; "
                f"the model takes only {accepted}"
            )
        return {spec.name: rows}

    def predict(self, batch: Tensors) -> Tensors:
        if self._estimator is None:
            raise RuntimeError("the sklearn model is not loaded")
        rows = np.asarray(batch[self.inputs[0].name], dtype=np.float64)
        wanted = {spec.name for spec in self.outputs}
        try:
            results = self._run(rows, wanted)
        except ValueError as exc:
            # Content the estimator refuses (e.g. a column count it could not know in advance).
            raise BadRequest(f"the model refused the input: {_short(exc)}") from exc
        return {spec.name: results[spec.name] for spec in self.outputs}

    def _run(self, rows: Array, wanted: set[str]) -> dict[str, Array]:
        results: dict[str, Array] = {}
        if PREDICT_PROBA in wanted or (PREDICT in wanted and self._labels_from_proba):
            results[PREDICT_PROBA] = np.asarray(self._estimator.predict_proba(rows), dtype=np.float64)
        if PREDICT in wanted:
            if self._labels_from_proba and self._class_values is not None:
                # Saves running the model a second time for `predict`.
                results[PREDICT] = self._class_values[np.argmax(results[PREDICT_PROBA], axis=1)]
            else:
                results[PREDICT] = self._predictions(self._estimator.predict(rows))
        return results

    def _predictions(self, raw: Any) -> Array:
        spec = next(spec for spec in self.outputs if spec.name == PREDICT)
        values = np.asarray(raw)
        if len(spec.shape) == 1 and values.ndim == 2 and values.shape[1] == 1:
            values = values.ravel()
        return _as_datatype(values, spec.datatype)

    def describe(self) -> Parameters:
        info: Parameters = {"sklearn_version": sklearn.__version__, "threads": self.threads}
        if self._estimator is not None:
            info["estimator"] = _estimator_name(self._estimator)
        if self._classes is not None:
            info["classes"] = [_jsonable(value) for value in self._classes.tolist()]
        if self._labels is not None:
            info["labels"] = self._labels
        return info


# -- reading the file -------------------------------------------------------------------------------


def _read_estimator(path: Path) -> Any:
    if not path.is_file():
        raise RuntimeError(f"no {MODEL_FILE} in {path.parent.name}/")
    # A pickle from another scikit-learn may unpickle and then predict wrongly: refuse it. (The
    # warnings filter is process-wide while this runs; it only turns this one category into errors.)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        try:
            estimator = joblib.load(path)
        except InconsistentVersionWarning as exc:
            current = exc.current_sklearn_version
            raise RuntimeError(
                f"{MODEL_FILE} was saved with scikit-learn {exc.original_sklearn_version}; "
                f"this service runs {current}: re-save it with {current}"
            ) from exc
        except Exception as exc:
            raise RuntimeError(f"cannot read {MODEL_FILE}: {type(exc).__name__}: {_short(exc)}") from exc
    if not callable(getattr(estimator, PREDICT, None)):
        raise RuntimeError(
            f"{MODEL_FILE} holds a {type(estimator).__name__}, not an estimator with predict()"
        )
    try:
        check_is_fitted(estimator)
    except NotFittedError as exc:
        raise RuntimeError(f"{MODEL_FILE} holds an unfitted {_estimator_name(estimator)}") from exc
    except TypeError:
        pass  # not a scikit-learn estimator (no fit), but it can predict: take it as it is
    return estimator


def _final_step(estimator: Any) -> Any:
    while isinstance(estimator, Pipeline):
        estimator = estimator.steps[-1][1]
    return estimator


def _estimator_name(estimator: Any) -> str:
    if isinstance(estimator, Pipeline):
        steps = ", ".join(_estimator_name(step) for _, step in estimator.steps)
        return f"Pipeline({steps})"
    return estimator if isinstance(estimator, str) else type(estimator).__name__


# -- what the model takes and gives -----------------------------------------------------------------


def _classes_of(estimator: Any) -> Array | None:
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        return None
    if isinstance(classes, list):
        raise RuntimeError("multi-output classifiers are not supported by the sklearn runtime")
    return np.asarray(classes)


def _predict_datatype(estimator: Any, classes: Array | None) -> Datatype:
    if classes is None:
        # Clusters and inlier/outlier marks are integers; everything else is a regression value.
        return "INT64" if is_clusterer(estimator) or is_outlier_detector(estimator) else "FP64"
    kind = classes.dtype.kind
    if kind in "iu":
        return "INT64"
    if kind == "b":
        return "BOOL"
    if kind == "f":
        return "FP64"
    if kind in "US" or (kind == "O" and all(isinstance(c, str | bytes) for c in classes)):
        return "BYTES"
    raise RuntimeError(f"class labels of dtype {classes.dtype} ({classes[:3].tolist()}) are not supported")


def _n_outputs(estimator: Any) -> int:
    count = getattr(_final_step(estimator), "n_outputs_", 1)
    return count if isinstance(count, int) and count > 1 else 1


def _n_features_of(estimator: Any) -> int | None:
    if isinstance(estimator, Pipeline):
        # "passthrough" steps keep the columns as they are: the first real step knows their number.
        real_steps = [step for _, step in estimator.steps if step is not None and step != "passthrough"]
        return _n_features_of(real_steps[0]) if real_steps else None
    count = getattr(estimator, "n_features_in_", None)
    return int(count) if isinstance(count, int | np.integer) else None


def _predict_is_argmax(estimator: Any) -> bool:
    final = _final_step(estimator)
    final = getattr(final, "best_estimator_", final)  # a fitted search delegates to its best model
    # Only scikit-learn's own classifiers are known to decide by the highest probability.
    return type(final).__module__.startswith("sklearn.") and not isinstance(final, _PREDICT_IS_NOT_ARGMAX)


def _as_datatype(values: Array, datatype: str) -> Array:
    if datatype == "BYTES":
        encoded = [_to_bytes(value) for value in values.ravel().tolist()]
        return np.array(encoded, dtype=object).reshape(values.shape)
    return values.astype(NUMPY_DTYPES[datatype], copy=False)


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def _jsonable(value: Any) -> Any:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _narrows(declared: list[int], derived: list[int]) -> bool:
    """Whether a declared shape fits the derived one, fixing at most some of its -1 dims."""
    return len(declared) == len(derived) and all(
        want == have or (have == -1 and want > 0) for want, have in zip(declared, derived, strict=True)
    )


def _checked_inputs(context: ModelContext, n_features: int | None) -> tuple[list[TensorSpec], int | None]:
    declared = context.settings.inputs
    if declared is None:
        return [TensorSpec(name="input", datatype="FP64", shape=[-1, n_features or -1])], n_features
    if len(declared) != 1:
        raise ValueError(
            "the sklearn runtime takes exactly one input tensor; "
            f"model-settings.json declares {len(declared)}"
        )
    spec = declared[0]
    if spec.datatype == "BYTES":
        raise ValueError(f"input '{spec.name}' must be numeric, not BYTES")
    if len(spec.shape) != 2 or spec.shape[0] != -1 or not _narrows(spec.shape, [-1, -1]):
        raise ValueError(f"input '{spec.name}' must have shape [-1, n_features], not {spec.shape}")
    declared_features = spec.shape[1] if spec.shape[1] != -1 else None
    if n_features is not None and declared_features not in (None, n_features):
        raise ValueError(
            f"input '{spec.name}' declares {declared_features} features; the model was fitted on {n_features}"
        )
    return declared, n_features or declared_features


def _checked_outputs(context: ModelContext, derived: list[TensorSpec]) -> list[TensorSpec]:
    declared = context.settings.outputs
    if declared is None:
        return derived
    by_name = {spec.name: spec for spec in derived}
    names = [spec.name for spec in declared]
    if len(set(names)) != len(names):
        raise ValueError(f"model-settings.json declares an output twice: {names}")
    for spec in declared:
        have = by_name.get(spec.name)
        if have is None:
            raise ValueError(f"output '{spec.name}' is not one this model has ({', '.join(by_name)})")
        if spec.datatype != have.datatype:
            raise ValueError(f"output '{spec.name}' is {have.datatype}, not {spec.datatype}")
        if not _narrows(spec.shape, have.shape):
            raise ValueError(f"output '{spec.name}' has shape {have.shape}; {spec.shape} does not fit it")
    return declared


def _allow_nan(parameters: Parameters, estimator: Any) -> bool:
    value = parameters.get("allow_nan")
    if value is None:
        try:
            return bool(get_tags(estimator).input_tags.allow_nan)
        except (AttributeError, TypeError, ValueError):
            return False  # not a scikit-learn estimator: it has no tags to ask
    if not isinstance(value, bool):
        raise ValueError(f"parameters.allow_nan must be true or false, not {value!r}")
    return value


def _labels(parameters: Parameters, classes: Array | None) -> list[str] | None:
    labels = parameters.get("labels")
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ValueError("parameters.labels must be a list of strings")
    if classes is None or len(labels) != len(classes):
        count = "no classes" if classes is None else f"{len(classes)} classes"
        raise ValueError(f"parameters.labels names {len(labels)} classes; the model has {count}")
    return labels


def _short(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut short: sklearn's run to whole paragraphs."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
