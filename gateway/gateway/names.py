"""What a model name may be: the one rule shared by key scopes (`model:<name>`) and the model directory."""

from __future__ import annotations

import re

# Names travel in URL paths (`/v2/models/<name>/infer`) and metric labels: a short, safe charset.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def is_model_name(name: str) -> bool:
    """Whether `name` can name a model; "." and ".." never do, as a path they would mean something else."""
    return bool(_MODEL_NAME.match(name)) and name.strip(".") != ""
