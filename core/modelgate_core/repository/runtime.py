"""The contract every runtime implements: one loaded model version, tensors in and tensors out.

As in KServe's `Model`: `load` once (per worker, in a thread), then per request `preprocess` (one
request's validated input tensors -> what `predict` takes; raise `BadRequest` for bad content such
as an undecodable image), `predict` (rows of several requests concatenated along the first axis when
batching merges them), `postprocess` (one request's rows -> its output tensors). Everything but
`load` runs in worker threads, never on the event loop.

Tensors are numpy arrays (`modelgate_core.oip.dtypes.NUMPY_DTYPES`); BYTES tensors are object arrays
of `bytes`. The framework checks names, datatypes and shapes against `inputs` before `preprocess`,
and selects the requested `outputs` after `postprocess`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelgate_core.artifacts import MANIFEST_NAME, Manifest, read_manifest, verify_files
from modelgate_core.oip.types import Parameters, TensorSpec
from modelgate_core.repository.settings import ModelSettings, read_settings

Tensors = Mapping[str, np.ndarray[Any, Any]]


@dataclass(frozen=True)
class ModelContext:
    """What a runtime is given: the model's public name, its version folder and its settings.

    `manifest` is the folder's `manifest.json` when it has one (built-in models do), already checked
    against the files' sha256 by the repository.
    """

    name: str
    version: str
    folder: Path
    settings: ModelSettings
    manifest: Manifest | None = None

    @property
    def parameters(self) -> Parameters:
        return self.settings.parameters

    @classmethod
    def of_folder(
        cls, name: str, version: str, folder: Path, settings: ModelSettings | None = None
    ) -> ModelContext:
        """The context of a version folder as the repository makes it: its settings (or `settings`),
        and its manifest when it has one, checked against the files' sha256."""
        manifest = None
        if (folder / MANIFEST_NAME).is_file():
            manifest = read_manifest(folder)
            verify_files(folder, manifest)
        return cls(name, version, folder, settings or read_settings(folder), manifest)


class ModelRuntime(ABC):
    """One model version in memory. Subclass per kind of model; register it in a service."""

    # The name used in model-settings.json, and the OIP metadata `platform`.
    runtime: ClassVar[str]
    platform: ClassVar[str]
    # True when `preprocess` and `postprocess` cost next to nothing (checks, a label lookup): they
    # then run beside `predict` instead of in worker threads of their own, since a hand-off to a
    # thread costs more than they do. Keep False where preprocessing is real work (decoding an
    # image), which then overlaps with the model serving another request.
    light_steps: ClassVar[bool] = False

    def __init__(self, context: ModelContext) -> None:
        self.context = context
        # Set by `load`: from the settings where declared, otherwise derived from the model.
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []

    @property
    def batchable(self) -> bool:
        """Whether requests may be merged along the first axis (every input's first dim is -1)."""
        return all(spec.shape and spec.shape[0] == -1 for spec in self.inputs)

    @abstractmethod
    def load(self) -> None:
        """Read the model from `context.folder`, set `inputs` and `outputs`; raise on any problem."""

    def preprocess(self, inputs: Tensors, parameters: Parameters) -> Tensors:
        """One request's checked inputs -> model-ready arrays with the same number of rows."""
        return inputs

    @abstractmethod
    def predict(self, batch: Tensors) -> Tensors:
        """Run the model; every output has one row per input row, in order."""

    def postprocess(self, outputs: Tensors, parameters: Parameters) -> Tensors:
        """One request's rows of the raw outputs -> its output tensors (named as in `outputs`)."""
        return outputs

    def unload(self) -> None:  # noqa: B027 - optional hook
        """Release what `load` took (sessions, threads); the object is dropped afterwards."""

    def describe(self) -> Parameters:
        """Extra metadata parameters for `GET /v2/models/{name}` (e.g. labels, the backend in use)."""
        return {}

    def artifact_version(self) -> str | None:
        """The built artifact's version that answers (what a `/v1` answer names), if it has a manifest."""
        manifest = self.context.manifest
        return manifest.version if manifest is not None else None

    def exported_or_parent_version(self, answers_from_parent: bool) -> str | None:
        """For a folder holding an export (ONNX) beside what it was exported from (torch): the export's
        manifest version, or with `answers_from_parent` the parent's, which its manifest records."""
        manifest = self.context.manifest
        if manifest is None:
            return None
        parent = manifest.extra.get("parent")
        if answers_from_parent and isinstance(parent, dict) and parent.get("version"):
            return str(parent["version"])
        return manifest.version


def declared_or(
    context: ModelContext, derived_inputs: list[TensorSpec], derived_outputs: list[TensorSpec]
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The settings' declared tensors where given, else what the runtime derived from the model."""
    settings = context.settings
    return (settings.inputs or derived_inputs, settings.outputs or derived_outputs)


def check_fixed_tensors(
    runtime: str,
    declared_inputs: list[TensorSpec],
    only_input: TensorSpec,
    declared_outputs: list[TensorSpec],
    known_outputs: list[TensorSpec],
) -> None:
    """For a runtime whose tensors are its own (one named input, outputs it computes): declared
    tensors may narrow shapes or pick outputs but rename nothing; `ValueError` says what is wrong."""
    if [(s.name, s.datatype) for s in declared_inputs] != [(only_input.name, only_input.datatype)]:
        shape = list(only_input.shape)
        raise ValueError(
            f"{runtime} takes exactly one input: {only_input.name} {only_input.datatype} {shape}"
        )
    known = {s.name: s.datatype for s in known_outputs}
    for spec in declared_outputs:
        if known.get(spec.name) != spec.datatype:
            raise ValueError(
                f"declared output {spec.name} {spec.datatype} is not one of "
                + ", ".join(f"{n} {d}" for n, d in known.items())
            )
