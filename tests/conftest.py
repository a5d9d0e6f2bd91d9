"""Fixtures for tests that cross processes: a real Redis server and the real four-process stack."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
# The tests' own helper modules (polling, otlp_receiver), importable from every test folder.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from devstack import LocalStack, copy_repository, free_port, running_stack  # noqa: E402

ASSETS = Path(__file__).resolve().parent / "assets"


def start_redis(port: int, workdir: Path, persist: bool = False) -> subprocess.Popen[bytes]:
    """Start a real redis-server of our own on `port` and wait until it answers."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run scripts/ensure_test_services.sh (make test does)")
    persistence = ["--appendonly", "yes"] if persist else ["--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), *persistence],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            if client.ping():
                return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.terminate()
    pytest.fail("redis-server did not start")


@pytest.fixture(scope="session")
def redis_starter() -> Callable[[int, Path, bool], subprocess.Popen[bytes]]:
    """`start_redis` for tests that need to stop and restart their own Redis."""
    return start_redis


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server of our own on a free port, stopped at the end (never someone else's)."""
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The real gateway and three model services under Gunicorn on free local ports, serving a
    model repository of their own (the built-in models; tests add and remove others in it)."""
    built = REPO / "models"
    if not (built / "iris" / "1").is_dir():
        pytest.fail("models/ has no built-in models: run `make models` (make test does)")
    repository = copy_repository(built, tmp_path_factory.mktemp("repository") / "models")
    with running_stack(repository=repository, extra_env={"MODEL_POLL_SECONDS": "0.5"}) as local_stack:
        yield local_stack


@pytest.fixture(scope="session")
def key_factory(stack: LocalStack) -> Callable[[str, str], str]:
    """`key_factory(name, scopes)` makes a key for the running stack."""
    return lambda name, scopes: stack.create_key(name, scopes)


@pytest.fixture(scope="session")
def api_key(stack: LocalStack) -> str:
    return stack.create_key("integration", "*")


@pytest.fixture
def gateway(stack: LocalStack, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url("gateway"), headers={"X-API-Key": api_key}, timeout=60) as client:
        yield client
