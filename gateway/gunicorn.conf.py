"""Gunicorn config for gateway: the shared settings, read from the environment."""

import os

os.environ.setdefault("SERVICE_NAME", "gateway")

from modelgate_core.gunicorn_conf import *  # noqa: F403
