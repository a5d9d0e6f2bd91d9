"""Errors only the gateway raises; the shape of the answer (OIP on /v2, common elsewhere) is core's."""

from __future__ import annotations

from modelgate_core.errors import ModelGateError


class Conflict(ModelGateError):
    """Two services claim the same model name: the gateway refuses to guess which one is meant."""

    status_code = 409
    code = "conflict"
