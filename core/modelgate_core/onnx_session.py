"""ONNX Runtime sessions, made the same way by every service runner, build and benchmark.

onnxruntime is imported only when a session is made: services that do not serve ONNX never load it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def spinning_allowed() -> bool:
    """Whether idle ORT pool threads may busy-wait, following torch's `OMP_WAIT_POLICY` (PASSIVE unless
    set to ACTIVE): spinning only pays on idle, dedicated cores, and on cores shared with other workers
    and services it made requests several times slower (see vision-service/gunicorn.conf.py)."""
    return os.environ.get("OMP_WAIT_POLICY", "PASSIVE").strip().upper() == "ACTIVE"


def create_session(model_path: Path, threads: int) -> Any:
    """A CPU `InferenceSession` with `threads` intra-op threads, one inter-op thread (one model call at
    a time per worker, like torch's), every graph optimisation, and no spinning unless allowed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if spinning_allowed() else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
