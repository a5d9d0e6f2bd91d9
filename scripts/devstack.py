"""Run the whole stack as local processes: three model services and the gateway, under Gunicorn.

`make run` uses this (ports 8000-8003, keys in var/api_keys.json, no Redis or Docker needed), and so do
the integration tests (free ports, a temporary folder). Ctrl-C stops everything it started.

    python scripts/devstack.py [--port 8000] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SERVICES = {  # name -> (folder, app module)
    "tabular": ("tabular-service", "tabular_service.app:app"),
    "vision": ("vision-service", "vision_service.app:app"),
    "nlp": ("nlp-service", "nlp_service.app:app"),
    "gateway": ("gateway", "gateway.app:app"),
}


def copy_repository(source: Path, dest: Path) -> Path:
    """A model repository of one's own (tests add and remove models in it): hard links to
    `source`'s files where the filesystem allows, copies otherwise."""

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, dest, copy_function=link_or_copy, dirs_exist_ok=True)
    return dest


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalStack:
    """The four processes, their ports, environment and logs."""

    ports: dict[str, int]
    run_dir: Path
    # The model repository the services serve (`make models` fills `models/`).
    repository: Path = REPO / "models"
    workers: int = 1
    extra_env: Mapping[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def env_for(self, name: str) -> dict[str, str]:
        folder, _ = SERVICES[name]
        env = {
            **os.environ,
            "SERVICE_NAME": "gateway" if name == "gateway" else folder,
            "BIND": f"127.0.0.1:{self.ports[name]}",
            "WEB_CONCURRENCY": str(self.workers),
            "MODEL_REPOSITORY": str(self.repository),
            "PROMETHEUS_MULTIPROC_DIR": str(self.run_dir / f"metrics-{name}"),
            "TABULAR_URL": self.url("tabular"),
            "VISION_URL": self.url("vision"),
            "NLP_URL": self.url("nlp"),
            "API_KEYS_FILE": str(self.run_dir / "api_keys.json"),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        env.update(self.extra_env)
        return env

    def start(self, name: str) -> None:
        """Start one process (its log goes to run_dir/<name>.log)."""
        folder, app = SERVICES[name]
        log = open(self.run_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(REPO / folder / "gunicorn.conf.py"), app],
            cwd=REPO,
            env=self.env_for(name),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stopping it takes its workers too
        )

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Stop one process and its workers; SIGKILL if it does not go within `timeout`."""
        proc = self.processes.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def create_key(self, name: str, scopes: str = "*") -> str:
        """Make a key with the real command line (`python -m gateway.keys create`), in the key store the
        gateway of this stack reads."""
        result = subprocess.run(
            [sys.executable, "-m", "gateway.keys", "create", "--name", name, "--scopes", scopes],
            env=self.env_for("gateway"),
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        )
        return result.stdout.strip()

    def start_all(self) -> None:
        for name in SERVICES:
            self.start(name)

    def stop_all(self) -> None:
        for name in reversed(list(self.processes)):
            self.stop(name)

    def wait_ready(self, name: str = "gateway", timeout: float = 180) -> None:
        """Wait until `name` answers 200 on /health/ready (the gateway's means every service is)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for proc_name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{proc_name} exited with {proc.returncode}; see {self.run_dir}/{proc_name}.log"
                    )
            try:
                with urllib.request.urlopen(self.url(name) + "/health/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                last = exc.read().decode(errors="replace")
            except OSError as exc:
                last = str(exc)
            time.sleep(0.25)
        raise TimeoutError(f"{name} not ready after {timeout:.0f}s: {last}")


# The compose stack (the e2e tests and bench_workers drive it; this module only finds the tools).
OFFLINE_ENV = REPO / "build" / "docker-offline.env"  # written by `make images-offline`


def compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin) or a v2 `docker-compose`; None when there is neither."""
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        probe = subprocess.run([*cmd, "version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0 and "v1." not in probe.stdout:
            return cmd
    return None


def compose_env() -> dict[str, str]:
    """This environment, plus, where it does not set them, the offline image settings that
    `make images-offline` recorded (base and redis images, wheelhouse)."""
    env = dict(os.environ)
    if OFFLINE_ENV.is_file():
        for line in OFFLINE_ENV.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                name, value = line.split("=", 1)
                env.setdefault(name.strip(), value.strip())
    return env


@contextmanager
def running_stack(
    ports: dict[str, int] | None = None,
    run_dir: Path | None = None,
    workers: int = 1,
    extra_env: Mapping[str, str] | None = None,
    repository: Path | None = None,
) -> Iterator[LocalStack]:
    """Start all four processes, wait until the gateway is ready, stop them all on exit."""
    with tempfile.TemporaryDirectory(prefix="modelgate-") as tmp:
        stack = LocalStack(
            ports=ports or {name: free_port() for name in SERVICES},
            run_dir=run_dir or Path(tmp),
            workers=workers,
            extra_env=extra_env or {},
            repository=repository or REPO / "models",
        )
        stack.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            stack.start_all()
            stack.wait_ready()
            yield stack
        finally:
            stack.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", "8000")))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "1")))
    args = parser.parse_args()
    ports = {"gateway": args.port, "tabular": args.port + 1, "vision": args.port + 2, "nlp": args.port + 3}
    run_dir = REPO / "var"
    print(
        f"Starting ModelGate: gateway on :{ports['gateway']}, services on :{ports['tabular']}-{ports['nlp']}"
    )
    print(f"Logs: {run_dir}/<name>.log. Waiting for the models to load...", flush=True)
    # SIGTERM (from a supervisor) stops everything just like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with running_stack(
            ports, run_dir, args.workers, {"API_KEYS_FILE": str(run_dir / "api_keys.json")}
        ) as stack:
            gateway = stack.url("gateway")
            print(
                f"\nModelGate is ready at {gateway}  (docs: {gateway}/docs)\n"
                f"Make a key:  make key NAME=me SCOPES=tabular,vision,nlp\n"
                f"Try it:      curl -H 'X-API-Key: <key>' -H 'content-type: application/json' "
                f'-d \'{{"sepal_length":5.1,"sepal_width":3.5,"petal_length":1.4,"petal_width":0.2}}\' '
                f"{gateway}/v1/tabular/iris\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )
            while all(p.poll() is None for p in stack.processes.values()):
                time.sleep(1)
            dead = [n for n, p in stack.processes.items() if p.poll() is not None]
            print(f"{', '.join(dead)} exited; stopping the rest (see {run_dir}/<name>.log)", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("\nStopped.")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
