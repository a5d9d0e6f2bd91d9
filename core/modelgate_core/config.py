"""Settings shared by every ModelGate process (pydantic-settings, read from the environment and `.env`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """Base settings; each process subclasses this and adds its own fields.

    Values come from environment variables (case-insensitive) and an optional `.env` file. Empty
    variables count as unset (`env_ignore_empty`), so `FOO=` in a compose file keeps the default.
    """

    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore")

    service_name: str = "modelgate"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    # INFO lines (the access log) are written in batches this often, off the event loop; WARNING and
    # above at once. 0: every line at once (a SIGKILLed process otherwise loses at most this much).
    log_flush_seconds: float = Field(default=0.2, ge=0)
    # After SIGTERM, keep serving this long with readiness 503 before the graceful shutdown starts, so a
    # load balancer sees the 503 before the port closes. Keep it well under Gunicorn's GRACEFUL_TIMEOUT.
    drain_seconds: float = Field(default=0.0, ge=0)
    # Largest JSON request body accepted, in bytes; enforced while reading, before parsing.
    max_json_bytes: int = Field(default=1_048_576, ge=1_024)
    # Set: the Gunicorn master serves Prometheus metrics (every worker's, aggregated) on this port, at
    # BIND's address, and `/metrics` on the public port answers 404. Unset: `/metrics` on the public port.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
