"""Gunicorn settings shared by every ModelGate process, read from the environment.

Each service's `gunicorn.conf.py` star-imports this module. Workers are Uvicorn workers; models load
inside each worker after it starts (see `service.create_service_app`), so `TIMEOUT` only has to cover a
worker's own heartbeat, but it is generous in case loading holds the GIL for long stretches.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from modelgate_core.config import CommonSettings
from modelgate_core.logging import logging_config
from modelgate_core.repository.control import Control

bind = os.environ.get("BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_class: Any = "uvicorn_worker.UvicornWorker"  # replaced by a bounded one below where it can be
timeout = int(os.environ.get("TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("KEEPALIVE", "5"))
# Keep-alive from the gateway's pool matters more than protection against slow clients here: only the
# gateway is public and it sits behind these settings too.
backlog = int(os.environ.get("BACKLOG", "2048"))
# Gunicorn's runtime control socket sits at one fixed path per user, so several Gunicorns on one
# machine (our four processes) would fight over it; nothing here uses it.
control_socket_disable = True
logconfig_dict = logging_config(
    os.environ.get("SERVICE_NAME", "modelgate"),
    os.environ.get("LOG_LEVEL", "INFO").upper(),
    os.environ.get("LOG_JSON", "true").lower() not in ("0", "false", "no"),
    float(os.environ.get("LOG_FLUSH_SECONDS") or "0.2"),
)


# The temporary directories this master made (and only those): removed when it exits.
_made_dirs: list[Path] = []


def on_starting(server: Any) -> None:
    """Give the workers an empty Prometheus multiprocess directory (metrics are per process group)
    and a model control directory of their own (how they agree on load/unload calls)."""
    if not os.environ.get("MODEL_CONTROL_DIR"):
        os.environ["MODEL_CONTROL_DIR"] = _make_temporary_dir("modelgate-control-")
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = _make_temporary_dir("modelgate-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    prepare_metrics_dir(Path(path))


def _make_temporary_dir(prefix: str) -> str:
    path = tempfile.mkdtemp(prefix=prefix)
    _made_dirs.append(Path(path))
    return path


def on_exit(server: Any) -> None:
    """Remove the directories `on_starting` made; a directory named by the environment is not ours."""
    if getattr(server, "reexec_pid", 0):
        # A new master (USR2) inherited them through its environment and still uses them.
        return
    while _made_dirs:
        shutil.rmtree(_made_dirs.pop(), ignore_errors=True)


# Set by a launcher (scripts/devstack.py) to an inherited fd: the read end of a pipe whose write end
# only the launcher holds, so reading it sees EOF once the launcher is gone, however it ended.
LIFELINE_ENV = "MODELGATE_PARENT_PIPE_FD"


def when_ready(server: Any) -> None:
    """Stop this master when the launcher that named a lifeline goes (see `watch_launcher`), and serve
    metrics on `METRICS_PORT` when it is set (see `serve_metrics`)."""
    watch_launcher()
    serve_metrics(server.cfg.bind)


def watch_launcher() -> threading.Thread | None:
    """Watch the lifeline `LIFELINE_ENV` names, if any, from a thread: at EOF the master sends itself
    SIGTERM, its usual graceful stop. A SIGKILLed launcher cannot stop its servers itself, and one that
    is gone must not leave them holding their ports.

    Called once signal handlers are in place (`when_ready`), so the SIGTERM is handled, not fatal.
    """
    value = os.environ.pop(LIFELINE_ENV, "")  # not for workers, nor for a re-executed master
    if not value:
        return None
    log = logging.getLogger("modelgate.lifecycle")
    try:
        fd = int(value)
        is_pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
    except (ValueError, OSError):
        is_pipe = False
    if not is_pipe:
        log.warning(
            "not a pipe: the launcher is not watched", extra={"variable": LIFELINE_ENV, "value": value}
        )
        return None
    os.set_inheritable(fd, False)
    master = os.getpid()

    def watch() -> None:
        try:
            while os.read(fd, 4096):
                pass  # the launcher never writes; EOF is the message
        except OSError:
            pass
        log.warning("the launcher is gone: stopping")
        os.kill(master, signal.SIGTERM)

    thread = threading.Thread(target=watch, name="launcher-lifeline", daemon=True)
    thread.start()
    return thread


# The master's metrics server, when it runs one (see `serve_metrics`).
_metrics_servers: list[WSGIServer] = []


def serve_metrics(binds: list[str]) -> WSGIServer | None:
    """Serve every worker's metrics, summed over the process group, on `METRICS_PORT` at the address
    of the first of `binds` (Gunicorn's), from a thread of the master; None when it is not set.

    The master, not a worker: it sees the whole group's sample files, and it is the one process that
    lives as long as the group does. Workers then answer 404 on `/metrics` (`health_router`).
    """
    port = CommonSettings().metrics_port
    if port is None:
        return None
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    address = metrics_address(binds[0] if binds else "")
    httpd, _ = start_http_server(port, addr=address, registry=registry)
    _metrics_servers.append(httpd)
    logging.getLogger("modelgate.lifecycle").info("serving metrics", extra={"address": address, "port": port})
    return httpd


def metrics_address(bind_address: str) -> str:
    """The host of a Gunicorn bind (`host:port`, `[v6]:port`), so the metrics port is reachable from
    where the public one is: every interface for a bare port (as Gunicorn reads one), this machine
    only for a UNIX socket or an inherited fd (a proxy on this machine is the only client there)."""
    if bind_address.startswith(("unix:", "fd://")):
        return "127.0.0.1"
    host, separator, _ = bind_address.rpartition(":")
    return host.strip("[]") if separator and host else "0.0.0.0"


def post_fork(server: Any, worker: Any) -> None:
    """A worker closes its copy of the master's metrics socket, so the port is free once the master
    is gone, even while a worker lingers; and it counts among the workers from now on (a load call
    answered while it is still importing would leave it answering 503 for that model)."""
    for httpd in _metrics_servers:
        httpd.socket.close()
    Control(Path(os.environ["MODEL_CONTROL_DIR"])).announce()


# Left in a metrics directory ModelGate made, so that a later start knows its files are ours to clear.
METRICS_MARKER = ".modelgate-metrics"


def prepare_metrics_dir(path: Path) -> None:
    """Make `path` ready for this process group's metrics without ever deleting what is not ours.

    Stale sample files from an earlier run would be counted again, so they are removed, but only
    from a directory ModelGate made (it holds our marker) or adopts (it is empty or new). A
    directory with other content is used as it is, with a warning.
    """
    path.mkdir(parents=True, exist_ok=True)
    marker = path / METRICS_MARKER
    if marker.is_file():
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
    elif not any(path.iterdir()):
        marker.touch()
    else:
        logging.getLogger("modelgate.lifecycle").warning(
            "PROMETHEUS_MULTIPROC_DIR is not empty and was not made by ModelGate: left as it is",
            extra={"path": str(path)},
        )


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges from the aggregate."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


# Uvicorn's httptools protocol has neither a limit on a request's header block nor a deadline for it:
# a client that sends header lines forever grows the worker's memory without end, and one that sends a
# byte now and then (a slow loris) holds its connection as long as it likes; Gunicorn's own
# `limit_request_*` settings do not reach Uvicorn workers. So the protocol below refuses a header block
# over `MAX_HEADER_BYTES` with 431 and one not complete within `HEADER_TIMEOUT` seconds of its first byte
# (or of the connection) with 408, and closes the connection (tests/chaos/test_slow_clients.py).
MAX_HEADER_BYTES = int(os.environ.get("MAX_HEADER_BYTES", str(64 * 1024)))
HEADER_TIMEOUT = float(os.environ.get("HEADER_TIMEOUT", "10"))
LINGER_SECONDS = 1.0

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn_worker import UvicornWorker
except ImportError:  # no httptools: Uvicorn's h11 protocol, which bounds headers itself (16 KiB)
    pass
else:

    def _refusal(status: int, reason: str, code: str, message: str) -> bytes:
        from modelgate_core.errors import error_body

        body = error_body(status, code, message)
        head = (
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        return head.encode("latin-1") + body

    class BoundedHeadersProtocol(HttpToolsProtocol):
        """Uvicorn's httptools protocol with a size limit and a deadline on each request's headers."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._awaiting_headers = True
            self._header_bytes = 0
            self._header_deadline: asyncio.TimerHandle | None = None
            self._discarding = False  # refused: what still arrives is dropped until the close

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()  # a connection that never sends a byte is cut too

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._discarding:
                return
            super().data_received(data)
            # Still no complete header block after this chunk: it went into headers (counted after
            # parsing, so a chunk that completes the headers and carries body is never counted).
            if self._awaiting_headers and not self.transport.is_closing():
                self._header_bytes += len(data)
                if self._header_bytes > MAX_HEADER_BYTES:
                    self._refuse(
                        431,
                        "Request Header Fields Too Large",
                        "headers_too_large",
                        f"The request's headers exceed {MAX_HEADER_BYTES} bytes",
                    )

        def on_message_begin(self) -> None:
            # A request's first byte: its headers are due within HEADER_TIMEOUT. (Between requests on a
            # kept-alive connection the keep-alive timeout applies instead.)
            super().on_message_begin()
            self._awaiting_headers = True
            self._header_bytes = 0
            if self._header_deadline is None:
                self._arm_header_deadline()

        def on_headers_complete(self) -> None:
            self._awaiting_headers = False
            self._header_bytes = 0
            self._disarm_header_deadline()
            super().on_headers_complete()

        def _arm_header_deadline(self) -> None:
            self._header_deadline = self.loop.call_later(HEADER_TIMEOUT, self._header_deadline_passed)

        def _disarm_header_deadline(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _header_deadline_passed(self) -> None:
            self._header_deadline = None
            if self._awaiting_headers and not self.transport.is_closing():
                self._refuse(
                    408,
                    "Request Timeout",
                    "request_timeout",
                    f"The request's headers did not arrive within {HEADER_TIMEOUT:g} seconds",
                )

        def _refuse(self, status: int, reason: str, code: str, message: str) -> None:
            self._disarm_header_deadline()
            self._discarding = True
            self.transport.write(_refusal(status, reason, code, message))
            # A close with unread input resets the connection, and the reset can destroy the answer
            # before the client reads it: half-close, drop what still comes for a moment, then close.
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)

    class BoundedUvicornWorker(UvicornWorker):  # type: ignore[misc]  # uvicorn_worker has no types
        CONFIG_KWARGS = {"loop": "auto", "http": BoundedHeadersProtocol}

    worker_class = BoundedUvicornWorker
