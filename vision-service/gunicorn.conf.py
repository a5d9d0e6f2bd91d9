"""Gunicorn config for vision-service: the shared settings, read from the environment."""

import os

from modelgate_core.gunicorn_conf import *  # noqa: F403

# torch's OpenMP threads sleep instead of spinning while they wait for work. Spinning only pays on
# idle, dedicated cores; on cores shared with other workers and services it made requests 5-20x
# slower in our measurements. Read when torch loads in the worker, so it is set here, in the master.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
