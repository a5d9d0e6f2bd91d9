"""SIGTERM to a real Gunicorn master (one Uvicorn worker) with requests in flight: readiness answers 503
"draining", every in-flight request still gets its answer, then the process exits 0.

Nothing here waits on a timer. A request is known to be in flight because the test holds it: the
gateway's requests to the nlp service go through `GatedProxy`, which keeps their bytes until it is
opened; a request straight to a service is in flight once the service has answered its
`Expect: 100-continue` (the app is reading the body). The worker is known to be draining once its port
refuses connections: Gunicorn closes its listener on SIGTERM and Uvicorn its own as its graceful
shutdown begins, after the drain handler has run.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import httpx
import pytest

from devstack import LocalStack, free_port  # type: ignore[import-not-found]

pytestmark = pytest.mark.integration

TEXTS = ["What a wonderful, happy day this has been, I loved every minute of it"] * 8
BATCH = json.dumps({"texts": TEXTS}).encode()


class GatedProxy:
    """A TCP proxy to a local port that, while closed, holds the next bytes each connection sends
    towards the target until it is opened again (answers flow back untouched)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._open = threading.Event()
        self._open.set()
        self._changed = threading.Condition()
        self._holding = 0  # connections whose bytes are held right now
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close_gate(self) -> None:
        self._open.clear()

    def open_gate(self) -> None:
        self._open.set()

    def wait_holding(self, count: int, timeout: float = 30) -> None:
        """Until `count` connections have bytes held (each is one request in flight)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._holding >= count, timeout):
                raise AssertionError(f"{self._holding} requests held after {timeout}s, wanted {count}")

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, gated: bool) -> None:
        try:
            while data := source.recv(65536):
                if gated and not self._open.is_set():
                    with self._changed:
                        self._holding += 1
                        self._changed.notify_all()
                    self._open.wait()
                    with self._changed:
                        self._holding -= 1
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the other side went away; its own pump reports nothing either

    def __enter__(self) -> GatedProxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._open.set()
        self.listener.close()
        for sock in self._sockets:
            sock.close()


def wait_until_refused(port: int, timeout: float = 30) -> None:
    """Until nothing accepts connections on `port` any more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.02)
    raise AssertionError(f"port {port} still accepts connections {timeout}s after SIGTERM")


def read_head(conn: socket.socket) -> bytes:
    """One interim response's head, byte by byte so that nothing after it is read."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = conn.recv(1)
        assert byte, f"the connection closed after {head!r}"
        head += byte
    return head.removesuffix(b"\r\n\r\n")


def one_process(
    stack: LocalStack, run_dir: Path, name: str, env: dict[str, str] | None = None, **ports: int
) -> LocalStack:
    """A second copy of one process of `stack`, on ports of its own, so the shared stack is not
    disturbed; it reads the shared stack's keys. Started and ready."""
    copy = LocalStack(
        ports={**stack.ports, name: free_port(), **ports},
        run_dir=run_dir,
        workers=1,
        extra_env={
            "API_KEYS_FILE": str(stack.run_dir / "api_keys.json"),
            # Readiness asks the services on every call, and waits for a held one.
            "READINESS_CACHE_SECONDS": "0",
            "READINESS_TIMEOUT": "60",
            **(env or {}),
        },
    )
    copy.start(name)
    copy.wait_ready(name)
    return copy


def assert_positive_batch(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert [r["label"] for r in response.json()["results"]] == ["positive"] * len(TEXTS)


def test_gateway_drains_readiness_and_answers_in_flight_requests(
    stack: LocalStack, api_key: str, tmp_path: Path
) -> None:
    with GatedProxy(stack.ports["nlp"]) as nlp:
        gateway = one_process(stack, tmp_path, "gateway", nlp=nlp.port)
        proc: subprocess.Popen[bytes] = gateway.processes["gateway"]
        client = httpx.Client(base_url=gateway.url("gateway"), headers={"X-API-Key": api_key}, timeout=60)
        try:
            nlp.close_gate()
            with ThreadPoolExecutor(4) as pool:
                batches = [
                    pool.submit(
                        client.post,
                        "/v1/nlp/sentiment/batch",
                        content=BATCH,
                        headers={"content-type": "application/json"},
                    )
                    for _ in range(3)
                ]
                readiness = pool.submit(client.get, "/health/ready")
                # The three batches and readiness's question to nlp are all on their way to the service.
                nlp.wait_holding(4)
                proc.send_signal(signal.SIGTERM)
                wait_until_refused(gateway.ports["gateway"])
                nlp.open_gate()
                ready = readiness.result()
                answers = [batch.result() for batch in batches]
            assert proc.wait(60) == 0
        finally:
            client.close()
            gateway.stop_all()
    # Every service answered the probe: draining alone makes the gateway not ready.
    assert ready.status_code == 503, ready.text
    error = ready.json()["error"]
    assert error["code"] == "not_ready" and error["message"] == "Not ready: process"
    assert error["details"] == [{"component": "process", "status": "draining"}]
    for answer in answers:
        assert_positive_batch(answer)


def test_service_answers_a_request_in_flight_at_sigterm(stack: LocalStack, tmp_path: Path) -> None:
    nlp = one_process(stack, tmp_path, "nlp")
    proc: subprocess.Popen[bytes] = nlp.processes["nlp"]
    port = nlp.ports["nlp"]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
            conn.sendall(
                b"POST /v1/nlp/sentiment/batch HTTP/1.1\r\nHost: nlp\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(BATCH)
            )
            # The app is reading the body: the request is in flight, and waits for it.
            assert read_head(conn) == b"HTTP/1.1 100 Continue"
            proc.send_signal(signal.SIGTERM)
            wait_until_refused(port)
            conn.sendall(BATCH)
            answer = b""
            while chunk := conn.recv(65536):  # the worker closes the connection after this answer
                answer += chunk
        assert proc.wait(60) == 0
    finally:
        nlp.stop_all()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    assert status_line == "HTTP/1.1 200 OK" and headers["connection"] == "close", head
    assert_positive_batch(httpx.Response(200, headers=headers, content=body))


def test_with_a_drain_delay_new_requests_are_still_answered_while_readiness_says_draining(
    stack: LocalStack, api_key: str, tmp_path: Path
) -> None:
    """DRAIN_SECONDS: after SIGTERM the port stays open, readiness is 503 at once, new requests (on new
    connections, as a load balancer that has not probed yet sends them) still get their answers, then
    the process exits by itself."""
    gateway = one_process(stack, tmp_path, "gateway", {"DRAIN_SECONDS": "30"})
    proc: subprocess.Popen[bytes] = gateway.processes["gateway"]
    url = gateway.url("gateway")
    try:
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while (ready := httpx.get(f"{url}/health/ready", timeout=10)).status_code == 200:
            assert time.monotonic() < deadline, "readiness never turned 503 after SIGTERM"
        answer = httpx.post(
            f"{url}/v1/nlp/sentiment/batch",
            content=BATCH,
            headers={"content-type": "application/json", "X-API-Key": api_key},
            timeout=60,
        )
        assert proc.poll() is None  # still serving: the drain delay has not run out
        proc.send_signal(signal.SIGTERM)  # a second SIGTERM starts the shutdown at once
        assert proc.wait(60) == 0
    finally:
        gateway.stop_all()
    assert ready.status_code == 503
    assert ready.json()["error"]["details"] == [{"component": "process", "status": "draining"}]
    assert_positive_batch(answer)
