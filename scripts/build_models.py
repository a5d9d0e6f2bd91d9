"""Build every ModelGate model artifact, deterministically and with a content-addressed cache.

    .venv/bin/python scripts/build_models.py [--only NAME ...] [--force]

Each model has a build script (`<service>/build_<model>.py`) exposing NAME, VERSION, LIBRARIES,
`inputs()` (data and helper files it depends on) and `build(out_dir, progress) -> Manifest`.
The cache key is the sha256 of the build script, core/modelgate_core/artifacts.py, the script's
input files and the installed versions of its libraries.

A derived artifact (an ONNX export) has a script with PARENT (the artifact it is made from) instead of
VERSION, and `build(out_dir, progress, parent_dir, parent_manifest) -> Manifest`; it is made into its
own folder, so the parent's files, manifest and cache entry never change. Its key adds the parent's
version and file hashes; its version is `<parent version>.<marker>.<key[:12]>`, the marker ("onnx",
"onnx-int8") being the version its build returns. Selecting a derived artifact selects its parent too.

A cache hit under
`${MODELGATE_CACHE_DIR:-~/.cache/modelgate}/models/<name>/<key>/` is verified and copied to
`${ARTIFACTS_DIR:-<repo>/artifacts}/<name>/`; a miss is built into a temp dir, stored, then copied.
Finally the built-in models are laid out as a model repository, `${MODEL_REPOSITORY:-<repo>/models}/
<name>/1/` (scripts/model_repository.py), which is what the services serve.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
# Make the repo's packages importable without an editable install or PYTHONPATH (`make models`).
for _path in (REPO / "core", REPO / "vision-service"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from model_repository import publish_builtin, repository_root  # noqa: E402  (scripts/ is on sys.path)

from modelgate_core.artifacts import (  # noqa: E402  (needs the sys.path above)
    ArtifactError,
    Manifest,
    read_manifest,
    verify_files,
    write_manifest,
)

ARTIFACTS_MODULE = REPO / "core" / "modelgate_core" / "artifacts.py"
SEED = 42

# name -> (build script, metrics worth showing in the summary); built in this order, cheapest first.
MODELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "iris": ("tabular-service/build_iris.py", ("accuracy", "macro_f1")),
    # Version 2 of iris (make model-versions lays it out): a second real model for canaries and shadows.
    "iris-v2": ("tabular-service/build_iris_v2.py", ("accuracy", "macro_f1")),
    "fraud": (
        "tabular-service/build_fraud.py",
        ("roc_auc", "average_precision", "precision", "recall", "threshold"),
    ),
    "imagenet": ("vision-service/build_imagenet.py", ("published_top1", "sanity_top5_hits")),
    "sentiment": ("nlp-service/build_sentiment.py", ("accuracy", "macro_f1")),
    # Derived artifacts, after their parents.
    "imagenet-onnx": (
        "vision-service/export_imagenet_onnx.py",
        ("max_abs_diff_logits", "max_abs_diff_probs", "top5_agreement"),
    ),
    "sentiment-onnx": (
        "nlp-service/export_sentiment_onnx.py",
        ("accuracy", "max_abs_diff_probs", "batch_variation_int8"),
    ),
}
# Roughly how long a build from an empty cache takes on this project's 2-core machine, for the progress
# line; kept here rather than in the build scripts, whose bytes are part of their cache keys.
BUILD_SECONDS = {
    "iris": 2,
    "iris-v2": 2,
    "fraud": 50,
    "imagenet": 5,
    "sentiment": 185,
    "imagenet-onnx": 10,
    "sentiment-onnx": 50,
}


@dataclass
class Result:
    """How one model's build went, for the summary table."""

    name: str
    status: str = "failed"
    version: str = "-"
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""


def load_build_module(name: str, script: Path) -> ModuleType:
    """Import a build script by file path (service folders have hyphens, so they are not packages)."""
    spec = importlib.util.spec_from_file_location(f"modelgate_build_{name}", script)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import {script}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if name != module.NAME:
        raise RuntimeError(f"{script} builds {module.NAME!r}, expected {name!r}")
    return module


def library_version(dist: str) -> str:
    """Installed version of a distribution, or "missing" (then the build itself will fail clearly)."""
    try:
        return dist_version(dist)
    except PackageNotFoundError:
        return "missing"


