"""The compose stack for the end-to-end tests: `docker compose up -d --wait` under a unique project name,
the gateway on a free port of 127.0.0.1, always torn down (`down -v`) at the end. The `observability`
profile is on (Prometheus, its API on another free port, scraping every second; test_observability.py).
One stack for every module that uses it: `test_down_removes_everything` runs after the last of them.

No Docker daemon (or no Compose v2, or images not built): the tests skip with the reason, unless
MODELGATE_REQUIRE_E2E=1 (CI, `make test-e2e`), where they fail instead. The images are not built here
(minutes): `make images` on a normal machine, `make images-offline` without a registry. The offline
image settings that `make images-offline` records in build/docker-offline.env are used when present.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from devstack import compose_command, compose_env, copy_repository, free_port

REPO = Path(__file__).resolve().parents[2]
REQUIRE = os.environ.get("MODELGATE_REQUIRE_E2E") == "1"
UP_TIMEOUT = float(os.environ.get("MODELGATE_E2E_UP_TIMEOUT", "600"))
SERVICES = ("gateway", "tabular-service", "vision-service", "nlp-service", "redis")


def unavailable(reason: str) -> None:
    """Skip, or fail when the e2e tests are required."""
    if REQUIRE:
        pytest.fail(f"{reason} (MODELGATE_REQUIRE_E2E=1, so this fails instead of skipping)")
    pytest.skip(reason)


@dataclass
class ComposeStack:
    """One running compose project and what the tests need to drive it."""

    compose: list[str]
    project: str
    port: int
    env: dict[str, str]
    # This stack's own copy of the model repository (mounted into the services; removed at the end).
    repository: Path
    up_seconds: float = 0.0
    api_key: str = ""
    log: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(
        self, *args: str, check: bool = True, timeout: float = 120, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`docker compose -p <project> <args>` in the repo root."""
        cmd = [*self.compose, "-p", self.project, *args]
        self.log.append(" ".join(cmd))
        result = subprocess.run(
            cmd,
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def container_ids(self, service: str) -> list[str]:
        out = self.run("ps", "-q", "--all", service).stdout
        return [line for line in out.split() if line]

    def inspect(self, container: str) -> dict[str, object]:
        out = subprocess.run(
            ["docker", "inspect", container], capture_output=True, text=True, check=True
        ).stdout
        return json.loads(out)[0]  # type: ignore[no-any-return]

    def health(self, service: str) -> list[str]:
        """Health status of each container of a service ("healthy", "starting", "exited", ...)."""
        statuses = []
        for cid in self.container_ids(service):
            state = self.inspect(cid)["State"]
            assert isinstance(state, dict)
            if state.get("Status") != "running":
                statuses.append(str(state.get("Status")))
            else:
                statuses.append(str(state.get("Health", {}).get("Status", "none")))
        return statuses

    def wait_healthy(self, service: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = self.health(service)
            if statuses and all(s == "healthy" for s in statuses):
                return
            time.sleep(1)
        raise AssertionError(
            f"{service} not healthy after {timeout}s: {self.health(service)}\n{self.logs(service)}"
        )

    def logs(self, *services: str, tail: int = 60) -> str:
        return self.run("logs", "--no-color", f"--tail={tail}", *services, check=False).stdout

    def down(self) -> None:
        self.run("down", "-v", "--remove-orphans", "--timeout", "20", check=False, timeout=300)

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes still labelled with this project."""
        label = f"label=com.docker.compose.project={self.project}"
        found = {}
        for kind, cmd in {
            "containers": ["docker", "ps", "-aq", "--filter", label],
            "networks": ["docker", "network", "ls", "-q", "--filter", label],
            "volumes": ["docker", "volume", "ls", "-q", "--filter", label],
        }.items():
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            found[kind] = out.split()
        return found


def required_images(stack: ComposeStack) -> list[str]:
    """The images compose would build (ours): they must exist, `up --no-build` will not make them."""
    config = json.loads(stack.run("config", "--format", "json").stdout)
    return sorted(s["image"] for s in config["services"].values() if "build" in s and "image" in s)


def image_exists(image: str) -> bool:
    return (
        subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode
        == 0
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The compose stack is shared by the modules that use it (one `up`, minutes): in this directory,
    every test that uses it runs first, then the test that takes it down, then the others (the swarm
    tests: a swarm beside a running compose stack confuses Docker's DNS for the stack's containers).
    Tests elsewhere keep their places."""
    # This directory's `stack` only (tests/conftest.py has a `stack` of its own, the local processes).
    here = Path(__file__).parent
    down = [item for item in items if item.name == "test_down_removes_everything"]
    ours = [item for item in items if item.path.is_relative_to(here) and item not in down]
    users = [item for item in ours if "stack" in getattr(item, "fixturenames", ())]
    block = users + down + [item for item in ours if item not in users]
    if not block:
        return
    first = next(n for n, item in enumerate(items) if item in block)
    rest = [item for item in items if item not in block]
    items[:] = rest[:first] + block + rest[first:]


@pytest.fixture(scope="session")
def stack() -> Iterator[ComposeStack]:
    if shutil.which("docker") is None:
        unavailable("docker is not installed (scripts/docker/setup_docker.sh installs it)")
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        unavailable("no Docker daemon answers `docker info` (make docker-setup starts one)")
    compose = compose_command()
    if compose is None:
        unavailable("Docker Compose v2 is not installed (make docker-setup installs it)")
    assert compose is not None

    env = compose_env()
    project = f"mge2e{uuid.uuid4().hex[:8]}"
    port = free_port()
    env.update(GATEWAY_PORT=str(port), GATEWAY_HOST_IP="127.0.0.1", COMPOSE_PROJECT_NAME=project)
    # COMPOSE_PROFILES rather than `--profile` on `up`: every compose command (ps, stop, down) sees it.
    env.update(COMPOSE_PROFILES="observability", PROMETHEUS_HOST_IP="127.0.0.1")
    env.update(PROMETHEUS_PORT=str(free_port()), PROMETHEUS_SCRAPE_INTERVAL="1s")
    env.update(PROMETHEUS_EVALUATION_INTERVAL="1s", PROMETHEUS_SD_REFRESH_INTERVAL="1s")
    # compose.yaml's Redis refuses to start without a password; this stack (and its volume) is its own.
    env["REDIS_PASSWORD"] = secrets.token_hex(24)
    # Shorter stops (the tests stop and restart containers; nothing long is in flight), keeping Docker's
    # grace period 5 s above Gunicorn's, as compose.yaml documents.
    env.setdefault("GRACEFUL_TIMEOUT", "10")
    env.setdefault("STOP_GRACE_PERIOD", "15s")
    # A repository of this stack's own, so the tests can drop a model in: readable by the containers'
    # uid 1000 (pytest's tmp dirs are private to root), under build/ (git-ignored).
    repository = REPO / "build" / f"e2e-models-{project}"
    copy_repository(REPO / "models", repository)
    for folder in (repository, *[p for p in repository.rglob("*") if p.is_dir()]):
        folder.chmod(0o755)
    env.update(MODEL_REPOSITORY_HOST=str(repository), MODEL_POLL_SECONDS="1")
    stack = ComposeStack(compose=compose, project=project, port=port, env=env, repository=repository)

    missing = [image for image in required_images(stack) if not image_exists(image)]
    if missing:
        unavailable(f"images not built: {', '.join(missing)} (make images, or make images-offline)")

    started = time.monotonic()
    try:
        up = stack.run("up", "-d", "--wait", "--no-build", check=False, timeout=UP_TIMEOUT)
        stack.up_seconds = time.monotonic() - started
        if up.returncode != 0:
            ps = stack.run("ps", "--all", check=False).stdout
            pytest.fail(f"compose up failed:\n{up.stderr}\n{ps}\n{stack.logs(tail=40)}")
        print(f"\n[e2e] project {project}: all containers healthy {stack.up_seconds:.1f}s after `up`")
        yield stack
    finally:
        stack.down()
        shutil.rmtree(stack.repository, ignore_errors=True)


@pytest.fixture(scope="session")
def api_key(stack: ComposeStack) -> str:
    """A key made the documented way: `docker compose exec gateway python -m gateway.keys create`."""
    created = stack.run(
        "exec", "-T", "gateway", "python", "-m", "gateway.keys", "create",
        "--name", "e2e", "--scopes", "tabular,vision,nlp",
    )  # fmt: skip
    keys = [token for token in created.stdout.split() if token.startswith("mg_")]
    assert len(keys) == 1, f"no key in the output: {created.stdout!r} {created.stderr!r}"
    stack.api_key = keys[0]
    return keys[0]


@pytest.fixture(scope="session")
def client(stack: ComposeStack, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, headers={"X-API-Key": api_key}, timeout=30) as http:
        yield http
