"""The Open Inference Protocol's model paths, parsed without a router.

`/v2/models/{name}[/versions/{version}][/ready|/infer]`, segments as Starlette's `{name}` matches them
(`[^/]+`, already percent-decoded). Plain-ASGI routes (the gateway's forwards, a service's infer) use
this to answer before FastAPI's router, whose routing costs more than these requests' own work.
"""

from __future__ import annotations

from dataclasses import dataclass

# The step after the model (or version) segment -> the method it takes.
_STEPS = {"": "GET", "ready": "GET", "infer": "POST"}


@dataclass(frozen=True, slots=True)
class ModelPath:
    name: str
    version: str | None
    step: str  # "" (metadata), "ready" or "infer"

    @property
    def template(self) -> str:
        """The route template, as the FastAPI routes declare it (metrics and logs name routes so)."""
        return _TEMPLATES[(self.version is not None, self.step)]

    @property
    def suffix(self) -> str:
        return f"/{self.step}" if self.step else ""


_TEMPLATES = {
    (versioned, step): "/v2/models/{name}"
    + ("/versions/{version}" if versioned else "")
    + (f"/{step}" if step else "")
    for versioned in (False, True)
    for step in _STEPS
}


def parse_model_path(method: str, path: str) -> ModelPath | None:
    """The model route `method path` is, or None (not a model route, or another method)."""
    if not path.startswith("/v2/models/"):
        return None
    parts = path[len("/v2/models/") :].split("/")
    name, rest = parts[0], parts[1:]
    if not name:
        return None
    version = None
    if rest[:1] == ["versions"]:
        if len(rest) < 2 or not rest[1]:
            return None
        version, rest = rest[1], rest[2:]
    if len(rest) > 1:
        return None
    step = rest[0] if rest else ""
    if _STEPS.get(step) != method:
        return None
    return ModelPath(name, version, step)
