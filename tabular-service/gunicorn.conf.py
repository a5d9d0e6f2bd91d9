"""Gunicorn config for tabular-service: the shared settings, read from the environment."""

import os

os.environ.setdefault("SERVICE_NAME", "tabular-service")
# One OpenMP thread per worker: the fraud model's gradient boosting otherwise starts a thread per
# core for each tiny prediction, and on shared cores those threads stall.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from modelgate_core.gunicorn_conf import *  # noqa: F403
