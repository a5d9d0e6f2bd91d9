"""vision-service API tests: the real app and the real model (models/imagenet), in-process."""

from __future__ import annotations

import base64
import io
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

from modelgate_core.testing import wait_until_ready
from vision_service.app import VisionSettings, create_app
from vision_service.decode import decode_image
from vision_service.image_runtime import DEFAULT_MAX_PIXELS

REPO = Path(__file__).resolve().parents[2]
# The built models; MODEL_REPOSITORY (as the services read it) points elsewhere.
MODELS = Path(os.environ.get("MODEL_REPOSITORY") or REPO / "models")
COFFEE = REPO / "tests" / "assets" / "coffee.jpg"
CLASSIFY = "/v1/vision/classify"
ESPRESSO = 967


@contextmanager
def started(settings: VisionSettings) -> Iterator[TestClient]:
    """The app with its lifespan running and its model loaded (fails if `make models` has not built it)."""
    if not (settings.model_repository / "imagenet" / "1" / "model-settings.json").is_file():
        pytest.fail("models/imagenet is not built (run `make models`)")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_until_ready(client)
        yield client


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with started(VisionSettings(model_repository=MODELS, torch_threads=1, log_json=False)) as client:
        yield client


@pytest.fixture(scope="module")
def coffee() -> bytes:
    return COFFEE.read_bytes()


