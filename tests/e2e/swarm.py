"""A ModelGate stack on a single-node Docker Swarm, for tests/e2e/test_swarm.py.

`SwarmStack.open()` makes this Docker a swarm manager if it is not one (`docker swarm init` on
127.0.0.1), deploys compose.yaml through deploy/swarm/stack.py under a unique stack name, and waits
until every task runs and the gateway is ready; `close()` removes the stack, its networks and its
volume, and leaves the swarm only if `open()` joined it. No Docker, no wrk, or images not built: the
test skips with the reason, or fails under MODELGATE_REQUIRE_E2E=1.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from deploy.swarm import stack as stack_file
from devstack import free_port

REPO = Path(__file__).resolve().parents[2]
REQUIRE = os.environ.get("MODELGATE_REQUIRE_E2E") == "1"
UP_TIMEOUT = float(os.environ.get("MODELGATE_E2E_UP_TIMEOUT", "300"))
OUR_IMAGES = ("gateway", "tabular-service", "vision-service", "nlp-service")


def unavailable(reason: str) -> None:
    """Skip, or fail when the e2e tests are required (tests/e2e/conftest.py's rule)."""
    if REQUIRE:
        pytest.fail(f"{reason} (MODELGATE_REQUIRE_E2E=1, so this fails instead of skipping)")
    pytest.skip(reason)


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def swarm_state() -> tuple[str, bool]:
    """This daemon's swarm membership ("inactive", "active", ...) and whether it is a manager."""
    out = docker("info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}").stdout.split()
    return out[0], out[1] == "true"


def converged(replicas: str) -> bool:
    """`docker service ls`'s "2/2" (or "1/1 (max 1 per node)"): as many running as wanted."""
    running, _, wanted = replicas.split()[0].partition("/")
    return running == wanted


@dataclass
class WrkResult:
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: dict[str, int]
    output: str

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    @classmethod
    def parse(cls, output: str) -> WrkResult:
        total = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", output)
        assert total, f"no summary in wrk's output:\n{output}"
        seconds = float(total[2]) * {"ms": 0.001, "s": 1, "m": 60}[total[3]]
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
        sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
        kinds = ("connect", "read", "write", "timeout")
        socket_errors = dict(zip(kinds, map(int, sockets.groups()), strict=True)) if sockets else {}
        return cls(int(total[1]), seconds, int(non_2xx[1]) if non_2xx else 0, socket_errors, output)


@dataclass
class SwarmStack:
    name: str
    port: int
    env: dict[str, str]
    joined_swarm: bool = False
    # Networks that existed before: leaving a swarm keeps the docker_gwbridge network it made.
    networks_before: set[str] = field(default_factory=set)
    api_key: str = ""
    log: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- setting up and tearing down ------------------------------------------------------------------

    @classmethod
    def open(cls) -> SwarmStack:
        if shutil.which("docker") is None:
            unavailable("docker is not installed (scripts/docker/setup_docker.sh installs it)")
        if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
            unavailable("no Docker daemon answers `docker info` (make docker-setup starts one)")
        if shutil.which("wrk") is None:
            unavailable("wrk is not installed (apt-get install wrk): it loads the rolling update")
        env = stack_file.deploy_environment()
        images = [f"modelgate/{image}:latest" for image in OUR_IMAGES]
        images.append(env.get("MODELGATE_REDIS_IMAGE") or "redis:7-bookworm")
        missing = [i for i in images if docker("image", "inspect", i, check=False).returncode != 0]
        if missing:
            unavailable(f"images not built: {', '.join(missing)} (make images, or make images-offline)")
        state, manager = swarm_state()
        if state == "active" and not manager:
            unavailable("this Docker is a swarm worker: the test deploys a stack, which needs a manager")
        if state not in ("active", "inactive"):
            unavailable(f"this Docker's swarm state is {state!r}: neither in a swarm nor out of one")

        port = free_port()
        env.update(
            REDIS_PASSWORD=secrets.token_hex(24),
            GATEWAY_PORT=str(port),
            # What works on this machine (docs/swarm.md): the ingress routing mesh needs IPVS in the
            # kernel, which this one lacks; host mode binds the port where the gateway task runs.
            GATEWAY_PUBLISH_MODE="host",
            GATEWAY_UPDATE_ORDER="stop-first",
            NLP_REPLICAS="2",
            MODEL_REPOSITORY_HOST=str(REPO / "models"),
            # Shorter stops than the defaults (nothing long is in flight), Docker's grace 5 s above.
            GRACEFUL_TIMEOUT="15",
            STOP_GRACE_PERIOD="20s",
        )
        swarm = cls(name=f"mgswarm{uuid.uuid4().hex[:8]}", port=port, env=env)
        swarm.networks_before = set(docker("network", "ls", "--format", "{{.Name}}").stdout.split())
        if state == "inactive":
            swarm.log.append("docker swarm init")
            docker(
                "swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", f"127.0.0.1:{free_port()}"
            )
            swarm.joined_swarm = True
        try:
            stack_file.deploy(swarm.name, env=env)
            swarm.wait_converged(timeout=UP_TIMEOUT)
            swarm.api_key = swarm.create_key()
        except BaseException:
            swarm.close()
            raise
        return swarm

    def close(self) -> None:
        """Remove the stack and what it made; leave the swarm if open() joined it."""
        try:
            if self.leftovers()["services"]:
                docker("stack", "rm", self.name, check=False)
                self.wait_gone(timeout=120)
            for volume in self.leftovers()["volumes"]:
                docker("volume", "rm", "-f", volume, check=False)
        finally:
            if self.joined_swarm:
                docker("swarm", "leave", "--force", check=False)
                self.joined_swarm = False
                if "docker_gwbridge" not in self.networks_before:
                    docker("network", "rm", "docker_gwbridge", check=False)

    def leftovers(self) -> dict[str, list[str]]:
        """Services, containers, networks and volumes still labelled with this stack."""
        label = f"label=com.docker.stack.namespace={self.name}"
        listings = {
            "services": ["service", "ls", "-q", "--filter", label],
            "containers": ["ps", "-aq", "--filter", label],
            "networks": ["network", "ls", "-q", "--filter", label],
            "volumes": ["volume", "ls", "-q", "--filter", label],
        }
        if swarm_state()[0] != "active":
            listings.pop("services")  # no swarm, no services (and `service ls` would fail)
        found = {kind: docker(*cmd).stdout.split() for kind, cmd in listings.items()}
        return {"services": [], **found}

    def wait_gone(self, timeout: float) -> None:
        """Poll until the stack's services, containers and networks are gone (`stack rm` returns at once)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = self.leftovers()
            if not (left["services"] or left["containers"] or left["networks"]):
                return
            time.sleep(1)

    def stack_rm(self) -> None:
        """`docker stack rm`, and wait for what it removes in the background (tasks, networks)."""
        docker("stack", "rm", self.name)
        self.wait_gone(timeout=120)

    def remove_volumes(self) -> None:
        for volume in self.leftovers()["volumes"]:
            docker("volume", "rm", "-f", volume)

    def update(self, name: str, timeout: float = 420) -> tuple[subprocess.CompletedProcess[str], str]:
        """`docker service update --force`: replace every task by the service's update_config. Returns
        once swarm says the update is over (the CLI returns when the tasks run, before update_config's
        `monitor` window has passed): the CLI's answer and the final UpdateStatus state."""
        deadline = time.monotonic() + timeout
        result = docker(
            "service", "update", "--force", "--detach=false", "--quiet", self.service(name),
            check=False, timeout=timeout,
        )  # fmt: skip
        state = ""
        while time.monotonic() < deadline:
            status = self.inspect_service(name).get("UpdateStatus")
            state = str(status.get("State", "")) if isinstance(status, dict) else ""
            if state in ("completed", "paused", "rollback_completed", "rollback_paused"):
                break
            time.sleep(1)
        return result, state

    # --- what the tests look at -----------------------------------------------------------------------

    def service(self, name: str) -> str:
        return f"{self.name}_{name}"

    def inspect_service(self, name: str) -> dict[str, object]:
        return json.loads(docker("service", "inspect", self.service(name)).stdout)[0]  # type: ignore[no-any-return]

    def running_tasks(self, name: str) -> list[str]:
        out = docker(
            "service", "ps", self.service(name), "--filter", "desired-state=running",
            "--format", "{{.ID}} {{.CurrentState}}",
        ).stdout  # fmt: skip
        return [line.split()[0] for line in out.splitlines() if line.split()[1:2] == ["Running"]]

    def containers(self, name: str) -> list[str]:
        """The running containers of a service (one per task)."""
        label = f"label=com.docker.swarm.service.name={self.service(name)}"
        return docker("ps", "-q", "--filter", label, "--filter", "status=running").stdout.split()

    def replicas(self) -> dict[str, str]:
        out = docker(
            "service", "ls", "--filter", f"label=com.docker.stack.namespace={self.name}",
            "--format", "{{.Name}} {{.Replicas}}",
        ).stdout  # fmt: skip
        return dict(line.split(None, 1) for line in out.splitlines() if line.strip())

    def wait_converged(self, timeout: float) -> None:
        """Every service at its replica count (a task counts once healthy) and the gateway ready with
        every component ready."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            replicas = self.replicas()
            if len(replicas) == 5 and all(converged(r) for r in replicas.values()):
                try:
                    ready = httpx.get(f"{self.base_url}/health/ready", timeout=3)
                    last = ready.text
                    if ready.status_code == 200 and ready.json().get("status") == "ready":
                        return
                except httpx.HTTPError as exc:
                    last = repr(exc)
            time.sleep(2)
        tasks = docker("stack", "ps", self.name, "--no-trunc", check=False).stdout
        raise AssertionError(
            f"stack {self.name} not ready after {timeout}s: {self.replicas()} {last}\n{tasks}"
        )

    def create_key(self) -> str:
        """A key made the documented way, in a gateway container; rate limits out of the way of the load."""
        (gateway,) = self.containers("gateway")
        created = docker(
            "exec", gateway, "python", "-m", "gateway.keys", "create", "--name", "swarm-e2e",
            "--scopes", "nlp", "--rate", "100000", "--burst", "100000",
        )  # fmt: skip
        keys = [token for token in created.stdout.split() if token.startswith("mg_")]
        assert len(keys) == 1, f"no key in: {created.stdout!r} {created.stderr!r}"
        return keys[0]

    @staticmethod
    def now() -> str:
        """A `docker logs --since` value for this moment, to the microsecond."""
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def requests_served(self, container: str, since: str, needle: str) -> int:
        """Lines of a container's JSON access log since `since` that hold `needle`."""
        logs = docker("logs", "--since", since, container)
        return sum(needle in line for line in (logs.stdout + logs.stderr).splitlines())


class Wrk:
    """wrk in the background, POSTing one JSON body with the key, until stopped (SIGINT: it prints its
    summary on the way out)."""

    def __init__(self, url: str, body: str, api_key: str, script_dir: Path, connections: int = 8) -> None:
        script = script_dir / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(body)}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["X-API-Key"] = "{api_key}"\n'
        )
        self.output = script_dir / "wrk.out"
        cmd = ["wrk", "-t2", f"-c{connections}", "-d600s", "--timeout", "10s", "-s", str(script), url]
        with self.output.open("w") as sink:
            self.process = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)

    def stop(self) -> WrkResult:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return WrkResult.parse(self.output.read_text())
