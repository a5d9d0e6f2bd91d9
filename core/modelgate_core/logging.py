"""JSON logging: one object per line, every record stamped with the service name and request ID."""

from __future__ import annotations

import logging
import logging.config
import sys
import time
from typing import Any

import orjson

from modelgate_core.context import current_request_id

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
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def logging_config(service: str, level: str = "INFO", json_logs: bool = True) -> dict[str, Any]:
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
            "stdout": {"class": "logging.StreamHandler", "formatter": "default", "stream": sys.stdout}
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


def configure_logging(service: str, level: str = "INFO", json_logs: bool = True) -> None:
    """Install the JSON handler on the root logger for this process."""
    logging.config.dictConfig(logging_config(service, level, json_logs))
