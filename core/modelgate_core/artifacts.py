"""The artifact contract between the model builds and the services.

A model artifact is a folder (``artifacts/<name>/``) holding the model's files and a ``manifest.json``
that names the model, its version, how it was built, its held-out metrics, model-specific settings
(``extra``) and the sha256 of every other file in the folder. Services refuse to load an artifact whose
files do not match the manifest, so a half-copied or hand-edited model never serves traffic.

Runtime code: only the standard library and pydantic, so every service can import it cheaply.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MANIFEST_NAME = "manifest.json"

Domain = Literal["tabular", "vision", "nlp"]


class ArtifactError(RuntimeError):
    """An artifact folder is missing, unreadable, or does not match its manifest."""


class Manifest(BaseModel):
    """What a built model is, how it was made and how well it did; stored as ``manifest.json``."""

    # Unknown keys are refused so that a manifest written by a newer build is noticed, not half-read.
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Model name, also its folder name under artifacts/.", examples=["iris"])
    version: str = Field(
        description="Semantic version plus the first 12 characters of the build's cache key.",
        examples=["1.0.0+3f9a2c41d0b7"],
    )
    domain: Domain
    created: str = Field(description="When it was built, ISO-8601 UTC.", examples=["2025-01-01T12:00:00Z"])
    framework: str = Field(
        description="Library and version the model runs on.", examples=["scikit-learn 1.9.1"]
    )
    data_source: str = Field(description="What it was trained and evaluated on.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Held-out evaluation metrics.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Model-specific settings (labels, ...).")
    files: dict[str, str] = Field(default_factory=dict, description="Relative POSIX path -> sha256 (hex).")


def utc_now() -> str:
    """The current time as ISO-8601 UTC with a ``Z`` suffix, second precision (for ``created``)."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large weights do not need to fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(model_dir: Path) -> dict[str, str]:
    """sha256 of every file under ``model_dir`` except the manifest, keyed by sorted relative POSIX path."""
    paths = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    return {p.relative_to(model_dir).as_posix(): sha256_file(p) for p in paths}


def read_manifest(model_dir: Path) -> Manifest:
    """Read and validate ``model_dir/manifest.json``; raise `ArtifactError` if absent or invalid."""
    path = Path(model_dir) / MANIFEST_NAME
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise ArtifactError(f"no {MANIFEST_NAME} in {model_dir} (run `make models`)") from exc
    except ValidationError as exc:
        raise ArtifactError(f"invalid {path}: {exc}") from exc


def write_manifest(model_dir: Path, manifest: Manifest) -> None:
    """Write ``model_dir/manifest.json`` atomically (temp file + rename), so readers never see half of it."""
    model_dir = Path(model_dir)
    data = manifest.model_dump_json(indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=f".{MANIFEST_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
        # mkstemp makes the file private (0600); services may run as another user (e.g. in Docker).
        os.chmod(tmp, 0o644)
        os.replace(tmp, model_dir / MANIFEST_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def verify_files(model_dir: Path, manifest: Manifest) -> None:
    """Check that every file the manifest lists exists under ``model_dir`` with the recorded sha256.

    Raises `ArtifactError` naming the first missing or mismatching file. Files not in the manifest are
    ignored (the manifest is the contract), but an empty file list is an error: nothing would be checked.
    """
    model_dir = Path(model_dir)
    if not manifest.files:
        raise ArtifactError(f"manifest of {manifest.name!r} in {model_dir} lists no files")
    for rel, expected in sorted(manifest.files.items()):
        path = model_dir / rel
        # Refuse paths that climb out of the artifact folder: the manifest must not point elsewhere.
        if not path.resolve().is_relative_to(model_dir.resolve()):
            raise ArtifactError(f"{manifest.name}: manifest path {rel!r} escapes {model_dir}")
        if not path.is_file():
            raise ArtifactError(
                f"{manifest.name}: file {rel!r} listed in the manifest is missing in {model_dir}"
            )
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"{manifest.name}: sha256 mismatch for {rel!r} in {model_dir} "
                f"(manifest {expected[:12]}..., file {actual[:12]}...); rebuild with `make models`"
            )
