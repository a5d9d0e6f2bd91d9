"""Gunicorn config for tabular-service: the shared settings, read from the environment."""

import os

os.environ.setdefault("SERVICE_NAME", "tabular-service")

from modelgate_core.gunicorn_conf import *  # noqa: F403
