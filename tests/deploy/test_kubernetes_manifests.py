"""deploy/kubernetes, offline: every overlay renders with the real `kubectl kustomize`, every object
validates against the Kubernetes schemas of each minor version in SCHEMA_VERSIONS with PyPI
`kubernetes-validate --strict` (unknown fields are errors, a kind without a schema too), and our own
rules (tests/deploy/kube_rules.py) hold. Nothing here starts a cluster: none can run on this machine.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import kube_rules
from tests.deploy.kube import OVERLAYS, name_of, objects, render

# The Kubernetes versions the manifests are written for: 1.29 (the oldest with upstream support when
# this was written, and what every API used here has been GA in since 1.23) to 1.37, the newest
# schemas kubernetes-validate 1.37.0 carries.
SCHEMA_VERSIONS = [f"1.{minor}.0" for minor in range(29, 38)]
VALIDATE = Path(sys.executable).with_name("kubernetes-validate")

EXPECTED_KINDS = {
    "dev": {
        "Namespace": 1, "ServiceAccount": 1, "ConfigMap": 1, "Service": 5, "Deployment": 4, "StatefulSet": 1,
        "Job": 1, "PersistentVolumeClaim": 1, "HorizontalPodAutoscaler": 4, "PodDisruptionBudget": 4,
        "NetworkPolicy": 4,
    },
}  # fmt: skip
EXPECTED_KINDS["production"] = {**EXPECTED_KINDS["dev"], "Ingress": 1}


def validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    if not VALIDATE.exists():
        pytest.fail(f"{VALIDATE} is missing: pip install -r requirements-dev.txt (kubernetes-validate)")
    return subprocess.run(
        [str(VALIDATE), "--strict", "-k", version, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_component(overlay: str) -> None:
    rendered = objects(overlay)
    assert dict(Counter(o["kind"] for o in rendered)) == EXPECTED_KINDS[overlay]
    assert {o["metadata"].get("namespace") for o in rendered if o["kind"] != "Namespace"} == {"modelgate"}
    names = [name_of(o) for o in rendered]
    assert len(names) == len(set(names)), names


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_object_validates_strictly(overlay: str, version: str, tmp_path: Path) -> None:
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(render(overlay))
    result = validate(path, version)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # A kind with no schema is only a WARN for kubernetes-validate: here it fails, every object must pass.
    passed = re.findall(r"^INFO .* passed for resource (\S+) against version", result.stdout, re.MULTILINE)
    assert sorted(passed) == sorted(name_of(o).lower() for o in objects(overlay)), output


def test_strict_validation_refuses_an_unknown_field(tmp_path: Path) -> None:
    """The schema check can fail: a misspelt field (here in a probe) is an error, not ignored."""
    broken = copy.deepcopy(kube_rules.one(objects("production"), "Deployment", "gateway"))
    assert broken is not None
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = validate(path, SCHEMA_VERSIONS[0])
    assert result.returncode != 0
    assert "'periodSecond' was unexpected" in result.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_our_rules_hold(overlay: str) -> None:
    problems = kube_rules.check_all(objects(overlay), production=overlay == "production")
    assert {name: found for name, found in problems.items() if found} == {}
    print(f"[k8s] {overlay}: {len(problems)} rule groups hold on {len(objects(overlay))} objects")


def test_production_spreads_as_a_rule_and_scales_further() -> None:
    rendered = objects("production")
    for deployment in kube_rules.of_kind(rendered, "Deployment"):
        spreads = kube_rules.pod_spec(deployment)["topologySpreadConstraints"]
        assert [s["whenUnsatisfiable"] for s in spreads] == ["DoNotSchedule"], kube_rules.label(deployment)
    bounds = {h["metadata"]["name"]: (h["spec"]["minReplicas"], h["spec"]["maxReplicas"]) for h in
              kube_rules.of_kind(rendered, "HorizontalPodAutoscaler")}  # fmt: skip
    assert bounds == {
        "gateway": (2, 6),
        "tabular-service": (2, 12),
        "vision-service": (2, 12),
        "nlp-service": (2, 12),
    }
    dev = {h["metadata"]["name"]: (h["spec"]["minReplicas"], h["spec"]["maxReplicas"]) for h in
           kube_rules.of_kind(objects("dev"), "HorizontalPodAutoscaler")}  # fmt: skip
    assert set(dev.values()) == {(1, 2)}


def _mutated(overlay: str, change: Any) -> list[dict[str, Any]]:
    rendered = copy.deepcopy(objects(overlay))
    change(rendered)
    return rendered


def _gateway(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    found = kube_rules.one(rendered, "Deployment", "gateway")
    assert found is not None
    return found


def _nlp_container(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    found = kube_rules.one(rendered, "Deployment", "nlp-service")
    assert found is not None
    return kube_rules.pod_spec(found)["containers"][0]  # type: ignore[no-any-return]


def _open_redis_to_everyone(rendered: list[dict[str, Any]]) -> None:
    policy = kube_rules.one(rendered, "NetworkPolicy", "redis")
    assert policy is not None
    policy["spec"]["ingress"][0].pop("from")


def _expose_nlp(rendered: list[dict[str, Any]]) -> None:
    service = kube_rules.one(rendered, "Service", "nlp-service")
    assert service is not None
    service["spec"] = {**service["spec"], "type": "LoadBalancer", "clusterIP": ""}


def _secret_in_config_map(rendered: list[dict[str, Any]]) -> None:
    config_map = kube_rules.of_kind(rendered, "ConfigMap")[0]
    config_map["data"]["REDIS_PASSWORD"] = "0123456789abcdef0123"


def _short_grace(rendered: list[dict[str, Any]]) -> None:
    kube_rules.pod_spec(_gateway(rendered))["terminationGracePeriodSeconds"] = 30


def _liveness_on_ready(rendered: list[dict[str, Any]]) -> None:
    _nlp_container(rendered)["livenessProbe"]["httpGet"]["path"] = "/health/ready"


def _writable_root(rendered: list[dict[str, Any]]) -> None:
    _nlp_container(rendered)["securityContext"]["readOnlyRootFilesystem"] = False


def _no_memory_limit(rendered: list[dict[str, Any]]) -> None:
    del _nlp_container(rendered)["resources"]["limits"]["memory"]


def _models_writable(rendered: list[dict[str, Any]]) -> None:
    for mount in _nlp_container(rendered)["volumeMounts"]:
        mount.pop("readOnly", None)


def _fixed_replicas(rendered: list[dict[str, Any]]) -> None:
    _gateway(rendered)["spec"]["replicas"] = 3


def _latest_image(rendered: list[dict[str, Any]]) -> None:
    _nlp_container(rendered)["image"] = "modelgate/nlp-service:latest"


@pytest.mark.parametrize(
    ("rule", "change"),
    [
        ("network", _open_redis_to_everyone),
        ("exposure", _expose_nlp),
        ("secrets", _secret_in_config_map),
        ("termination", _short_grace),
        ("probes", _liveness_on_ready),
        ("security", _writable_root),
        ("resources", _no_memory_limit),
        ("storage", _models_writable),
        ("scaling", _fixed_replicas),
        ("images", _latest_image),
    ],
)
def test_a_rule_catches_what_it_is_for(rule: str, change: Any) -> None:
    """Each rule can fail: the production manifests with one thing broken break that rule."""
    problems = kube_rules.check_all(_mutated("production", change), production=True)
    assert problems[rule], f"{rule} did not notice"


def test_kubectl_is_what_renders() -> None:
    """The tests above ran the real kubectl (or KUSTOMIZE), not a stand-in."""
    assert shutil.which("kubectl") or pytest.skip("kubectl absent: the render test said how to get it")
    version = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True, check=True)
    assert "Kustomize Version: v5" in version.stdout, version.stdout