def reencode(data: bytes, fmt: str, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def classify(
    client: TestClient, data: bytes, name: str = "img", mime: str = "image/jpeg", **params: Any
) -> Any:
    return client.post(CLASSIFY, files={"file": (name, data, mime)}, params=params)


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The common error shape, with the request ID the response header carries."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) >= {"code", "message", "request_id"}
    assert error["request_id"] == response.headers["x-request-id"]
    assert error["message"]
    if code:
        assert error["code"] == code
    return error


def assert_oip_error(response: Any, status: int) -> str:
    """OIP's error shape on `/v2`: the message is a string."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert body["request_id"] == response.headers["x-request-id"]
    return str(body["error"])


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    """A real PNG of a smooth gradient: many pixels, a small file (zlib at its strongest)."""
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((width, height)).convert(mode).save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()


def _peak_rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


@contextmanager
def peak_memory() -> Iterator[list[float]]:
    """The growth of this process's peak resident memory over the block, in MiB (in the list it yields).

    Pillow allocates pixels with C's malloc, which tracemalloc does not see; the kernel's high-water
    mark does, and writing 5 to clear_refs resets it to the current size first.
    """
    if not sys.platform.startswith("linux"):
        pytest.skip("reads the peak resident memory from Linux's /proc")
    Path("/proc/self/clear_refs").write_text("5")
    before = _peak_rss_mib()
    growth: list[float] = []
    yield growth
    growth.append(_peak_rss_mib() - before)


def assert_espresso(body: dict[str, Any], top_k: int = 5) -> None:
    predictions = body["predictions"]
    assert len(predictions) == top_k
    assert "espresso" in [p["label"] for p in predictions]
    assert {p["class_id"] for p in predictions if p["label"] == "espresso"} == {ESPRESSO}
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)


# --- What works --------------------------------------------------------------------------------------


def test_coffee_photo_is_espresso(client: TestClient, coffee: bytes) -> None:
    response = classify(client, coffee, "coffee.jpg")
    assert response.status_code == 200, response.text
    body = response.json()
    assert_espresso(body)
    assert body["model"]["name"] == "imagenet"
    assert body["model"]["version"]
    assert response.headers["x-request-id"]


@pytest.mark.parametrize("top_k", [1, 3, 10])
def test_top_k_is_respected(client: TestClient, coffee: bytes, top_k: int) -> None:
    response = classify(client, coffee, top_k=top_k)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == top_k
    assert len({p["class_id"] for p in predictions}) == top_k
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)
    if top_k == 10:
        assert "espresso" in [p["label"] for p in predictions]


@pytest.mark.parametrize(("fmt", "kwargs"), [("PNG", {}), ("WEBP", {"quality": 95})])
def test_png_and_webp_of_the_same_photo(client: TestClient, coffee: bytes, fmt: str, kwargs: Any) -> None:
    data = reencode(coffee, fmt, **kwargs)
    # The declared type does not matter, the bytes do: send them as octet-stream.
    response = classify(client, data, f"coffee.{fmt.lower()}", "application/octet-stream")
    assert response.status_code == 200, response.text
    assert_espresso(response.json())


def test_transparent_and_grayscale_modes_are_accepted(client: TestClient, coffee: bytes) -> None:
    photo = Image.open(io.BytesIO(coffee))
    for mode in ("RGBA", "L", "P", "CMYK"):
        buffer = io.BytesIO()
        photo.convert(mode).save(buffer, "JPEG" if mode == "CMYK" else "PNG")
        response = classify(client, buffer.getvalue(), f"coffee-{mode}")
        assert response.status_code == 200, (mode, response.text)
        assert len(response.json()["predictions"]) == 5


def test_exif_orientation_is_applied(client: TestClient, coffee: bytes) -> None:
    """The photo stored on its side with an EXIF 'rotate 90' tag is classified like the upright one."""
    photo = Image.open(io.BytesIO(coffee))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer must rotate 90 degrees clockwise
    buffer = io.BytesIO()
    photo.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", quality=95, exif=exif)
    assert decode_image(buffer.getvalue(), max_pixels=10**6).size == photo.size
    upright = classify(client, coffee).json()["predictions"][0]
    rotated = classify(client, buffer.getvalue()).json()["predictions"][0]
    assert rotated["class_id"] == upright["class_id"]
    assert rotated["score"] == pytest.approx(upright["score"], abs=0.1)


# --- What is refused ---------------------------------------------------------------------------------


def test_text_file_is_unsupported_media_type(client: TestClient) -> None:
    error = assert_error(classify(client, b"hello, not an image\n", "a.jpg", "image/jpeg"), 415)
    assert "JPEG, PNG or WebP" in error["message"]


def test_gif_is_unsupported_media_type(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "GIF")
    error = assert_error(classify(client, buffer.getvalue(), "a.gif", "image/gif"), 415)
    assert "GIF" in error["message"]


def test_empty_file_is_refused(client: TestClient) -> None:
    error = assert_error(classify(client, b"", "empty.jpg"), 422)
    assert "empty" in error["message"]


def test_truncated_jpeg_is_refused(client: TestClient, coffee: bytes) -> None:
    error = assert_error(classify(client, coffee[: len(coffee) // 2], "half.jpg"), 422)
    assert "truncated" in error["message"]


def test_header_only_jpeg_is_refused(client: TestClient, coffee: bytes) -> None:
    assert_error(classify(client, coffee[:200], "header.jpg"), 422)


def test_decompression_bomb_is_refused(client: TestClient) -> None:
    """20000 x 20000 paletted pixels compress to ~50 kB of PNG but would need 400 MB to decode."""
    buffer = io.BytesIO()
    Image.new("P", (20_000, 20_000)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < 100_000
    error = assert_error(classify(client, buffer.getvalue(), "bomb.png", "image/png"), 413)
    assert "pixels" in error["message"]


# A 39-megapixel PNG: about 130 kB, far under the 10 MB upload limit, yet ~150 MiB once decoded (plus
# whatever copies the conversion makes); the default limit refuses it from the header.
LARGE_SIZE = (7200, 5400)


@pytest.fixture(scope="module")
def large_png() -> bytes:
    data = png(*LARGE_SIZE)
    assert len(data) < 1_000_000 and LARGE_SIZE[0] * LARGE_SIZE[1] > DEFAULT_MAX_PIXELS
    return data


def test_a_large_png_under_the_upload_limit_is_refused_before_decoding(
    client: TestClient, large_png: bytes
) -> None:
    with peak_memory() as growth:
        response = classify(client, large_png, "large.png", "image/png")
    error = assert_error(response, 413, "payload_too_large")
    assert "7200x5400 (38,880,000 pixels)" in error["message"]
    assert f"{DEFAULT_MAX_PIXELS:,}" in error["message"]
    # Decoding it would raise the peak by well over 100 MiB; the header costs nothing.
    assert growth[0] < 32, f"the peak memory grew by {growth[0]:.0f} MiB"


def test_a_large_png_is_refused_over_oip_too(client: TestClient, large_png: bytes) -> None:
    body = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(large_png).decode()],
            }
        ]
    }
    with peak_memory() as growth:
        response = client.post("/v2/models/imagenet/infer", json=body)
    message = assert_oip_error(response, 413)
    assert "7200x5400" in message and f"{DEFAULT_MAX_PIXELS:,}" in message
    assert growth[0] < 32, f"the peak memory grew by {growth[0]:.0f} MiB"


def test_the_default_limit_takes_a_4096_square_and_not_one_pixel_more(client: TestClient) -> None:
    """The limit is inclusive, and an image with an alpha channel at the limit is served."""
    side = 4096
    assert side * side == DEFAULT_MAX_PIXELS
    response = classify(client, png(side, side, "RGBA"), "square.png", "image/png")
    assert response.status_code == 200, response.text
    error = assert_error(classify(client, png(side + 1, side), "wider.png", "image/png"), 413)
    assert f"{side + 1}x{side}" in error["message"]


def test_a_large_jpeg_decodes_at_reduced_scale(client: TestClient) -> None:
    """A 12-megapixel JPEG is decoded at 1/4 scale (1000 x 750, still over the 512 px the resize
    wants): 3 MB of pixels instead of 48."""
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((4000, 3000)).convert("RGB").save(buffer, "JPEG", quality=90)
    with peak_memory() as growth:
        response = classify(client, buffer.getvalue(), "photo.jpg")
    assert response.status_code == 200, response.text
    assert growth[0] < 24, f"the peak memory grew by {growth[0]:.0f} MiB"


def test_missing_file_field_names_it(client: TestClient, coffee: bytes) -> None:
    response = client.post(CLASSIFY, files={"image": ("coffee.jpg", coffee, "image/jpeg")})
    error = assert_error(response, 422, "validation_error")
    assert [d["field"] for d in error["details"]] == ["file"]


def test_form_field_instead_of_file_is_refused(client: TestClient) -> None:
    """A multipart text field called 'file' (no filename) is not an upload."""
    error = assert_error(client.post(CLASSIFY, files={"file": (None, b"not a file")}), 422)
    assert error["details"][0]["field"] == "file"


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({}, 415),  # no body at all
        ({"json": {"file": "coffee.jpg"}}, 415),
        ({"data": {"file": "coffee.jpg"}}, 415),  # a url-encoded form
        ({"content": b"\xff\xd8\xff", "headers": {"content-type": "image/jpeg"}}, 415),
        ({"content": b"garbage", "headers": {"content-type": "multipart/form-data"}}, 400),
    ],
)
def test_not_a_multipart_upload_is_refused(client: TestClient, kwargs: dict[str, Any], status: int) -> None:
    assert_error(client.post(CLASSIFY, **kwargs), status)


@pytest.mark.parametrize("top_k", ["0", "11", "-1", "abc", "2.5"])
def test_bad_top_k_is_refused(client: TestClient, coffee: bytes, top_k: str) -> None:
    error = assert_error(classify(client, coffee, top_k=top_k), 422, "validation_error")
    assert [d["field"] for d in error["details"]] == ["top_k"]


def test_model_is_listed(client: TestClient) -> None:
    (model,) = client.get("/v1/models").json()["models"]
    assert model["name"] == "imagenet"
    assert model["state"] == "READY"
    assert model["domain"] == "vision"


# --- Limits and readiness, with their own settings ---------------------------------------------------


def test_oversized_upload_is_413(coffee: bytes) -> None:
    settings = VisionSettings(model_repository=MODELS, max_upload_bytes=16 * 1024, torch_threads=1)
    with started(settings) as small:
        assert len(coffee) > 16 * 1024
        error = assert_error(classify(small, coffee), 413, "payload_too_large")
        assert "16384" in error["message"]
        # Under the limit still works.
        thumb = io.BytesIO()
        Image.open(io.BytesIO(coffee)).resize((150, 100)).save(thumb, "JPEG")
        assert classify(small, thumb.getvalue()).status_code == 200


def test_pixel_limit_is_configurable(coffee: bytes) -> None:
    settings = VisionSettings(model_repository=MODELS, vision_max_image_pixels=100_000, torch_threads=1)
    with started(settings) as small:
        error = assert_error(classify(small, coffee), 413)  # 600 x 400 = 240,000 pixels
        assert "100,000" in error["message"]


def test_the_pixel_limit_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISION_MAX_IMAGE_PIXELS", "1000000")
    assert VisionSettings().vision_max_image_pixels == 1_000_000
    monkeypatch.setenv("VISION_MAX_IMAGE_PIXELS", "")  # empty counts as unset
    assert VisionSettings().vision_max_image_pixels == DEFAULT_MAX_PIXELS


def test_the_route_answers_503_without_its_model(tmp_path: Path, coffee: bytes) -> None:
    """An empty repository is a ready service with nothing to serve: the route says why."""
    settings = VisionSettings(model_repository=tmp_path / "nothing-here", torch_threads=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_until_ready(client)
        error = assert_error(classify(client, coffee), 503, "service_unavailable")
        assert "imagenet" in error["message"]
