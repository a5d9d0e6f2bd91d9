"""The optional response cache: hits on the same canonical input, misses on a new model version."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.cache import MemoryResponseCache
from gateway.config import GatewaySettings
from gateway.keys import FileKeyStore

IRIS = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


class Services:
    def __init__(self) -> None:
        self.version = "1"
        self.predictions = 0
        self.catalogue_reads = 0
        self.status = 200

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            self.catalogue_reads += 1
            return httpx.Response(200, json={"models": [{"name": "iris", "version": self.version}]})
        self.predictions += 1
        if self.status != 200:
            return httpx.Response(
                self.status, json={"error": {"code": "service_unavailable", "message": "x"}}
            )
        return httpx.Response(
            200, json={"label": "setosa", "model": {"name": "iris", "version": self.version}}
        )


def cached_app(tmp_path: Path, **settings: object) -> Iterator[tuple[TestClient, Services, str]]:
    config = GatewaySettings(api_keys_file=tmp_path / "keys.json", response_cache_enabled=True, **settings)
    key, _ = asyncio.run(FileKeyStore(config.api_keys_file).create("c", ("*",)))
    services = Services()
    with TestClient(create_app(config, transport=httpx.MockTransport(services))) as client:
        yield client, services, key


@pytest.fixture
def cached(tmp_path: Path) -> Iterator[tuple[TestClient, Services, str]]:
    yield from cached_app(tmp_path)


@pytest.fixture
def cached_vision(tmp_path: Path) -> Iterator[tuple[TestClient, Services, str]]:
    yield from cached_app(tmp_path, response_cache_vision=True)


def post(client: TestClient, key: str, body: bytes, path: str = "/v1/tabular/iris") -> httpx.Response:
    return client.post(path, content=body, headers={"X-API-Key": key, "content-type": "application/json"})


def test_same_canonical_input_hits(cached: tuple[TestClient, Services, str]) -> None:
    client, services, key = cached
    first = post(client, key, json.dumps(IRIS).encode())
    # Same values, other key order and spacing, an int where a float was: the same canonical input.
    reordered = dict(reversed(list({**IRIS, "sepal_width": 3.5}.items())))
    second = post(client, key, json.dumps(reordered, indent=2).encode())
    assert first.headers["x-cache"] == "miss" and second.headers["x-cache"] == "hit"
    assert second.json() == first.json()
    assert services.predictions == 1
    other = post(client, key, json.dumps({**IRIS, "petal_width": 0.3}).encode())
    assert other.headers["x-cache"] == "miss" and services.predictions == 2


def test_new_model_version_is_a_miss(
    cached: tuple[TestClient, Services, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, services, key = cached
    body = json.dumps(IRIS).encode()
    post(client, key, body)
    services.version = "2"
    client.app.state.gateway.model_versions.clear()  # type: ignore[attr-defined]  # skip the 5 s refresh
    response = post(client, key, body)
    assert response.headers["x-cache"] == "miss" and response.json()["model"]["version"] == "2"


def test_errors_are_not_cached(cached: tuple[TestClient, Services, str]) -> None:
    client, services, key = cached
    services.status = 503
    assert post(client, key, json.dumps(IRIS).encode()).status_code == 503
    services.status = 200
    assert post(client, key, json.dumps(IRIS).encode()).headers["x-cache"] == "miss"
    assert services.predictions == 2


def test_other_services_json_is_cached_too(cached: tuple[TestClient, Services, str]) -> None:
    client, services, key = cached
    first = post(client, key, b'{"text": "great", "lang": "en"}', "/v1/nlp/sentiment")
    second = post(client, key, b'{"lang":"en","text":"great"}', "/v1/nlp/sentiment")
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    # The route is part of the key: the same body elsewhere is another prediction.
    assert (
        post(client, key, b'{"text": "great", "lang": "en"}', "/v1/nlp/sentiment/batch").headers["x-cache"]
        == "miss"
    )
    assert services.predictions == 2


def test_a_body_that_is_not_json_is_not_cached(cached: tuple[TestClient, Services, str]) -> None:
    client, services, key = cached
    for _ in range(2):
        response = post(client, key, b"sepal_length=5.1")
        assert "x-cache" not in response.headers
    assert services.predictions == 2


def test_vision_not_cached_by_default(cached: tuple[TestClient, Services, str]) -> None:
    client, services, key = cached
    files = {"file": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")}
    for _ in range(2):
        response = client.post("/v1/vision/classify", files=files, headers={"X-API-Key": key})
        assert "x-cache" not in response.headers
    assert services.predictions == 2


def test_vision_cached_when_asked_keyed_on_bytes_and_query(
    cached_vision: tuple[TestClient, Services, str],
) -> None:
    client, services, key = cached_vision
    upload = (
        b"--b\r\ncontent-disposition: form-data; name=file; filename=a.jpg\r\n\r\n\xff\xd8\xff\r\n--b--\r\n"
    )
    headers = {"X-API-Key": key, "content-type": "multipart/form-data; boundary=b"}

    def classify(query: str) -> str:
        return client.post(f"/v1/vision/classify{query}", content=upload, headers=headers).headers["x-cache"]

    assert [classify("?top_k=3"), classify("?top_k=3"), classify("?top_k=4")] == ["miss", "hit", "miss"]
    assert services.predictions == 2


def test_memory_cache_expires_and_is_bounded() -> None:
    async def scenario() -> tuple[bytes | None, bytes | None, int]:
        cache = MemoryResponseCache(ttl_seconds=0.05, max_entries=2)
        await cache.put("a", b"1")
        fresh = await cache.get("a")
        await asyncio.sleep(0.1)
        stale = await cache.get("a")
        for name in ("b", "c", "d"):
            await cache.put(name, b"x")
        return fresh, stale, len(cache._entries)

    assert asyncio.run(scenario()) == (b"1", None, 2)


def test_vision_key_is_the_image_not_the_multipart_boundary(
    cached_vision: tuple[TestClient, Services, str],
) -> None:
    client, services, key = cached_vision
    image, other = b"\xff\xd8\xff-coffee", b"\xff\xd8\xff-chelsea"
    # httpx picks a fresh random boundary for every request, as browsers and requests do.
    answers = [
        client.post(
            "/v1/vision/classify", files={"file": ("a.jpg", data, "image/jpeg")}, headers={"X-API-Key": key}
        )
        for data in (image, image, other)
    ]
    assert [a.headers["x-cache"] for a in answers] == ["miss", "hit", "miss"]
    assert services.predictions == 2


def test_a_form_the_service_cannot_read_is_not_cached(
    cached_vision: tuple[TestClient, Services, str],
) -> None:
    client, services, key = cached_vision
    headers = {"X-API-Key": key, "content-type": "multipart/form-data; boundary=b"}
    for _ in range(2):
        response = client.post("/v1/vision/classify", content=b"not a form", headers=headers)
        assert "x-cache" not in response.headers
    assert services.predictions == 2


async def test_identical_misses_at_once_ask_the_service_once(tmp_path: Path) -> None:
    config = GatewaySettings(api_keys_file=tmp_path / "keys.json", response_cache_enabled=True)
    key, _ = await FileKeyStore(config.api_keys_file).create("c", ("*",))
    release, arrived = asyncio.Event(), asyncio.Event()
    predictions = 0

    async def service(request: httpx.Request) -> httpx.Response:
        nonlocal predictions
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"models": [{"name": "iris", "version": "1"}]})
        predictions += 1
        arrived.set()
        await release.wait()  # every other request arrives while this one is at the service
        return httpx.Response(200, json={"label": "setosa"})

    app = create_app(config, transport=httpx.MockTransport(service))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway") as client,
    ):

        async def call() -> httpx.Response:
            return await post_async(client, key)

        first = asyncio.create_task(call())
        await arrived.wait()
        others = [asyncio.create_task(call()) for _ in range(5)]
        # Nothing here waits on real I/O: yielding lets every request run as far as it can. Without
        # single flight each would now be at the service too.
        for _ in range(1000):
            await asyncio.sleep(0)
        assert predictions == 1
        assert not any(task.done() for task in others)
        release.set()
        answers = await asyncio.gather(first, *others)
    assert predictions == 1
    assert [a.status_code for a in answers] == [200] * 6
    assert sorted(a.headers["x-cache"] for a in answers) == ["hit"] * 5 + ["miss"]


async def post_async(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.post(
        "/v1/tabular/iris",
        content=json.dumps(IRIS),
        headers={"X-API-Key": key, "content-type": "application/json"},
    )


def test_an_open_circuit_skips_the_cache_and_never_probes_the_service(
    cached: tuple[TestClient, Services, str],
) -> None:
    client, services, key = cached
    breaker = client.app.state.gateway.upstreams["tabular"].breaker  # type: ignore[attr-defined]
    for _ in range(breaker.failure_threshold):
        breaker.admit().failure()
    assert breaker.state == "open"
    calls_before = services.predictions + services.catalogue_reads
    response = post(client, key, json.dumps(IRIS).encode())
    assert response.status_code == 503
    assert "x-cache" not in response.headers
    assert services.predictions + services.catalogue_reads == calls_before
