"""`model-settings.json`: the one small file that makes a folder a servable model version.

    {"runtime": "sklearn",
     "inputs":  [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}],   # optional: derived if absent
     "outputs": [...],                                                      # optional
     "parameters": {"labels": ["setosa", "versicolor", "virginica"]}}      # runtime-specific

Name and version come from the folder names (`<repository>/<name>/<version>/`), never from the file.
Unknown keys are refused, so a typo is a clear reason in the repository index, not a silent default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelgate_core.oip.types import TensorSpec

SETTINGS_FILE = "model-settings.json"

# Which service serves a runtime: the runtime decides, the user never does. A service loads only
# the folders whose runtime it owns; the others are another service's (see `ModelRepository`).
RUNTIME_SERVICES: dict[str, str] = {
    "sklearn": "tabular",
    "onnx": "tabular",
    "text-classification": "nlp",
    "image-classification": "vision",
}


# Names travel in URL paths (`/v2/models/<name>/infer`), key scopes and metric labels: a short, safe
# charset, shared by the repository (folder names) and the gateway (scopes, its model directory).
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def is_model_name(name: str) -> bool:
    """Whether `name` can name a model; "." and ".." never do, as a path they would mean something else."""
    return bool(_MODEL_NAME.match(name)) and name.strip(".") != ""


class ModelSettingsError(ValueError):
    """A model-settings.json that cannot be used; the message is the reason shown in the index."""


class ModelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    runtime: str = Field(description=f"One of: {', '.join(RUNTIME_SERVICES)}")
    description: str = ""
    inputs: list[TensorSpec] | None = None
    outputs: list[TensorSpec] | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


def read_settings(version_dir: Path) -> ModelSettings:
    """Read and validate `version_dir/model-settings.json`; `ModelSettingsError` says what is wrong."""
    path = version_dir / SETTINGS_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ModelSettingsError(f"no {SETTINGS_FILE} in {version_dir.name}/") from None
    except OSError as exc:
        raise ModelSettingsError(f"cannot read {SETTINGS_FILE}: {exc}") from exc
    try:
        settings = ModelSettings.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg']}" for err in exc.errors()
        )
        raise ModelSettingsError(f"invalid {SETTINGS_FILE}: {problems}") from exc
    if settings.runtime not in RUNTIME_SERVICES:
        raise ModelSettingsError(
            f"unknown runtime {settings.runtime!r} in {SETTINGS_FILE}; known: {', '.join(RUNTIME_SERVICES)}"
        )
    return settings
