"""Lay the built-in models out as a model repository: `<repository>/<name>/1/` with
`model-settings.json`, the model's files and a `manifest.json` (metrics, sha256 of every file).
`--versions` (`make model-versions`) also lays out the second versions (`iris/2/`, a random forest)
with a `model.json` that serves every version and keeps 1 the default, unless the model has one.

`make models` builds the artifacts (scripts/build_models.py, cached outside the clone) and then calls
`publish_builtin`. A version folder is assembled beside its final place and renamed into it, so a
service polling the repository never sees half of one; an unchanged folder is left alone (same
manifest and settings), so running services do not reload it.

    python scripts/model_repository.py [--repository models] [--artifacts artifacts] [--versions]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _path in (REPO / "core",):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from modelgate_core.artifacts import (  # noqa: E402  (needs the sys.path above)
    Manifest,
    hash_files,
    read_manifest,
    verify_files,
    write_manifest,
)
from modelgate_core.repository.policy import MODEL_FILE  # noqa: E402
from modelgate_core.repository.settings import SETTINGS_FILE  # noqa: E402

VERSION = "1"


@dataclass(frozen=True)
class Builtin:
    """One built-in model: the artifacts merged into its folder (the last one's manifest describes
    the version) and its settings, made from that manifest."""

    artifacts: tuple[str, ...]
    settings: Callable[[Manifest], dict[str, Any]]
    version: str = VERSION


def _sklearn(*keys: str) -> Callable[[Manifest], dict[str, Any]]:
    return lambda m: {"runtime": "sklearn", "parameters": {k: m.extra[k] for k in keys}}


def _image(m: Manifest) -> dict[str, Any]:
    e = m.extra
    return {
        "runtime": "image-classification",
        "parameters": {
            "onnx_file": e["onnx_file"],
            "labels_file": e["labels_file"],
            "resize": e["resize"],
            "crop": e["input_size"],
            "mean": e["mean"],
            "std": e["std"],
            "torch_weights": "weights.pt",
            "torch_architecture": e["arch"],
        },
    }


def _text(m: Manifest) -> dict[str, Any]:
    e = m.extra
    return {
        "runtime": "text-classification",
        "parameters": {"onnx_file": e["onnx_file"], "max_length": e["max_length"], "labels": e["labels"]},
    }


BUILTIN: dict[str, Builtin] = {
    "iris": Builtin(("iris",), _sklearn("labels", "features")),
    "fraud": Builtin(("fraud",), _sklearn("threshold", "features")),
    "imagenet": Builtin(("imagenet", "imagenet-onnx"), _image),
    "sentiment": Builtin(("sentiment", "sentiment-onnx"), _text),
}
# Further versions of built-in models, for the versions walk-through (README: Versions, canary, shadow).
SECOND_VERSIONS: dict[str, Builtin] = {
    "iris": Builtin(("iris-v2",), _sklearn("labels", "features"), version="2"),
}
# Written beside them when the model has no model.json: a new version must not take over by itself.
SIDE_BY_SIDE = {"version_policy": {"all": {}}, "default_version": VERSION}


def repository_root() -> Path:
    return Path(os.environ.get("MODEL_REPOSITORY") or REPO / "models")


def publish_builtin(artifacts: Path, repository: Path, names: list[str] | None = None) -> list[str]:
    """Write the built-in models' version folders; returns the names that changed."""
    changed = []
    for name in names or list(BUILTIN):
        if publish_one(name, BUILTIN[name], artifacts, repository):
            changed.append(name)
    return changed


def publish_second_versions(artifacts: Path, repository: Path) -> list[str]:
    """Write the second versions (and a side-by-side model.json where none is); returns what changed."""
    changed = []
    for name, builtin in SECOND_VERSIONS.items():
        policy = repository / name / MODEL_FILE
        if not policy.exists():
            policy.parent.mkdir(parents=True, exist_ok=True)
            policy.write_text(json.dumps(SIDE_BY_SIDE, indent=2) + "\n", encoding="utf-8")
            changed.append(f"{name}/{MODEL_FILE}")
        if publish_one(name, builtin, artifacts, repository):
            changed.append(f"{name}/{builtin.version}")
    return changed


def publish_one(name: str, builtin: Builtin, artifacts: Path, repository: Path) -> bool:
    sources = [artifacts / a for a in builtin.artifacts]
    manifests = [read_manifest(s) for s in sources]
    for source, manifest in zip(sources, manifests, strict=True):
        verify_files(source, manifest)
    main = manifests[-1]
    settings = builtin.settings(main)
    dest = repository / name / builtin.version
    if _unchanged(dest, main, settings):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{builtin.version}.", dir=dest.parent))
    try:
        for source in sources:
            for path in source.rglob("*"):
                if path.is_file() and path.name != "manifest.json":
                    target = tmp / path.relative_to(source)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)
        (tmp / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        write_manifest(tmp, main.model_copy(update={"name": name, "files": hash_files(tmp)}))
        os.chmod(tmp, 0o755)
        for path in tmp.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        old = dest.with_name(f".{builtin.version}.old")
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def _unchanged(dest: Path, manifest: Manifest, settings: dict[str, Any]) -> bool:
    try:
        current = read_manifest(dest)
        verify_files(dest, current)
        current_settings = json.loads((dest / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RuntimeError):
        return False
    return current.version == manifest.version and current_settings == settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, default=repository_root())
    parser.add_argument(
        "--artifacts", type=Path, default=Path(os.environ.get("ARTIFACTS_DIR") or REPO / "artifacts")
    )
    parser.add_argument("--versions", action="store_true", help="also the second versions (iris/2)")
    args = parser.parse_args(argv)
    changed = publish_builtin(args.artifacts, args.repository)
    if args.versions:
        changed += publish_second_versions(args.artifacts, args.repository)
    print(f"model repository {args.repository}: {', '.join(changed) or 'nothing'} updated", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
