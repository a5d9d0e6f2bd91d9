"""An oversized body gets its 413 even when the client sends the whole body before reading the answer.

urllib (like `requests`) writes the entire body first. A server that answers 413 and closes while that
body is still arriving resets the connection, and such a client sees "connection reset by peer", not
the error. These tests talk to a real model service (tabular, the same middleware as every process) under its
real Gunicorn config, over a real socket.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import LocalStack, free_port  # type: ignore[import-not-found]

pytestmark = pytest.mark.integration

JSON_LIMIT = 5 * 1024 * 1024
# A JSON path (not a tensor upload): the JSON limit applies.
PATH = "/v1/tabular/iris"
# Over the limit by more than the loopback socket buffers hold (about 4 MiB here), so the client is
# still sending when the server decides; under the bound up to which a refused body is still read
# (twice the limit).
BODY = b"x" * (8 * 1024 * 1024)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tabular service alone, serving an empty repository (a 413 needs no model), small JSON limit."""
    run_dir: Path = tmp_path_factory.mktemp("body-limit")
    repository = run_dir / "models"
    repository.mkdir()
    local = LocalStack(
        ports={name: free_port() for name in ("gateway", "tabular", "vision", "nlp")},
        run_dir=run_dir,
        repository=repository,
        extra_env={"MAX_JSON_BYTES": str(JSON_LIMIT)},
    )
    local.start("tabular")
    try:
        url = local.url("tabular")
        deadline = time.monotonic() + 60
        while True:
            assert local.processes["tabular"].poll() is None, (run_dir / "tabular.log").read_text()
            try:
                with urllib.request.urlopen(url + "/health/live", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        local.stop_all()


def post(url: str, data: bytes | Iterator[bytes], headers: dict[str, str]) -> urllib.error.HTTPError:
    request = urllib.request.Request(url + PATH, data=data, method="POST", headers=headers)
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=30)
    return raised.value


def assert_too_large(error: urllib.error.HTTPError) -> None:
    assert error.code == 413
    body = json.loads(error.read())
    assert body["error"]["code"] == "payload_too_large", body
    assert str(JSON_LIMIT) in body["error"]["message"]


def test_declared_length_over_the_limit_gets_the_413(service: str) -> None:
    error = post(service, BODY, {"content-type": "application/json"})
    assert_too_large(error)


def test_chunked_body_over_the_limit_gets_the_413(service: str) -> None:
    # No Content-Length: urllib sends an iterable as chunked, so the limit is crossed while reading.
    chunks = iter([BODY[i : i + 16384] for i in range(0, len(BODY), 16384)])
    error = post(service, chunks, {"content-type": "application/json"})
    assert_too_large(error)


def raw_request(service: str, headers: str) -> bytes:
    """Send only the head of a POST with `headers`, and read the whole answer (the server closes)."""
    host, port = service.removeprefix("http://").split(":")
    answer = b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = f"POST {PATH} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n{headers}\r\n"
        sock.sendall(head.encode())
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_body_past_the_bound_is_refused_without_being_read(service: str) -> None:
    # Declares 1 GiB and sends none of it: the 413 must come at once, not after waiting for the body.
    answer = raw_request(service, f"content-length: {1 << 30}\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "payload_too_large"


def test_a_client_that_sends_less_than_it_declared_still_gets_the_413(service: str) -> None:
    # Declares a body within the bound that it never sends: draining must not wait on it for ever.
    answer = raw_request(service, f"content-length: {JSON_LIMIT + 1}\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert json.loads(body)["error"]["code"] == "payload_too_large"


def test_a_chunked_body_past_the_bound_has_its_connection_closed(service: str) -> None:
    # Keeps sending after the limit: the server reads up to its bound, then must close rather than
    # go on reading (and discarding) whatever the client sends for as long as it sends.
    host, port = service.removeprefix("http://").split(":")
    chunk = b"x" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST {PATH} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            "transfer-encoding: chunked\r\n\r\n".encode()
        )
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while sent < 16 * JSON_LIMIT:  # 8 times the bound: the server closed long before, or never
                sock.sendall(frame)
                sent += len(chunk)
