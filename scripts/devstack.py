"""Run the whole stack as local processes: three model services and the gateway, under Gunicorn.

`make run` uses this (ports 8000-8003, keys in var/api_keys.json, no Redis or Docker needed), and so do
the integration tests (free ports, a temporary folder). However the launcher ends (Ctrl-C, SIGTERM,
SIGHUP when its terminal closes, even SIGKILL), no process it started outlives it; ports already taken
are named, with the process holding them, before anything starts.

    python scripts/devstack.py [--port 8000] [--workers 1] [--run-dir var]
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from modelgate_core.repository.control import STARTING, Control

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
    # name -> the write end of its lifeline pipe (see `start`).
    _lifelines: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    # service name -> the control directory its workers share (see `start`), and how many they are.
    _controls: dict[str, tuple[Control, int]] = field(default_factory=dict, init=False, repr=False)

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
            # Traffic set by admin calls (canary, shadow, default version): kept across restarts.
            "MODEL_TRAFFIC_DIR": str(self.run_dir / f"traffic-{name}"),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        env.update(self.extra_env)
        return env

    def start(self, name: str) -> None:
        """Start one process (its log goes to run_dir/<name>.log)."""
        folder, app = SERVICES[name]
        # Its lifeline: the read end of a pipe whose write end only this process holds (not inherited
        # by anything it starts). The Gunicorn master stops when the read sees EOF, so it goes when we
        # go, even when we are SIGKILLed and cannot stop it (see gunicorn_conf.watch_launcher).
        env = self.env_for(name)
        if name != "gateway":
            # A fresh one per start, as Gunicorn would make, but known here: `wait_ready` reads the
            # workers' reports in it.
            control = Control(Path(tempfile.mkdtemp(dir=self.run_dir, prefix=f"control-{name}-")))
            self._controls[name] = (control, int(env["WEB_CONCURRENCY"]))
            env["MODEL_CONTROL_DIR"] = str(control.directory)
        lifeline, keep = os.pipe()
        try:
            with open(self.run_dir / f"{name}.log", "ab") as log:
                self.processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "gunicorn", "-c", str(REPO / folder / "gunicorn.conf.py"), app],
                    cwd=REPO,
                    env={**env, LIFELINE_ENV: str(lifeline)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(lifeline,),
                    start_new_session=True,  # its own process group, so stopping it takes its workers too
                )
        except BaseException:
            os.close(keep)
            raise
        finally:
            os.close(lifeline)
        self._lifelines[name] = keep

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Stop one process and its workers; SIGKILL if it does not go within `timeout`."""
        self._stop([name], sig, timeout)

    def stop_all(self, timeout: float = 30, hurry: Callable[[], bool] | None = None) -> None:
        """Stop every process and its workers, all at once: SIGTERM, then SIGKILL to what is left
        after `timeout`, or as soon as `hurry()` says so."""
        self._stop(list(reversed(self.processes)), signal.SIGTERM, timeout, hurry)

    def _stop(
        self, names: list[str], sig: int, timeout: float, hurry: Callable[[], bool] | None = None
    ) -> None:
        procs = {name: self.processes.pop(name) for name in names if name in self.processes}
        for proc in procs.values():
            if not _exited(proc):
                _signal_group(proc, sig)
        deadline = time.monotonic() + timeout
        while not all(_exited(p) for p in procs.values()):
            if time.monotonic() > deadline or (hurry is not None and hurry()):
                break
            time.sleep(0.1)
        for name, proc in procs.items():
            # A master not yet reaped keeps its process group's ID from being reused, so this kills
            # only its own: itself when it did not go in time, and any worker it left behind.
            if proc.returncode is None:
                _signal_group(proc, signal.SIGKILL)
            proc.wait()
            keep = self._lifelines.pop(name, None)
            if keep is not None:
                os.close(keep)
            control, _ = self._controls.pop(name, (None, 0))
            if control is not None:
                shutil.rmtree(control.directory, ignore_errors=True)

    def create_key(self, name: str, scopes: str = "*") -> str:
        """Make a key with the real command line (`python -m gateway.keys create`), in the key store the
        gateway of this stack reads."""
        # Not a worker: its metrics must not land among the gateway's (nor need that folder to exist).
        env = {k: v for k, v in self.env_for("gateway").items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        result = subprocess.run(
            [sys.executable, "-m", "gateway.keys", "create", "--name", name, "--scopes", scopes],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        )
        return result.stdout.strip()

    def start_all(self, cancelled: Callable[[], bool] | None = None) -> None:
        for name in SERVICES:
            if cancelled is not None and cancelled():
                return
            self.start(name)

    def wait_ready(
        self, name: str = "gateway", timeout: float = 180, cancelled: Callable[[], bool] | None = None
    ) -> None:
        """Wait until `name` answers 200 on /health/ready with every component ready and, for a
        service, every one of its workers has loaded its models (readiness is one worker's answer), or
        `cancelled()` is true. (The gateway is ready as soon as one service is; "degraded" names the
        others.)"""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if cancelled is not None and cancelled():
                return
            for proc_name, proc in self.processes.items():
                code = _exit_code(proc)
                if code is not None:
                    raise RuntimeError(f"{proc_name} exited with {code}; see {self.run_dir}/{proc_name}.log")
            try:
                with urllib.request.urlopen(self.url(name) + "/health/ready", timeout=2) as resp:
                    last = resp.read().decode(errors="replace")
                    if resp.status == 200 and json.loads(last).get("status") == "ready":
                        starting = self._workers_starting(name)
                        if starting == 0:
                            return
                        last = f"ready, but {starting} of its workers are still starting"
            except urllib.error.HTTPError as exc:
                last = exc.read().decode(errors="replace")
            except OSError as exc:
                last = str(exc)
            time.sleep(0.25)
        raise TimeoutError(f"{name} not ready after {timeout:.0f}s: {last}")

    def control(self, name: str) -> Control:
        """The control directory the workers of service `name` share, since its last start."""
        return self._controls[name][0]

    def _workers_starting(self, name: str) -> int:
        """How many of the service's workers have not finished their first pass over the repository
        (0 for the gateway, which has none)."""
        if name not in self._controls:
            return 0
        control, workers = self._controls[name]
        done = [r for r in control.workers().values() if r["generation"] != STARTING]
        return max(0, workers - len(done))


# Tells a Gunicorn master which inherited fd is its lifeline (read by modelgate_core.gunicorn_conf).
LIFELINE_ENV = "MODELGATE_PARENT_PIPE_FD"


def _exit_code(proc: subprocess.Popen[bytes]) -> int | None:
    """`proc`'s exit code (negative: the signal that killed it), None while it runs; it is not reaped,
    so its PID, and the ID of its process group, cannot be reused meanwhile."""
    if proc.returncode is not None:
        return proc.returncode
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return proc.wait()  # reaped by someone else (Popen.poll elsewhere)
    if info is None:
        return None
    return int(info.si_status) if info.si_code == os.CLD_EXITED else -int(info.si_status)


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    return _exit_code(proc) is not None


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(proc.pid, sig)


def port_holders(port: int) -> list[str]:
    """The processes listening on TCP `port`, as "pid N (command)", from /proc (Linux; empty where
    /proc is missing or the holder belongs to someone we may not look at)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            # local_address is HEX_IP:HEX_PORT, state 0A is LISTEN, field 9 the socket's inode.
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    holders: list[str] = []
    if not inodes:
        return holders
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                raw = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
                command = " ".join(raw.decode(errors="replace").split())
                holders.append(f"pid {proc.name} ({command[:200]})")
        except OSError:
            continue  # gone meanwhile, or not ours to look at
    return holders


def busy_ports(ports: Mapping[str, int]) -> list[str]:
    """One line for each of `ports` that cannot be bound on 127.0.0.1, naming who holds it."""
    problems = []
    for name, port in ports.items():
        with socket.socket() as sock:
            # As Gunicorn binds: a port left in TIME_WAIT by an earlier run is free to use.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                continue
            except OSError as exc:
                reason = exc.strerror or str(exc)
        holders = port_holders(port)
        who = f"held by {', '.join(holders)}" if holders else "its holder could not be found"
        problems.append(f"port {port} (for {name}) is not free: {reason}; {who}")
    return problems


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP (the terminal closed) as requests: the first asks for an orderly
    stop; later ones never abort it (make forwards a signal of its own, so two in a row are usual),
    but one that comes `grace` seconds or more after the first asks to kill what is left at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, grace: float = 3.0) -> None:
        self.grace = grace
        self.first: float | None = None
        self.kill = False

    def install(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, self._received)

    def _received(self, signum: int, frame: FrameType | None) -> None:
        # Only flags: raising here could land anywhere, say between a child's fork and its bookkeeping.
        now = time.monotonic()
        if self.first is None:
            self.first = now
        elif now - self.first >= self.grace:
            self.kill = True

    def stopping(self) -> bool:
        return self.first is not None

    def hurry(self) -> bool:
        return self.kill


def say(text: str, *, error: bool = False) -> None:
    """Print, but never fail: after SIGHUP the terminal is gone and writing to it raises, which must
    not cut the cleanup short."""
    stream = sys.stderr if error else sys.stdout
    try:
        print(text, file=stream, flush=True)
    except OSError:
        devnull = open(os.devnull, "w")  # noqa: SIM115 - stands in for the stream until exit
        if error:
            sys.stderr = devnull
        else:
            sys.stdout = devnull


# The compose stack (the e2e tests and bench/workers.py drive it; this module only finds the tools).
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
    parser.add_argument("--run-dir", type=Path, default=REPO / "var", help="logs and keys (default: var/)")
    args = parser.parse_args()
    ports = {"gateway": args.port, "tabular": args.port + 1, "vision": args.port + 2, "nlp": args.port + 3}
    run_dir: Path = args.run_dir.resolve()

    busy = busy_ports(ports)
    if busy:
        for line in busy:
            say(f"devstack: {line}", error=True)
        say(
            "devstack: nothing started. Stop what holds those ports (an earlier `make run`?) or pick "
            "other ones: --port N or GATEWAY_PORT=N uses N to N+3.",
            error=True,
        )
        return 1

    stops = StopSignals()
    stops.install()
    run_dir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(
        ports=ports,
        run_dir=run_dir,
        workers=args.workers,
        extra_env={"API_KEYS_FILE": str(run_dir / "api_keys.json")},
    )
    say(f"Starting ModelGate: gateway on :{ports['gateway']}, services on :{ports['tabular']}-{ports['nlp']}")
    say(f"Logs: {run_dir}/<name>.log. Waiting for the models to load...")
    try:
        stack.start_all(cancelled=stops.stopping)
        try:
            stack.wait_ready(cancelled=stops.stopping)
        except (RuntimeError, TimeoutError) as exc:
            say(f"{exc}; stopping the rest", error=True)
            return 1
        if not stops.stopping():
            gateway = stack.url("gateway")
            say(
                f"\nModelGate is ready at {gateway}  (docs: {gateway}/docs)\n"
                f"Make a key:  make key NAME=me SCOPES=tabular,vision,nlp\n"
                f"Try it:      curl -H 'X-API-Key: <key>' -H 'content-type: application/json' "
                f'-d \'{{"sepal_length":5.1,"sepal_width":3.5,"petal_length":1.4,"petal_width":0.2}}\' '
                f"{gateway}/v1/tabular/iris\n"
                "Press Ctrl-C to stop."
            )
        while not stops.stopping():
            dead = [name for name, proc in stack.processes.items() if _exited(proc)]
            if dead:
                say(f"{', '.join(dead)} exited; stopping the rest (see {run_dir}/<name>.log)", error=True)
                return 1
            time.sleep(0.5)
        say("\nStopping (again, after a few seconds, to kill at once)...")
        return 0
    finally:
        stack.stop_all(hurry=stops.hurry)
        if stops.stopping():
            say("Stopped.")


if __name__ == "__main__":
    raise SystemExit(main())