def cache_key(script: Path, module: ModuleType, parent: Manifest | None = None) -> str:
    """sha256 over everything that determines the artifact; any change means a rebuild."""
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        # Length-prefixed, so that no two different input lists can produce the same byte stream.
        digest.update(f"{label}\0{len(data)}\0".encode())
        digest.update(data)

    add("script", script.read_bytes())
    add("artifacts.py", ARTIFACTS_MODULE.read_bytes())
    for path in module.inputs():
        add(f"input:{Path(path).name}", Path(path).read_bytes())
    for dist in sorted(module.LIBRARIES):
        add(f"lib:{dist}", library_version(dist).encode())
    add("python", f"{sys.version_info.major}.{sys.version_info.minor}".encode())
    if parent is not None:
        add("parent", f"{parent.name} {parent.version}".encode())
        for rel, sha in sorted(parent.files.items()):
            add(f"parent:{rel}", sha.encode())
    return digest.hexdigest()


def cache_root() -> Path:
    """Where built artifacts are kept between runs: outside the repo, shared by all checkouts."""
    default = Path.home() / ".cache" / "modelgate"
    return Path(os.environ.get("MODELGATE_CACHE_DIR") or default) / "models"


def artifacts_root() -> Path:
    """Where the services read artifacts from."""
    return Path(os.environ.get("ARTIFACTS_DIR") or REPO / "artifacts")


def is_valid(model_dir: Path) -> Manifest | None:
    """The manifest of `model_dir` if it is a complete, verified artifact, else None."""
    try:
        manifest = read_manifest(model_dir)
        verify_files(model_dir, manifest)
    except (ArtifactError, OSError):
        return None
    return manifest


def seed_everything(libraries: tuple[str, ...]) -> None:
    """Seed every RNG a build may touch and pin torch's threads, so reruns give identical models."""
    random.seed(SEED)
    import numpy as np

    np.random.seed(SEED)
    if "torch" in libraries:
        import torch

        torch.manual_seed(SEED)
        # A fixed thread count fixes the order of float reductions, hence bit-identical results; 2 is
        # this project's build machine, override with MODELGATE_BUILD_THREADS on a bigger one.
        torch.set_num_threads(int(os.environ.get("MODELGATE_BUILD_THREADS", "2")))
        torch.use_deterministic_algorithms(True, warn_only=True)


def make_progress(name: str, started: float) -> Callable[[str], None]:
    """A step logger that prefixes lines with the model name and the seconds since its build began."""

    def progress(message: str) -> None:
        print(f"[{name}] {time.monotonic() - started:7.1f}s  {message}", flush=True)

    return progress


def private_to_shared(path: Path) -> Path:
    """Make a tree world-readable: mkdtemp makes 0700 folders and some writers (safetensors) 0600 files,
    but services may run as another user (e.g. in Docker)."""
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return path


def build_into_cache(
    module: ModuleType,
    key: str,
    entry: Path,
    progress: Callable[[str], None],
    parent: tuple[Path, Manifest] | None = None,
) -> Manifest:
    """Build into a temp dir next to the cache entry, then rename it into place (atomic)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_to_shared(Path(tempfile.mkdtemp(dir=entry.parent, prefix=".build-")))
    try:
        seed_everything(tuple(module.LIBRARIES))
        if parent is None:
            manifest: Manifest = module.build(tmp, progress)
            version = f"{module.VERSION}+{key[:12]}"
        else:
            manifest = module.build(tmp, progress, *parent)
            version = f"{parent[1].version}.{manifest.version}.{key[:12]}"
        private_to_shared(tmp)
        manifest = manifest.model_copy(update={"version": version})
        write_manifest(tmp, manifest)
        verify_files(tmp, manifest)
        if entry.exists():  # a broken entry from an interrupted or tampered run
            shutil.rmtree(entry)
        os.rename(tmp, entry)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(entry: Path, manifest: Manifest, dest: Path) -> bool:
    """Copy a cache entry to `dest` unless it is already there; returns whether anything was copied.

    The copy is made and verified in a temp dir beside `dest`, then swapped in with two renames, so a
    service never sees a half-written folder.
    """
    current = is_valid(dest) if dest.exists() else None
    if current == manifest:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_to_shared(Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-")))
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    try:
        shutil.copytree(entry, tmp, dirs_exist_ok=True)
        verify_files(tmp, read_manifest(tmp))
        if dest.exists():
            os.rename(dest, old)
        os.rename(tmp, dest)
    except BaseException:
        if old.exists() and not dest.exists():  # put the previous artifact back
            os.rename(old, dest)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return True


def resolve_parent(module: ModuleType) -> tuple[Path, Manifest] | None:
    """A derived artifact's parent as published (folder, verified manifest); None for a plain build."""
    parent_name = getattr(module, "PARENT", None)
    if parent_name is None:
        return None
    parent_dir = artifacts_root() / parent_name
    manifest = is_valid(parent_dir)
    if manifest is None:
        raise ArtifactError(f"{module.NAME} needs a valid {parent_dir}: build {parent_name!r} first")
    return parent_dir, manifest


