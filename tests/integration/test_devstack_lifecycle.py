"""`scripts/devstack.py`, what `make run` runs: however the launcher ends, no server outlives it, and
ports already taken are named before anything starts.

The launcher runs on a pseudo-terminal of its own, as under `make run`, so "the terminal closes" is
the real thing: the test closes the terminal's master side and the kernel sends the SIGHUP.
"""

from __future__ import annotations

import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from devstack import StopSignals  # type: ignore[import-not-found]

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEVSTACK = REPO / "scripts" / "devstack.py"
# Generous for a graceful stop on 2 busy cores (no request is in flight), tiny next to "never".
STOP_WITHIN = 60.0
# Makes the launcher the leader of a new session whose controlling terminal is the pty on its stdin
# (opening a terminal makes it a session leader's controlling one), then runs it in this same process.
ON_A_TERMINAL = (
    "import os, sys; os.setsid(); os.close(os.open(os.ttyname(0), os.O_RDWR)); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_base_port() -> int:
    """N with N..N+3 free, below the ephemeral range other tests' free ports come from."""
    for base in random.sample(range(20000, 30000, 4), 200):
        if all(bindable(port) for port in range(base, base + 4)):
            return base
    pytest.fail("no four free consecutive ports in 20000-30000")


def stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]; None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()


def all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def alive(tracked: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """Those of `tracked` still running. (PID, start time) pairs, so that a reused PID is not taken
    for one of them; a zombie counts as ended (it only waits for its parent to reap it)."""
    left = set()
    for pid, started in tracked:
        fields = stat(pid)
        if fields is not None and fields[19] == started and fields[0] not in ("Z", "X"):
            left.add((pid, started))
    return left


def stack_processes(launcher: int) -> set[tuple[int, str]]:
    """The Gunicorn masters the launcher started (its children) and every process of their groups."""
    fields = {pid: f for pid in all_pids() if (f := stat(pid)) is not None}
    masters = {pid for pid, f in fields.items() if int(f[1]) == launcher}
    assert len(masters) == 4, masters
    groups = {master: {pid for pid, f in fields.items() if int(f[2]) == master} for master in masters}
    # Each group holds its master and at least its one worker: the tracking does see them.
    assert all(len(members) >= 2 for members in groups.values()), groups
    return {(pid, fields[pid][19]) for members in groups.values() for pid in members}


def poll_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class Terminal:
    """The master side of the launcher's pty: what it printed, read without blocking."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd
        self.output = b""

    def read(self, timeout: float = 0.0) -> None:
        if self.fd is None:
            return
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                self.output += os.read(self.fd, 65536)
            except OSError:  # EIO: every slave side is closed, the launcher is gone
                self.close()

    def wait_for(self, text: bytes, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert proc.poll() is None, self.output.decode(errors="replace")
            assert time.monotonic() < deadline, self.output.decode(errors="replace")
            self.read(0.25)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@contextmanager
def launcher(
    base: int, run_dir: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Terminal, set[tuple[int, str]]]]:
    """`devstack.py --port base` on a terminal of its own, once ready, with the processes of its stack;
    whatever happens, nothing of it is left afterwards."""
    master, slave = os.openpty()
    command = [sys.executable, DEVSTACK, "--port", str(base), "--workers", "1", "--run-dir", run_dir]
    proc = subprocess.Popen(
        [sys.executable, "-c", ON_A_TERMINAL, *map(str, command)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=REPO,
    )
    os.close(slave)
    terminal = Terminal(master)
    tracked: set[tuple[int, str]] = set()
    try:
        terminal.wait_for(b"ModelGate is ready at", proc, timeout=240)
        tracked = stack_processes(proc.pid)
        yield proc, terminal, tracked
    finally:
        terminal.close()
        for pid, _ in alive(tracked):  # only after a failure: leave no server to the next test
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def sighup(proc: subprocess.Popen[bytes], terminal: Terminal, run_dir: Path) -> None:
    terminal.close()  # the terminal window closes: SIGHUP, and the launcher's output has nowhere to go


def sigterm_twice(proc: subprocess.Popen[bytes], terminal: Terminal, run_dir: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    # The second one while the first one's cleanup is under way (as when make forwards one).
    assert poll_until(lambda: "Handling signal: term" in (run_dir / "gateway.log").read_text(), STOP_WITHIN)
    proc.send_signal(signal.SIGTERM)


def sigkill(proc: subprocess.Popen[bytes], terminal: Terminal, run_dir: Path) -> None:
    proc.kill()


@pytest.mark.parametrize(
    ("end", "returncode"),
    [
        pytest.param(sighup, 0, id="terminal-closed"),
        pytest.param(sigterm_twice, 0, id="sigterm-twice"),
        pytest.param(sigkill, -signal.SIGKILL, id="sigkill"),
    ],
)
def test_no_server_outlives_the_launcher(
    tmp_path: Path, end: Callable[[subprocess.Popen[bytes], Terminal, Path], None], returncode: int
) -> None:
    base = free_base_port()
    with launcher(base, tmp_path) as (proc, terminal, tracked):
        end(proc, terminal, tmp_path)
        deadline = time.monotonic() + STOP_WITHIN
        while proc.poll() is None and time.monotonic() < deadline:
            terminal.read(0.1)  # keep its output flowing, so no write of the launcher blocks
        assert proc.poll() == returncode, terminal.output.decode(errors="replace")
        assert poll_until(lambda: not alive(tracked), STOP_WITHIN), alive(tracked)
        assert poll_until(lambda: all(bindable(port) for port in range(base, base + 4)), STOP_WITHIN)


def test_taken_ports_are_named_and_nothing_starts(tmp_path: Path) -> None:
    base = free_base_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", base + 2))
        holder.listen()
        result = subprocess.run(
            [sys.executable, DEVSTACK, "--port", str(base), "--run-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
    assert result.returncode == 1, result.stderr
    assert f"port {base + 2} (for vision) is not free" in result.stderr
    assert f"held by pid {os.getpid()} " in result.stderr  # found through /proc: this test holds it
    assert f"port {base} " not in result.stderr and f"port {base + 1} " not in result.stderr
    assert list(tmp_path.glob("*.log")) == []  # no process was started


def test_later_signals_never_abort_the_stop_and_a_late_one_hurries_it() -> None:
    previous = {sig: signal.getsignal(sig) for sig in StopSignals.SIGNALS}
    stops = StopSignals(grace=3600)
    try:
        stops.install()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # make's forwarded one, at once: still the orderly stop
        assert stops.stopping() and not stops.hurry()
        stops.grace = 0  # as if the grace had passed since the first
        os.kill(os.getpid(), signal.SIGHUP)
        assert stops.hurry()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
