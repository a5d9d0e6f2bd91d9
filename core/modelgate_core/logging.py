"""JSON logging: one object per line, every record stamped with the service name and request ID."""

from __future__ import annotations

import contextlib
import logging
import logging.config
import os
import sys
import threading
import time
import weakref
from typing import Any

import orjson

from modelgate_core.context import current_context

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object on one line."""

    def __init__(self, service: str = "modelgate") -> None:
        super().__init__()
        self.service = service
        # The formatted second, kept: every access-log line would otherwise pay for strftime.
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        entry: dict[str, Any] = {
            "ts": f"{self._stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "service": self.service,
            "pid": record.process,
            "message": record.getMessage(),
        }
        ctx = current_context()
        request_id = getattr(record, "request_id", None) or (ctx.request_id if ctx is not None else None)
        if request_id:
            entry["request_id"] = request_id
        if ctx is not None and ctx.trace_id is not None:
            entry["trace_id"] = ctx.trace_id  # a log line leads to its trace
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]  # StreamHandler[TextIO]
    """A stream handler that writes lines in batches: every `flush_seconds` from a background thread,
    at once for WARNING and above, and when `max_pending` lines wait. The event loop then makes no
    write call per access-log line; the price is that a process killed with SIGKILL loses at most the
    last `flush_seconds` of INFO lines (a normal exit flushes them). `flush_seconds=0` writes each line.
    """

    def __init__(self, stream: Any = None, flush_seconds: float = 0.2, max_pending: int = 512) -> None:
        super().__init__(stream)
        self.flush_seconds = flush_seconds
        self.max_pending = max_pending
        self._pending: list[str] = []
        self._flusher_pid = 0  # the process whose flusher thread runs (a fork has none until it logs)
        self._stopped = threading.Event()
        self.flusher: threading.Thread | None = None
        # A forked worker must not write the lines its parent still holds: the parent writes them.
        handler = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_pending(handler()))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pending.append(self.format(record) + self.terminator)
            if (
                self.flush_seconds <= 0
                or record.levelno >= logging.WARNING
                or len(self._pending) >= self.max_pending
            ):
                self.flush()
            elif self._flusher_pid != os.getpid():
                self._start_flusher()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging must never raise into the caller (as StreamHandler)
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # Handler.createLock made it
            if self._pending:
                lines, self._pending = "".join(self._pending), []
                self.stream.write(lines)
            super().flush()

    def close(self) -> None:
        """Write what is pending and stop the flusher (logging's reconfiguration and exit call this)."""
        self._stopped.set()
        # The stream may be gone already (a test's captured output, a closed pipe).
        with contextlib.suppress(ValueError, OSError):
            self.flush()
        super().close()

    def _start_flusher(self) -> None:
        self._flusher_pid = os.getpid()
        handler = weakref.ref(self)  # the thread must not keep a replaced handler alive
        stopped = self._stopped

        def flush_until_closed() -> None:
            while not stopped.wait(self.flush_seconds):
                target = handler()
                if target is None:
                    return
                try:
                    target.flush()
                except (ValueError, OSError):
                    return  # its stream was closed under it: nothing more can be written there
                del target

        self.flusher = threading.Thread(target=flush_until_closed, name="log-flusher", daemon=True)
        self.flusher.start()


def _forget_pending(handler: BatchedStreamHandler | None) -> None:
    if handler is not None:
        handler._pending = []


def logging_config(
    service: str, level: str = "INFO", json_logs: bool = True, flush_seconds: float = 0.2
) -> dict[str, Any]:
    """Return a `logging.config.dictConfig` dict (also handed to Gunicorn as `logconfig_dict`)."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter, "service": service}
        if json_logs
        else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "stdout": {
                "()": BatchedStreamHandler,
                "formatter": "default",
                "stream": sys.stdout,
                "flush_seconds": flush_seconds,
            }
        },
        "root": {"handlers": ["stdout"], "level": level},
        "loggers": {
            # Our middleware writes the access log; Uvicorn's own line would be a second one.
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
        },
    }


def configure_logging(
    service: str, level: str = "INFO", json_logs: bool = True, flush_seconds: float = 0.2
) -> None:
    """Install the JSON handler on the root logger for this process."""
    logging.config.dictConfig(logging_config(service, level, json_logs, flush_seconds))
