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
    # Largest JSON request body accepted, in bytes; enforced while reading, before parsing.
    max_json_bytes: int = Field(default=1_048_576, ge=1_024)
