"""The benchmark harness's own moving parts, against the real tools: wrk with the one Lua script, the
baseline gateway's import check, and which runs publish to docs/."""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# First: tests/conftest.py puts scripts/ ahead, and `bench` is the package at the root.
sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402
from bench.gateway import DEFAULT_BASELINE, baseline_imports, baseline_source  # noqa: E402
from bench.harness import Route, Target, Wrk  # noqa: E402


class Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        Recorder.seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make bench-tools)")
def test_wrk_sends_the_body_its_type_the_key_and_the_routes_extra_headers(
    recorder: str, tmp_path: Path
) -> None:
    body = b'{"inputs":[]}' + bytes(range(32))
    route = Route(
        "r", "/infer", "tabular", "application/octet-stream", body, lambda _: True, {"X-Extra": "13"}
    )
    wrk = Wrk(shutil.which("wrk") or "wrk", "wrk", tmp_path)
    result = wrk.run(Target("t", "direct", recorder, api_key="mg_key"), route, 1, 1)

    assert result["requests"] > 0 and result["status"] == 0
    headers, sent = Recorder.seen[0]
    assert sent == body
    assert headers["content-type"] == "application/octet-stream"
    assert headers["x-api-key"] == "mg_key"
    assert headers["x-extra"] == "13"


def test_the_baseline_runs_its_own_code_not_the_checkouts(tmp_path: Path) -> None:
    commit, source = baseline_source(DEFAULT_BASELINE)
    assert commit.startswith(DEFAULT_BASELINE)
    good = {"PYTHONPATH": f"{source / 'gateway'}:{source / 'core'}", "PATH": "/usr/bin:/bin"}
    found = baseline_imports(source, good, tmp_path)
    assert Path(found["gateway"]).is_relative_to(source)
    assert Path(found["modelgate_core"]).is_relative_to(source)
    # Without its PYTHONPATH the editable installs in .venv answer: the check must refuse that.
    with pytest.raises(SystemExit, match="would import"):
        baseline_imports(source, {"PATH": "/usr/bin:/bin"}, tmp_path)


def test_only_a_full_run_publishes_to_docs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = tmp_path / "docs"
    monkeypatch.setattr(report, "DOCS", docs)
    out = tmp_path / "run"
    (out / "img").mkdir(parents=True)
    (out / "report.md").write_text("# figures")
    (out / "img" / "plot.png").write_bytes(b"png")

    assert report.publish(out, "x.md", ["img/plot.png"], full_run=False) is False
    assert not docs.exists()
    assert report.publish(out, "x.md", ["img/plot.png"], full_run=True) is True
    assert (docs / "x.md").read_text() == "# figures"
    assert (docs / "img" / "plot.png").read_bytes() == b"png"


def test_the_first_runs_steps_are_read_off_make_runs_own_lines() -> None:
    from bench.first_run import steps_from

    lines = [
        (0.0, "==> [venv] Creating .venv and installing the pinned dependencies with uv (about 40 s ...)"),
        (3.0, "Resolved 180 packages in 2.1s"),
        (41.0, "==> [models 1/3] iris: not in the cache, building it (about 2 s on 2 cores; cache key 6b72)"),
        (43.5, "==> [models 2/3] fraud: not in the cache, building it (about 50 s on 2 cores; key 6b1)"),
        (90.0, "[fraud]    46.4s  fitting on the training days ..."),
        (95.0, "==> [models 3/3] sentiment-onnx: not in the cache, building it (about 50 s on 2 cores)"),
        (150.0, "model repository /tmp/x/models: iris, fraud, sentiment"),
        (151.0, "Starting ModelGate: gateway on :9100, services on :9101-9103"),
    ]
    assert steps_from(lines, ready_at=156.0) == [
        ("venv", 41.0),
        ("model iris", 2.5),
        ("model fraud", 51.5),
        ("model sentiment-onnx", 55.0),
        ("model repository and the four processes starting", 6.0),
    ]
