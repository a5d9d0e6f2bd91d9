"""deploy/swarm/stack.py: compose.yaml as `docker stack deploy` takes it. The swarm e2e test deploys it
for real; these checks need only the docker CLI (`docker stack config` parses and interpolates the file
client-side, no daemon) and say what the filter keeps and drops.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from deploy.swarm import stack

PYTHON_SERVICES = ("gateway", "tabular-service", "vision-service", "nlp-service")


def clean_environment() -> dict[str, str]:
    """This environment less every variable compose.yaml reads: its defaults apply, whatever the shell set."""
    read = set(re.findall(r"\$\{([A-Z0-9_]+)", stack.COMPOSE_FILE.read_text()))
    env = {key: value for key, value in os.environ.items() if key not in read}
    return {**env, "REDIS_PASSWORD": "0123456789abcdef0123"}


def stack_config(text: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not installed (scripts/docker/setup_docker.sh installs it)")
    return subprocess.run(
        ["docker", "stack", "config", "-c", "-"],
        input=text,
        capture_output=True,
        text=True,
        env=clean_environment(),
        cwd=stack.REPO,
        timeout=60,
        check=False,
    )


def rendered() -> dict[str, Any]:
    return yaml.safe_load(stack.render())  # type: ignore[no-any-return]


def test_docker_stack_refuses_compose_yaml_as_is() -> None:
    assert stack_config(stack.COMPOSE_FILE.read_text()).returncode != 0


@pytest.mark.parametrize(
    ("key", "refusal"),
    [("depends_on", "depends_on must be a list"), ("ports", "Additional property host_ip is not allowed")],
)
def test_each_dropped_key_is_one_swarm_refuses(key: str, refusal: str) -> None:
    """Why the filter exists: the rendered file with one of compose.yaml's keys put back is refused."""
    compose = yaml.safe_load(stack.COMPOSE_FILE.read_text())
    swarm = stack.stack_file(compose)
    swarm["services"]["gateway"][key] = compose["services"]["gateway"][key]
    refused = stack_config(yaml.safe_dump(swarm))
    assert refused.returncode != 0
    assert refusal in refused.stderr


def test_docker_stack_takes_the_rendered_file() -> None:
    accepted = stack_config(stack.render())
    assert accepted.returncode == 0, accepted.stderr
    config = yaml.safe_load(accepted.stdout)
    assert sorted(config["services"]) == sorted([*PYTHON_SERVICES, "redis"])
    nlp = config["services"]["nlp-service"]
    assert nlp["deploy"]["endpoint_mode"] == "dnsrr"
    assert nlp["deploy"]["update_config"]["order"] == "start-first"
    assert nlp["deploy"]["update_config"]["failure_action"] == "rollback"
    # Interpolated by docker stack, from the environment, with compose.yaml's defaults.
    assert nlp["deploy"]["replicas"] == 1
    assert config["services"]["gateway"]["ports"] == [
        {"mode": "ingress", "target": 8000, "published": 8000, "protocol": "tcp"}
    ]


def test_only_compose_only_keys_are_dropped() -> None:
    compose = yaml.safe_load(stack.COMPOSE_FILE.read_text())
    swarm = rendered()
    assert "name" not in swarm and not [key for key in swarm if key.startswith("x-")]
    optional = {name for name, service in compose["services"].items() if service.get("profiles")}
    assert set(swarm["services"]) == set(compose["services"]) - optional
    for name, service in swarm["services"].items():
        assert not {"build", "depends_on", "profiles"} & set(service), name
        original = compose["services"][name]
        for key in set(original) - {"build", "depends_on", "volumes", "ports"}:
            assert service[key] == original[key], (name, key)
    assert set(swarm["networks"]) == {"backend", "keystore", "edge"}
    # Redis's keys and each model service's traffic (admin calls); not the optional profiles' volumes.
    assert set(swarm["volumes"]) == {"redis-data", "tabular-traffic", "vision-traffic", "nlp-traffic"}


def test_tmp_is_a_tmpfs_mount_swarm_applies() -> None:
    """`tmpfs:` is silently dropped by swarm; on a read-only root nothing could start without /tmp."""
    for name in PYTHON_SERVICES:
        service = rendered()["services"][name]
        assert "tmpfs" not in service, name
        assert {"type": "tmpfs", "target": "/tmp"} in service["volumes"], name


def test_deploy_environment_adds_the_drain_under_what_is_set() -> None:
    assert stack.deploy_environment({})["DRAIN_SECONDS"] == "8"
    assert stack.deploy_environment({"DRAIN_SECONDS": "3"})["DRAIN_SECONDS"] == "3"
