"""Input limits in the real processes: an image with too many pixels is refused from its header, in a
Gunicorn worker whose memory does not move; a text longer than the model reads is cut (the default) or,
with NLP_TRUNCATE=false in the service's environment, refused."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from devstack import LocalStack, free_port

pytestmark = pytest.mark.integration

# 39 megapixels in about 130 kB of PNG: it passes the 10 MB upload limit, and decoding it would take
# ~150 MiB or more; the vision service's default limit is 4096 x 4096.
LARGE = (7200, 5400)
LONG_TEXT = " ".join(["The service was slow but the food was really wonderful and I loved it."] * 20)


def workers_of(master: int) -> list[int]:
    """The PIDs whose parent is `master` (a Gunicorn master's workers)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == master:
            children.append(int(stat.parent.name))
    return children


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def large_png() -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize(LARGE).convert("RGB").save(buffer, "PNG", compress_level=9)
    assert len(buffer.getvalue()) < 1_000_000
    return buffer.getvalue()


def test_a_large_png_is_refused_without_decoding(
    gateway: httpx.Client, stack: LocalStack, large_png: bytes
) -> None:
    (worker,) = workers_of(stack.processes["vision"].pid)
    # Reset the worker's high-water mark to what it holds now, then see how far the request raises it.
    Path(f"/proc/{worker}/clear_refs").write_text("5")
    before = peak_rss_mib(worker)
    response = gateway.post("/v1/vision/classify", files={"file": ("large.png", large_png, "image/png")})
    growth = peak_rss_mib(worker) - before
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "payload_too_large"
    assert "7200x5400 (38,880,000 pixels); the limit is 16,777,216 pixels" in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert growth < 32, f"the vision worker's peak memory grew by {growth:.0f} MiB"


def test_a_long_text_is_cut_and_flagged_by_default(gateway: httpx.Client) -> None:
    long = gateway.post("/v1/nlp/sentiment", json={"text": LONG_TEXT})
    assert long.status_code == 200, long.text
    assert long.json()["truncated"] is True
    short = gateway.post("/v1/nlp/sentiment", json={"text": "I love it"})
    assert short.status_code == 200, short.text
    assert short.json()["truncated"] is False


@pytest.fixture(scope="module")
def strict_nlp(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second nlp-service under Gunicorn, with NLP_TRUNCATE=false in its environment."""
    own = LocalStack(
        ports={**stack.ports, "nlp": free_port()},
        run_dir=tmp_path_factory.mktemp("strict-nlp"),
        repository=stack.repository,
        extra_env={"NLP_TRUNCATE": "false", "MODEL_POLL_SECONDS": "0.5"},
    )
    try:
        own.start("nlp")
        own.wait_ready("nlp")
        yield own.url("nlp")
    finally:
        own.stop_all()


def test_nlp_truncate_false_refuses_a_long_text(strict_nlp: str) -> None:
    with httpx.Client(base_url=strict_nlp, timeout=60) as client:
        refused = client.post("/v1/nlp/sentiment/batch", json={"texts": ["I love it", LONG_TEXT]})
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["code"] == "validation_error"
        assert [d["field"] for d in error["details"]] == ["texts.1"]
        assert "texts[1] is" in error["message"] and "at most 64 tokens" in error["message"]
        oip = client.post(
            "/v2/models/sentiment/infer",
            json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [LONG_TEXT]}]},
        )
        assert oip.status_code == 400, oip.text
        assert "text[0] is" in oip.json()["error"]
        fine = client.post("/v1/nlp/sentiment", json={"text": "I love it"})
        assert fine.status_code == 200 and fine.json()["truncated"] is False
