"""The Kubernetes manifests as the tests see them: every overlay rendered by the real `kubectl kustomize`.

No cluster is involved (none can run here): what is checked is what `kubectl apply -k` would send.
kubectl missing: the tests skip and say how to get it, or fail under MODELGATE_REQUIRE_E2E=1 (CI).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = ("dev", "production")
REQUIRE = os.environ.get("MODELGATE_REQUIRE_E2E") == "1"
GET_KUBECTL = (
    "kubectl is not installed: it renders the overlays (kustomize is built in). Get it from "
    "https://kubernetes.io/docs/tasks/tools/ (any 1.27+; Debian/Ubuntu: the pkgs.k8s.io apt repository, "
    "`apt-get install kubectl`), or a standalone kustomize 5 with KUSTOMIZE=kustomize"
)

Manifest = dict[str, Any]


def unavailable(reason: str) -> None:
    """Skip, or fail when CI requires every tool (the e2e tests' rule)."""
    if REQUIRE:
        pytest.fail(f"{reason} (MODELGATE_REQUIRE_E2E=1, so this fails instead of skipping)")
    pytest.skip(reason)


def kustomize_command() -> list[str]:
    """`kubectl kustomize`, or a standalone `kustomize build` named by KUSTOMIZE."""
    standalone = os.environ.get("KUSTOMIZE")
    if standalone:
        return [standalone, "build"]
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        unavailable(GET_KUBECTL)
    return [str(kubectl), "kustomize"]


@functools.cache
def _rendered(overlay: str, command: tuple[str, ...]) -> str:
    result = subprocess.run(
        [*command, str(KUBERNETES / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{' '.join(command)} {overlay} failed:\n{result.stderr}"
    return result.stdout


def render(overlay: str) -> str:
    """The overlay's manifests as `kubectl kustomize` prints them (one YAML stream)."""
    return _rendered(overlay, tuple(kustomize_command()))


def objects(overlay: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(render(overlay)) if doc]


def name_of(manifest: Manifest) -> str:
    return f"{manifest['kind']}/{manifest['metadata']['name']}"
