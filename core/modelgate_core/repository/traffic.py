"""Which version answers one request, and the shadow that gets a copy of it.

A pinned request (`/v2/models/<name>/versions/<v>/...`) is answered by that version. An unversioned one
by the model's default, or by its canary for the configured share of requests, chosen per request
(`policy.Traffic`). The default's answers can be mirrored to a shadow version: the copy runs after
the real answer is computed, in a task of its own with a bound on how many run at once (past it copies
are skipped and counted, never queued), and its outputs are compared with the default's; the caller
never waits for it and never sees its errors.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import Counter

from modelgate_core.context import (
    MODEL_VERSION_HEADER,
    RequestContext,
    add_response_header,
    annotate,
    bind,
    current_request_id,
)
from modelgate_core.oip.types import TensorSpec
from modelgate_core.repository.policy import Shadow
from modelgate_core.repository.runtime import ModelRuntime, Tensors

if TYPE_CHECKING:
    from modelgate_core.repository.served import ServedVersion

logger = logging.getLogger("modelgate.traffic")

# Shadow copies one model may have running at once in one worker; more are skipped (outcome="skipped"):
# a shadow must never build a queue that competes with the real traffic.
SHADOW_MAX_IN_FLIGHT = 8

SHADOW_COMPARISONS = Counter(
    "modelgate_shadow_comparisons_total",
    "Requests copied to a shadow version, by outcome: agree or disagree with the default's answer, error "
    "(the shadow failed), skipped (too many copies already running).",
    ["model", "version", "outcome"],
)


class Routed:
    """A version chosen to answer one request, and the shadow mirroring it (if any). Inference routes
    call this rather than the `ServedVersion`, so that every answer names its version and a shadow sees
    every request of the default, whichever route it came by."""

    __slots__ = ("mirror", "served")

    def __init__(self, served: ServedVersion, mirror: Mirror | None = None) -> None:
        self.served = served
        self.mirror = mirror

    @property
    def name(self) -> str:
        return self.served.name

    @property
    def version(self) -> str:
        return self.served.version

    @property
    def runtime(self) -> ModelRuntime:
        return self.served.runtime

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.served.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.served.outputs

    def artifact_version(self) -> str:
        return self.served.artifact_version()

    async def infer(self, inputs: Tensors, parameters: dict[str, Any] | None = None) -> Tensors:
        add_response_header(MODEL_VERSION_HEADER, self.served.version)
        annotate(model_version=self.served.version)
        outputs = await self.served.infer(inputs, parameters)
        if self.mirror is not None:
            self.mirror.submit(inputs, parameters, outputs)
        return outputs


@dataclass(frozen=True, slots=True)
class ModelRoutes:
    """The unversioned routing of one model, rebuilt whenever its traffic or its ready versions change."""

    default: Routed
    canary: Routed | None = None
    canary_percent: float = 0.0

    def choose(self) -> Routed:
        if self.canary is not None and random.random() * 100 < self.canary_percent:
            return self.canary
        return self.default


class Mirror:
    """Copies requests answered by a model's default version to its shadow and compares the answers."""

    def __init__(
        self, model: str, shadow: ServedVersion, spec: Shadow, max_in_flight: int = SHADOW_MAX_IN_FLIGHT
    ) -> None:
        self.model = model
        self.shadow = shadow
        self.spec = spec
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._counts = {
            outcome: SHADOW_COMPARISONS.labels(model, shadow.version, outcome)
            for outcome in ("agree", "disagree", "error", "skipped")
        }

    def submit(self, inputs: Tensors, parameters: dict[str, Any] | None, expected: Tensors) -> None:
        if self.spec.percent < 100 and random.random() * 100 >= self.spec.percent:
            return
        if self.in_flight >= self.max_in_flight:
            self._counts["skipped"].inc()
            return
        self.in_flight += 1
        # A context of its own: the copy must not write into the real request's Server-Timing or access
        # log, nor inherit its deadline (the caller has its answer; the copy is for us).
        context = contextvars.Context()
        task = asyncio.get_running_loop().create_task(
            self._run(inputs, parameters, expected, current_request_id()), context=context
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drained(self) -> None:
        """Wait for the copies under way (the tests; an unload waits for the shadow version itself)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _run(
        self, inputs: Tensors, parameters: dict[str, Any] | None, expected: Tensors, request_id: str | None
    ) -> None:
        if request_id is not None:
            bind(RequestContext(request_id))  # the copy's log lines name the request it copies
        try:
            got = await self.shadow.infer(inputs, parameters)
        except Exception as exc:  # noqa: BLE001 - a shadow's failure is measured, never raised
            self._counts["error"].inc()
            logger.info(
                "shadow failed",
                extra={"model": self.model, "shadow_version": self.shadow.version, "error": repr(exc)[:300]},
            )
            return
        finally:
            self.in_flight -= 1
        differences = disagreements(expected, got, self.spec)
        if differences:
            self._counts["disagree"].inc()
            logger.warning(
                "shadow disagreed",
                extra={"model": self.model, "shadow_version": self.shadow.version, "outputs": differences},
            )
        else:
            self._counts["agree"].inc()


def disagreements(expected: Tensors, got: Tensors, spec: Shadow) -> dict[str, str]:
    """Output name -> how the shadow's differs from the default's, for the outputs compared."""
    differences: dict[str, str] = {}
    for name in spec.compare if spec.compare is not None else list(expected):
        if name not in expected or name not in got:
            differences[name] = "missing from the " + ("default" if name not in expected else "shadow")
            continue
        a, b = np.asarray(expected[name]), np.asarray(got[name])
        if a.shape != b.shape:
            differences[name] = f"shape {list(a.shape)} vs {list(b.shape)}"
        elif a.dtype.kind in "biufc" and b.dtype.kind in "biufc":
            if not np.allclose(a, b, rtol=spec.rtol, atol=spec.atol, equal_nan=True):
                gap = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                differences[name] = f"max abs difference {gap:.3g}"
        elif not np.array_equal(a, b):
            differing = int(np.sum(a != b))
            differences[name] = f"{differing} of {a.size} values differ"
    return differences
