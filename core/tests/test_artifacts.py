"""The artifact contract: manifests round-trip, and verification catches missing or altered files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # core/, until installed editable

from modelgate_core.artifacts import (
    MANIFEST_NAME,
    ArtifactError,
    Manifest,
    hash_files,
    read_manifest,
    sha256_file,
    utc_now,
    verify_files,
    write_manifest,
)


def make_artifact(model_dir: Path) -> Manifest:
    (model_dir / "sub").mkdir(parents=True)
    (model_dir / "model.bin").write_bytes(b"weights")
    (model_dir / "sub" / "labels.json").write_text('["a", "b"]')
    return Manifest(
        name="toy",
        version="1.0.0+0123456789ab",
        domain="tabular",
        created=utc_now(),
        framework="none 0",
        data_source="unit test",
        metrics={"accuracy": 0.5},
        extra={"labels": ["a", "b"], "threshold": 0.25},
        files=hash_files(model_dir),
    )


def test_sha256_file_matches_known_digest(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_hash_files_lists_everything_but_the_manifest(tmp_path: Path) -> None:
    manifest = make_artifact(tmp_path)
    write_manifest(tmp_path, manifest)
    assert list(hash_files(tmp_path)) == ["model.bin", "sub/labels.json"]


def test_write_read_round_trip(tmp_path: Path) -> None:
    manifest = make_artifact(tmp_path)
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    raw = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert raw["created"].endswith("Z") and raw["files"]["sub/labels.json"] == sha256_file(
        tmp_path / "sub/labels.json"
    )
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp file left behind
    verify_files(tmp_path, read_manifest(tmp_path))


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    manifest = make_artifact(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"weightz")
    with pytest.raises(ArtifactError, match=r"sha256 mismatch for 'model.bin'"):
        verify_files(tmp_path, manifest)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    manifest = make_artifact(tmp_path)
    (tmp_path / "sub" / "labels.json").unlink()
    with pytest.raises(ArtifactError, match=r"'sub/labels.json'.*missing"):
        verify_files(tmp_path, manifest)


def test_path_outside_the_artifact_is_refused(tmp_path: Path) -> None:
    manifest = make_artifact(tmp_path / "model")
    (tmp_path / "secret").write_bytes(b"x")
    manifest.files["../secret"] = sha256_file(tmp_path / "secret")
    with pytest.raises(ArtifactError, match="escapes"):
        verify_files(tmp_path / "model", manifest)


def test_empty_file_list_is_refused(tmp_path: Path) -> None:
    manifest = make_artifact(tmp_path).model_copy(update={"files": {}})
    with pytest.raises(ArtifactError, match="lists no files"):
        verify_files(tmp_path, manifest)


def test_missing_or_invalid_manifest_is_an_artifact_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"no manifest\.json"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text('{"name": "toy"}')
    with pytest.raises(ArtifactError, match="invalid"):
        read_manifest(tmp_path)
