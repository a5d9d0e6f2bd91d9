"""The caller's deadline (`X-Request-Deadline-Ms`): parsed once per request with the request ID, turned
into a local monotonic deadline, malformed values ignored, long ones capped; a service drops a request
whose deadline has passed before running its model; MAX_QUEUED_REQUESTS reaches every served version."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from modelgate_core import context
from modelgate_core.context import MAX_DEADLINE_MS, context_for, deadline_from_header
from modelgate_core.middleware import RequestContextMiddleware
from modelgate_core.service import ServiceSettings, create_service_app
from modelgate_core.testing import wait_until_ready


@pytest.mark.parametrize(
    "value",
    [b"", b"soon", b"-5", b"+5", b"1.5", b"1e3", b" 12", b"12 ", b"0x10", b"\xb2", b"9" * 17],
)
def test_a_malformed_budget_is_ignored(value: bytes) -> None:
    # b"\xb2" is latin-1's superscript two, which str.isdigit() would take for a digit.
    assert deadline_from_header(value, 100.0) is None


def test_a_budget_becomes_a_deadline_from_arrival_capped() -> None:
    assert deadline_from_header(b"1500", 100.0) == 101.5
    assert deadline_from_header(b"0", 100.0) == 100.0  # nothing left: due on arrival
    assert deadline_from_header(b"0000250", 100.0) == 100.25
    assert MAX_DEADLINE_MS == 600_000
    assert deadline_from_header(b"600001", 100.0) == 700.0
    assert deadline_from_header(b"9" * 16, 100.0) == 700.0


def test_one_pass_finds_both_headers_and_the_first_of_each_counts() -> None:
    before = time.monotonic()
    ctx = context_for(
        [
            (b"host", b"svc"),
            (b"x-request-deadline-ms", b"2000"),
            (b"x-request-id", b"first-id"),
            (b"x-request-id", b"second-id"),
            (b"x-request-deadline-ms", b"1"),
        ]
    )
    after = time.monotonic()
    assert ctx.request_id == "first-id"
    assert ctx.deadline is not None and before + 2.0 <= ctx.deadline <= after + 2.0
    bare = context_for([(b"x-request-id", b"bad id\r\n")])
    assert bare.deadline is None and len(bare.request_id) == 32


def test_the_middleware_binds_the_deadline_for_the_request() -> None:
    seen: list[tuple[str | None, float | None]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((context.current_request_id(), context.current_deadline()))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    client = TestClient(RequestContextMiddleware(app, service="test"))
    before = time.monotonic()
    response = client.get("/", headers={"x-request-id": "rid-1", "x-request-deadline-ms": "1500"})
    after = time.monotonic()
    assert response.headers["x-request-id"] == "rid-1"
    client.get("/", headers={"x-request-deadline-ms": "soon"})
    client.get("/")
    (rid, deadline), malformed, absent = seen
    assert rid == "rid-1" and deadline is not None and before + 1.5 <= deadline <= after + 1.5
    assert malformed[1] is None and absent[1] is None


@pytest.fixture
def service(
    doubler_runtime: Any, repo_root: Path, write_version: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[TestClient, Any]:
    """A real service app over the doubler (OIP infer answered by the plain-ASGI route)."""
    monkeypatch.setenv("MODEL_CONTROL_DIR", str(tmp_path / "control"))
    write_version(repo_root, "double", "1")
    settings = ServiceSettings(model_repository=repo_root, service_name="test-svc", max_queued_requests=3)
    repository = settings.repository("tabular", {"sklearn": doubler_runtime})
    app = create_service_app(title="t", version="1", settings=settings, repository=repository)
    return TestClient(app, raise_server_exceptions=False), repository


def test_a_service_drops_a_request_whose_caller_has_no_time_left(
    service: tuple[TestClient, Any], doublers: list[Any]
) -> None:
    client, repository = service
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.5]}]}
    with client:
        wait_until_ready(client)
        gone = client.post("/v2/models/double/infer", json=body, headers={"x-request-deadline-ms": "0"})
        assert gone.status_code == 504
        assert gone.json()["code"] == "deadline_exceeded" and "dropped" in gone.json()["error"]
        assert doublers[-1].calls == []  # the model never ran for it
        for budget in ("30000", "soon"):  # time left, or a value that says nothing: served
            ok = client.post("/v2/models/double/infer", json=body, headers={"x-request-deadline-ms": budget})
            assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [3.0]
        assert doublers[-1].calls == [1, 1]
        assert repository.get("double").max_queued == 3  # MAX_QUEUED_REQUESTS reached the version


def test_max_queued_requests_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServiceSettings().max_queued_requests == 64
    monkeypatch.setenv("MAX_QUEUED_REQUESTS", "7")
    assert ServiceSettings().max_queued_requests == 7
    monkeypatch.setenv("MAX_QUEUED_REQUESTS", "0")
    with pytest.raises(ValidationError):
        ServiceSettings()