def parent_of(name: str) -> str | None:
    """The PARENT a build script declares (its module-level code is cheap: heavy imports are in build)."""
    parent: str | None = getattr(load_build_module(name, REPO / MODELS[name][0]), "PARENT", None)
    return parent


def run_one(name: str, force: bool, step: str) -> Result:
    """Resolve one model from the cache or build it, then publish it to the artifacts folder."""
    started = time.monotonic()
    progress = make_progress(name, started)
    result = Result(name)
    script = REPO / MODELS[name][0]
    module = load_build_module(name, script)
    parent = resolve_parent(module)
    key = cache_key(script, module, parent[1] if parent else None)
    entry = cache_root() / name / key
    manifest = None if force else is_valid(entry)
    if manifest is None:
        print(
            f"==> [models {step}] {name}: not in the cache, building it "
            f"(about {BUILD_SECONDS[name]} s on 2 cores; cache key {key[:12]})",
            flush=True,
        )
        manifest = build_into_cache(module, key, entry, progress, parent)
        result.status = "built"
    else:
        result.status = "cached"
    dest = artifacts_root() / name
    copied = publish(entry, manifest, dest)
    progress(f"{result.status}, {'copied to' if copied else 'already in'} {dest}")
    result.version = manifest.version
    result.metrics = manifest.metrics
    result.seconds = time.monotonic() - started
    return result


def print_summary(results: list[Result]) -> None:
    """One line per model: name, version, cached/built/failed, key metrics, seconds."""
    print("\n" + f"{'model':<14} {'version':<40} {'status':<7} {'seconds':>8}  metrics")
    print("-" * 120)
    for r in results:
        keys = MODELS[r.name][1]
        shown = ", ".join(f"{k}={r.metrics[k]:.4g}" for k in keys if k in r.metrics) or r.error
        print(f"{r.name:<14} {r.version:<40} {r.status:<7} {r.seconds:8.1f}  {shown}")


def main(argv: list[str] | None = None) -> int:
    """Build the selected models; return 0 if all succeeded, 1 otherwise."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=list(MODELS), metavar="NAME", help="models to build")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache has the artifact")
    args = parser.parse_args(argv)

    # No model hub here: every weight comes from an installed package, so never try the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    selected = set(MODELS if args.only is None else args.only)
    # A derived artifact is made from its parent as published, so the parent is resolved first.
    selected |= {p for n in list(selected) if (p := parent_of(n)) is not None}
    names = [n for n in MODELS if n in selected]
    print(f"cache: {cache_root()}\nartifacts: {artifacts_root()}", flush=True)
    results: list[Result] = []
    for number, name in enumerate(names, 1):
        started = time.monotonic()
        parent = parent_of(name)
        if parent is not None and any(r.name == parent and r.status == "failed" for r in results):
            # Never derive from a stale parent left in the artifacts folder by an earlier run.
            results.append(Result(name, error=f"not built: its parent {parent!r} failed"))
            continue
        try:
            results.append(run_one(name, args.force, f"{number}/{len(names)}"))
        except Exception as exc:  # noqa: BLE001  (report every model, then fail the run)
            traceback.print_exc()
            seconds = time.monotonic() - started
            results.append(Result(name, seconds=seconds, error=f"{type(exc).__name__}: {exc}"))
    print_summary(results)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        for r in failed:
            print(f"error: model {r.name!r} failed to build: {r.error}", file=sys.stderr)
        return 1
    if args.only is None:
        changed = publish_builtin(artifacts_root(), repository_root())
        print(f"model repository {repository_root()}: {', '.join(changed) or 'up to date'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
