"""Gunicorn settings shared by every ModelGate process, read from the environment.

Each service's `gunicorn.conf.py` star-imports this module. Workers are Uvicorn workers; models load
inside each worker after it starts (see `service.create_service_app`), so `TIMEOUT` only has to cover a
worker's own heartbeat, but it is generous in case loading holds the GIL for long stretches.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from modelgate_core.logging import logging_config

bind = os.environ.get("BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_class = "uvicorn_worker.UvicornWorker"
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
)


def on_starting(server: Any) -> None:
    """Give the workers an empty Prometheus multiprocess directory (metrics are per process group)
    and a model control directory of their own (how they agree on load/unload calls)."""
    if not os.environ.get("MODEL_CONTROL_DIR"):
        os.environ["MODEL_CONTROL_DIR"] = tempfile.mkdtemp(prefix="modelgate-control-")
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="modelgate-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    prepare_metrics_dir(Path(path))


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
