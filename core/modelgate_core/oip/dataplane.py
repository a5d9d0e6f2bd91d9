"""The transport-neutral data plane: what every OIP call does, whatever carries it.

The REST endpoints (`modelgate_core.oip.rest`) only read the HTTP request and write the answer;
the work (finding the model version, decoding and checking tensors, inference, encoding) is here.
The simple TF Serving / KServe v1 call (`{"instances": [...]}` -> `{"predictions": [...]}`) is
translated into an OIP request and served by the same path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from modelgate_core.errors import BadRequest, ServiceUnavailable, Unprocessable
from modelgate_core.oip.codec import decode_infer_request, encode_infer_response
from modelgate_core.oip.types import (
    ModelMetadata,
    RepositoryEntry,
    ServerMetadata,
    TensorSpec,
)
from modelgate_core.repository.policy import Traffic, problems
from modelgate_core.repository.repository import ModelRepository

EXTENSIONS = ["binary_tensor_data", "model_repository"]


class DataPlane:
    def __init__(
        self,
        repository: ModelRepository,
        *,
        server_name: str,
        server_version: str,
        ready: Callable[[], bool],
    ) -> None:
        self.repository = repository
        self.server_name = server_name
        self.server_version = server_version
        self._ready = ready

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(name=self.server_name, version=self.server_version, extensions=EXTENSIONS)

    def server_ready(self) -> bool:
        return self._ready()

    def model_metadata(self, name: str, version: str | None) -> ModelMetadata:
        served = self.repository.get(name, version)
        runtime = served.runtime
        return ModelMetadata(
            name=name,
            versions=[version] if version is not None else self.repository.versions_of(name),
            platform=runtime.platform,
            inputs=served.inputs,
            outputs=served.outputs,
            parameters={"version": served.version, **runtime.describe(), **self._traffic(name, version)},
        )

    def _traffic(self, name: str, version: str | None) -> dict[str, Any]:
        """What the unversioned routes of the model serve now (in the unversioned metadata only)."""
        return {} if version is not None else {"traffic": self.repository.traffic(name)["serving"]}

    def model_ready(self, name: str, version: str | None) -> bool:
        """Whether the version answers; an unknown model or version is a 404 (raised)."""
        try:
            self.repository.get(name, version)
        except ServiceUnavailable:
            return False
        return True

    async def infer(
        self, name: str, version: str | None, body: bytes, header_length: str | None
    ) -> tuple[bytes, dict[str, str]]:
        """Decode, check, infer and encode one OIP request; returns the body and its headers."""
        served = self.repository.route(name, version)
        request = decode_infer_request(body, header_length=header_length, inputs=served.inputs)
        by_name = {spec.name: spec for spec in served.outputs}
        if request.outputs is not None:
            unknown = [o.name for o in request.outputs if o.name not in by_name]
            if unknown:
                raise BadRequest(
                    f"Unknown output {unknown[0]!r} of model '{name}'; it has {', '.join(by_name)}"
                )
        results = await served.infer(request.inputs, request.parameters)
        if request.outputs is not None:
            chosen = [by_name[o.name] for o in request.outputs]
        else:
            chosen = [spec for spec in served.outputs if spec.name in results]
        binary = {spec.name for spec in chosen if request.wants_binary(spec.name)}
        return encode_infer_response(
            model_name=name,
            model_version=served.version,
            request_id=request.id,
            outputs=[(spec, np.asarray(results[spec.name])) for spec in chosen],
            binary=binary,
        )

    async def predict_instances(self, name: str, body: bytes) -> dict[str, Any]:
        """`{"instances": [...]}` -> `{"predictions": [...]}`: one prediction per instance, the output's
        value when the model has one output, else an object of every output."""
        served = self.repository.route(name)
        instances = _instances(body)
        oip_inputs = _instances_to_inputs(served.inputs, instances)
        request = decode_infer_request(
            orjson.dumps({"inputs": oip_inputs}, option=orjson.OPT_SERIALIZE_NUMPY),
            header_length=None,
            inputs=served.inputs,
        )
        results = await served.infer(request.inputs, request.parameters)
        outputs = [spec for spec in served.outputs if spec.name in results]
        columns = {spec.name: _rows(results[spec.name], spec, len(instances)) for spec in outputs}
        if len(outputs) == 1:
            predictions: list[Any] = columns[outputs[0].name]
        else:
            predictions = [{n: column[i] for n, column in columns.items()} for i in range(len(instances))]
        return {"predictions": predictions, "model_name": name, "model_version": served.version}

    async def index(self, ready_only: bool) -> list[RepositoryEntry]:
        return await self.repository.index_now(ready_only)

    async def load(self, name: str) -> list[RepositoryEntry]:
        return await self.repository.load(name)

    async def unload(self, name: str) -> None:
        await self.repository.unload(name)

    def traffic(self, name: str) -> dict[str, Any]:
        return self.repository.traffic(name)

    async def set_traffic(self, name: str, body: bytes) -> dict[str, Any]:
        try:
            traffic = Traffic.model_validate_json(body or b"{}")
        except ValidationError as exc:
            raise BadRequest(f"Invalid traffic: {problems(exc)}") from exc
        return await self.repository.set_traffic(name, traffic)

    async def promote(self, name: str) -> dict[str, Any]:
        return await self.repository.promote(name)

    async def rollback(self, name: str) -> dict[str, Any]:
        return await self.repository.rollback(name)


def _instances(body: bytes) -> list[Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Malformed JSON: {exc}") from exc
    if not isinstance(payload, dict) or set(payload) != {"instances"}:
        raise Unprocessable('The body must be {"instances": [...]}')
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise Unprocessable('"instances" must be a non-empty list')
    return instances


def _instances_to_inputs(specs: Sequence[TensorSpec], instances: list[Any]) -> list[dict[str, Any]]:
    """Rows -> one OIP input per model input (the batch is the first dimension)."""
    if len(specs) == 1:
        columns = {specs[0].name: instances}
    else:
        if not all(isinstance(i, dict) for i in instances):
            names = ", ".join(s.name for s in specs)
            raise Unprocessable(f"The model takes several inputs ({names}): each instance must be an object")
        columns = {}
        for spec in specs:
            try:
                columns[spec.name] = [instance[spec.name] for instance in instances]
            except KeyError:
                raise Unprocessable(f"Every instance needs the input {spec.name!r}") from None
    inputs = []
    for spec in specs:
        column = columns[spec.name]
        data = [_base64_text(v) for v in column] if spec.datatype == "BYTES" else column
        inputs.append(
            {"name": spec.name, "datatype": spec.datatype, "shape": _shape_of(column), "data": data}
        )
    return inputs


def _base64_text(value: Any) -> Any:
    return value["b64"] if isinstance(value, dict) and set(value) == {"b64"} else value


def _shape_of(value: Any) -> list[int]:
    """The shape of a nested list, read along its first elements (the codec checks the rest)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _rows(array: Any, spec: TensorSpec, rows: int) -> list[Any]:
    values = np.asarray(array)
    if spec.datatype == "BYTES":
        flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values.ravel()]
        values = np.array(flat, dtype=object).reshape(values.shape)
    listed = values.tolist()
    if not isinstance(listed, list) or len(listed) != rows:
        # The runtime broke its contract (one row per input row): a server bug, not the caller's.
        raise RuntimeError(f"output {spec.name!r} does not have one row per instance")
    return listed
