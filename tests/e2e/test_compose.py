"""End to end through `docker compose`: the real images, talking only to the gateway's published port.

The tests run in file order on one stack (module fixtures in conftest.py): predictions on every public
route, nothing but the gateway published, an nlp-service outage and its recovery, a Redis restart, and
finally `down -v` leaving nothing behind.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import ComposeStack

pytestmark = pytest.mark.e2e

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VIRGINICA = {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
POSITIVE = "I love this, what a wonderful day"
NEGATIVE = "This is terrible, I hate it"
MODEL_SERVICES = ("tabular-service", "vision-service", "nlp-service", "redis")


def fraud_example(client: httpx.Client) -> dict[str, Any]:
    """The first request example the gateway's OpenAPI document gives for /v1/tabular/fraud."""
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/tabular/fraud"]["post"]["requestBody"]["content"]["application/json"]
    if "examples" in body:  # OpenAPI media-type examples: {name: {"value": ...}}
        return next(iter(body["examples"].values()))["value"]  # type: ignore[no-any-return]
    if "example" in body:
        return body["example"]  # type: ignore[no-any-return]
    schema = body["schema"]
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema["examples"][0]  # type: ignore[no-any-return]


def classify(client: httpx.Client) -> httpx.Response:
    with (ASSETS / "coffee.jpg").open("rb") as image:
        return client.post("/v1/vision/classify", files={"file": ("coffee.jpg", image, "image/jpeg")})


def assert_tabular_and_vision_work(client: httpx.Client) -> None:
    iris = client.post("/v1/tabular/iris", json=SETOSA)
    assert iris.status_code == 200, iris.text
    assert iris.json()["label"] == "setosa"
    vision = classify(client)
    assert vision.status_code == 200, vision.text
    assert "espresso" in [p["label"] for p in vision.json()["predictions"][:5]]


def assert_error_shape(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert {"code", "message", "request_id"} <= set(error), error
    assert error["request_id"]
    return error  # type: ignore[no-any-return]


def test_stack_comes_up_healthy(stack: ComposeStack) -> None:
    for service in ("gateway", *MODEL_SERVICES):
        assert stack.health(service) == ["healthy"], service
    print(f"[e2e] up -> all healthy: {stack.up_seconds:.1f}s")
    assert httpx.get(f"{stack.base_url}/health/live", timeout=5).status_code == 200
    ready = httpx.get(f"{stack.base_url}/health/ready", timeout=5)
    assert ready.status_code == 200, ready.text


def test_gateway_metrics_only_on_its_internal_port(stack: ComposeStack, client: httpx.Client) -> None:
    assert client.get("/v1/models").status_code == 200
    assert httpx.get(f"{stack.base_url}/metrics", timeout=5).status_code == 404
    port = stack.env.get("GATEWAY_METRICS_PORT") or "9100"

    def scrape(url: str) -> str:
        """`url` fetched from inside the gateway's container (the metrics port is not published)."""
        code = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=5).read().decode())"
        return stack.run("exec", "-T", "gateway", "python", "-c", code, url).stdout

    own = scrape(f"http://127.0.0.1:{port}/metrics")
    assert 'modelgate_http_requests_total{method="GET",route="/v1/models",service="gateway"' in own
    # The model services keep /metrics on their port, on the internal network only.
    assert 'modelgate_model_ready{model="iris"}' in scrape("http://tabular-service:8000/metrics")


def test_tabular_iris(client: httpx.Client) -> None:
    answer = client.post("/v1/tabular/iris", json=SETOSA)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["label"] == "setosa"
    assert body["model"]["name"] == "iris"
    assert answer.headers.get("x-request-id")


def test_tabular_iris_batch(client: httpx.Client) -> None:
    answer = client.post("/v1/tabular/iris/batch", json={"instances": [SETOSA, VIRGINICA]})
    assert answer.status_code == 200, answer.text
    assert [r["label"] for r in answer.json()["results"]] == ["setosa", "virginica"]


def test_tabular_fraud_openapi_example(client: httpx.Client) -> None:
    example = fraud_example(client)
    answer = client.post("/v1/tabular/fraud", json=example)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert 0.0 <= body["fraud_probability"] <= 1.0
    assert body["is_fraud"] == (body["fraud_probability"] >= body["threshold"])
    assert body["model"]["name"] == "fraud"


def test_vision_classify(client: httpx.Client) -> None:
    answer = classify(client)
    assert answer.status_code == 200, answer.text
    labels = [p["label"] for p in answer.json()["predictions"][:5]]
    assert "espresso" in labels, labels


def test_nlp_sentiment(client: httpx.Client) -> None:
    for text, label in ((POSITIVE, "positive"), (NEGATIVE, "negative")):
        answer = client.post("/v1/nlp/sentiment", json={"text": text})
        assert answer.status_code == 200, answer.text
        assert answer.json()["label"] == label, (text, answer.json())


def test_nlp_sentiment_batch(client: httpx.Client) -> None:
    answer = client.post("/v1/nlp/sentiment/batch", json={"texts": [POSITIVE, NEGATIVE]})
    assert answer.status_code == 200, answer.text
    assert [r["label"] for r in answer.json()["results"]] == ["positive", "negative"]


def test_models_catalog(client: httpx.Client) -> None:
    answer = client.get("/v1/models")
    assert answer.status_code == 200, answer.text
    names = {m["name"] for m in answer.json()["models"]}
    assert {"iris", "fraud", "imagenet", "sentiment"} <= names, names
    assert answer.json().get("unavailable", []) == []


def test_a_model_dropped_into_the_mounted_repository_is_served(stack: ComposeStack) -> None:
    """No rebuild, no restart: a folder copied into the host repository is served by the running
    containers and reached through the gateway with tritonclient."""
    import joblib
    import numpy as np
    import tritonclient.http as triton
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression

    features, target = load_wine(return_X_y=True)
    model = LogisticRegression(max_iter=5000).fit(features, target)
    staging = stack.repository / ".staging-wine"
    staging.mkdir(mode=0o755)
    joblib.dump(model, staging / "model.joblib")
    (staging / "model-settings.json").write_text('{"runtime": "sklearn"}')
    for path in staging.iterdir():
        path.chmod(0o644)
    (stack.repository / "wine").mkdir(mode=0o755)
    staging.rename(stack.repository / "wine" / "1")

    created = stack.run(
        "exec", "-T", "gateway", "python", "-m", "gateway.keys", "create",
        "--name", "e2e-admin", "--scopes", "admin,tabular",
    )  # fmt: skip
    key = next(t for t in created.stdout.split() if t.startswith("mg_"))
    headers = {"X-API-Key": key}
    with triton.InferenceServerClient(url=f"127.0.0.1:{stack.port}", network_timeout=60) as client:
        client.load_model("wine", headers=dict(headers))  # answers once every worker has it
        rows = features[:5].astype(np.float64)
        tensor = triton.InferInput("input", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows)
        result = client.infer("wine", [tensor], headers=dict(headers))
        np.testing.assert_array_equal(result.as_numpy("predict"), model.predict(rows))
        index = {
            (e["name"], e.get("version")): e["state"]
            for e in client.get_model_repository_index(headers=dict(headers))
        }
        assert index[("wine", "1")] == "READY" and index[("iris", "1")] == "READY"


def test_a_key_is_required(stack: ComposeStack) -> None:
    answer = httpx.post(f"{stack.base_url}/v1/tabular/iris", json=SETOSA, timeout=10)
    assert_error_shape(answer, 401)


def test_only_the_gateway_publishes_a_port(stack: ComposeStack) -> None:
    for service in MODEL_SERVICES:
        (cid,) = stack.container_ids(service)
        info = stack.inspect(cid)
        bindings = info["HostConfig"]["PortBindings"] or {}  # type: ignore[index]
        published = {p: b for p, b in (info["NetworkSettings"]["Ports"] or {}).items() if b}  # type: ignore[index]
        assert not bindings and not published, (service, bindings, published)
        port = stack.run("port", service, "8000" if service != "redis" else "6379", check=False)
        assert port.returncode != 0 or not port.stdout.strip(), (service, port.stdout)
        # ...and they sit only on internal networks: Redis on its own, which only the gateway shares.
        networks = set(info["NetworkSettings"]["Networks"])  # type: ignore[index]
        expected = "keystore" if service == "redis" else "backend"
        assert networks == {f"{stack.project}_{expected}"}, (service, networks)
    (gateway,) = stack.container_ids("gateway")
    ports = stack.inspect(gateway)["NetworkSettings"]["Ports"]  # type: ignore[index]
    assert ports["8000/tcp"][0]["HostPort"] == str(stack.port)  # type: ignore[index]


def test_only_the_gateway_reaches_redis_and_only_with_the_password(stack: ComposeStack) -> None:
    """The model services decode untrusted uploads: one taken over must not reach the key store."""
    connect = "import socket; socket.create_connection(('redis', 6379), timeout=3)"
    for service in ("tabular-service", "vision-service", "nlp-service"):
        probe = stack.run("exec", "-T", service, "python", "-c", connect, check=False)
        # Not even a name to connect to: Redis is on a network they are not on.
        assert probe.returncode != 0 and "gaierror" in probe.stderr, (service, probe.stderr)
    no_password = "import redis; redis.Redis(host='redis', socket_timeout=3).ping()"
    probe = stack.run("exec", "-T", "gateway", "python", "-c", no_password, check=False)
    assert probe.returncode != 0 and "AuthenticationError" in probe.stderr, probe.stderr
    with_password = "import os, redis; print(redis.Redis.from_url(os.environ['REDIS_URL']).ping())"
    assert stack.run("exec", "-T", "gateway", "python", "-c", with_password).stdout.strip() == "True"


def test_nlp_outage_is_contained_and_recovers(stack: ComposeStack, client: httpx.Client) -> None:
    (gateway,) = stack.container_ids("gateway")
    gateway_started = stack.inspect(gateway)["State"]["StartedAt"]  # type: ignore[index]
    stack.run("stop", "nlp-service")
    try:
        for path, body in (
            ("/v1/nlp/sentiment", {"text": POSITIVE}),
            ("/v1/nlp/sentiment/batch", {"texts": [POSITIVE]}),
        ):
            started = time.monotonic()
            answer = client.post(path, json=body)
            elapsed = time.monotonic() - started
            assert_error_shape(answer, 503)
            print(f"[e2e] nlp-service stopped: {path} -> 503 in {elapsed:.3f}s")
            assert elapsed < 1.0, f"{path}: 503 took {elapsed:.2f}s"
        assert_tabular_and_vision_work(client)
        # Still ready (it serves tabular and vision), naming nlp once its kept verdict is renewed.
        deadline = time.monotonic() + 5
        ready_url = f"{stack.base_url}/health/ready"
        while (ready := httpx.get(ready_url, timeout=5)).json()["checks"]["nlp"] == "ready":
            assert ready.status_code == 200 and time.monotonic() < deadline, ready.text
            time.sleep(0.1)
        assert ready.status_code == 200 and ready.json()["status"] == "degraded", ready.text
        assert ready.json()["checks"]["nlp"] == "unreachable", ready.text
        assert stack.health("gateway") == ["healthy"]
    finally:
        stack.run("start", "nlp-service")
    stack.wait_healthy("nlp-service")

    deadline = time.monotonic() + 30
    while True:
        answer = client.post("/v1/nlp/sentiment", json={"text": POSITIVE})
        if answer.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert answer.status_code == 200, f"nlp did not recover through the gateway: {answer.text}"
    assert answer.json()["label"] == "positive"
    # Recovered without touching the gateway.
    info = stack.inspect(gateway)
    assert info["State"]["StartedAt"] == gateway_started  # type: ignore[index]
    assert info["RestartCount"] == 0
    assert httpx.get(f"{stack.base_url}/health/ready", timeout=5).status_code == 200


# (key, unknown key) status pairs right after the Redis restart, for the test that follows.
AFTER_REDIS_RESTART: list[tuple[int, int]] = []


def test_key_survives_redis_restart(stack: ComposeStack, client: httpx.Client) -> None:
    stack.run("restart", "redis")
    stack.wait_healthy("redis", timeout=60)
    # Past the gateway's key cache (KEY_CACHE_SECONDS, 5 s): every lookup goes to the restarted Redis.
    time.sleep(6)
    for _ in range(8):  # several rounds, to reach every gateway worker
        good = client.post("/v1/tabular/iris", json=SETOSA)
        bad = httpx.post(
            f"{stack.base_url}/v1/tabular/iris", json=SETOSA, headers={"X-API-Key": "mg_nope"}, timeout=10
        )
        AFTER_REDIS_RESTART.append((good.status_code, bad.status_code))
    # The key was persisted (append-only file on the named volume) and Redis is really asked: an
    # unknown key is refused.
    assert AFTER_REDIS_RESTART[-1] == (200, 401), AFTER_REDIS_RESTART


def test_redis_restart_fails_no_request(stack: ComposeStack) -> None:
    """Once Redis answers again, no request may fail because the gateway still holds connections to
    the old Redis process."""
    assert AFTER_REDIS_RESTART, "runs after test_key_survives_redis_restart"
    assert all(o == (200, 401) for o in AFTER_REDIS_RESTART), (
        f"(key, unknown key) statuses right after a Redis restart: {AFTER_REDIS_RESTART}"
    )


def test_redis_outage_under_load_is_what_the_readme_says(stack: ComposeStack, client: httpx.Client) -> None:
    """Redis stopped for 10 s with load running (README, "When Redis is down"): a key Redis confirmed
    keeps working in every gateway worker (rate limits fail open), an unknown key gets 503 with
    Retry-After (never 401: it cannot be verified), the gateway stays live and ready with Redis reported,
    nothing restarts; when Redis is back, an unknown key is 401 again."""
    gateway = stack.container_ids("gateway")[0]
    restarts = stack.inspect(gateway)["RestartCount"]
    # Every gateway worker must have had the key confirmed by Redis: fresh connections spread over the
    # workers, until the access log shows each worker's pid with this key.
    since = str(int(time.time()) - 1)
    workers = int(stack.env.get("GATEWAY_WORKERS", "2"))
    for attempt in range(200):
        assert (
            httpx.post(f"{stack.base_url}/v1/tabular/iris", json=SETOSA, headers=client.headers).status_code
            == 200
        )
        if attempt % 10 == 9 and len(key_pids(stack, since)) >= workers:
            break
    assert len(key_pids(stack, since)) >= workers, "not every gateway worker saw the key"

    statuses: dict[str, list[int]] = {"key": [], "nlp": []}
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            with httpx.Client(base_url=stack.base_url, headers=client.headers, timeout=30) as fresh:
                statuses["key"].append(fresh.post("/v1/tabular/iris", json=SETOSA).status_code)
                statuses["nlp"].append(fresh.post("/v1/nlp/sentiment", json={"text": POSITIVE}).status_code)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        stack.run("stop", "redis")
        outage_started = time.monotonic()
        unknown = []
        while time.monotonic() - outage_started < 10:
            answer = httpx.post(
                f"{stack.base_url}/v1/tabular/iris",
                json=SETOSA,
                headers={"X-API-Key": "mg_outage"},
                timeout=10,
            )
            unknown.append((answer.status_code, answer.headers.get("retry-after")))
            time.sleep(1)
        live = httpx.get(f"{stack.base_url}/health/live", timeout=10)
        ready = httpx.get(f"{stack.base_url}/health/ready", timeout=10)
    finally:
        stack.run("start", "redis")
        stop.set()
        loader.join(60)
    stack.wait_healthy("redis", timeout=60)
    after = None
    for _ in range(20):  # a worker leaves Redis alone for 1 s after a failed call
        after = httpx.post(
            f"{stack.base_url}/v1/tabular/iris", json=SETOSA, headers={"X-API-Key": "mg_after"}, timeout=10
        ).status_code
        if after == 401:
            break
        time.sleep(0.5)
    print(
        f"[e2e] Redis down 10 s under load: {len(statuses['key'])} known-key requests "
        f"{sorted(set(statuses['key']))}, nlp {sorted(set(statuses['nlp']))}, unknown key {unknown}"
    )
    assert statuses["key"] and set(statuses["key"]) == {200}, statuses["key"]
    assert set(statuses["nlp"]) == {200}, statuses["nlp"]
    # Never looked up before, so never cached: each lookup meets the outage.
    assert unknown and all(u == (503, "1") for u in unknown), unknown
    assert live.status_code == 200
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["redis"] == "unreachable", ready.text
    assert stack.inspect(gateway)["RestartCount"] == restarts
    assert stack.health("gateway") == ["healthy"]
    assert after == 401


def key_pids(stack: ComposeStack, since: str) -> set[str]:
    """The gateway worker pids whose access log has a request with the e2e key since `since`."""
    logs = stack.run("logs", "--no-color", "--since", since, "gateway", check=False).stdout
    return {
        line.split('"pid":')[1].split(",")[0]
        for line in logs.splitlines()
        if '"modelgate.access"' in line and '"key_name":"e2e"' in line and '"pid":' in line
    }


def test_scaled_nlp_replicas_share_the_traffic(stack: ComposeStack, client: httpx.Client) -> None:
    """`--scale nlp-service=2`: no fixed names or host ports get in the way, and the gateway (which
    resolves every replica's address itself) sends requests to both."""
    stack.run(
        "up",
        "-d",
        "--no-build",
        "--no-deps",
        "--wait",
        "--scale",
        "nlp-service=2",
        "nlp-service",
        timeout=600,
    )
    replicas = stack.container_ids("nlp-service")
    assert len(replicas) == 2
    assert stack.health("nlp-service") == ["healthy", "healthy"]
    time.sleep(6)  # the gateway re-resolves service names every 5 s
    since = str(int(time.time()))
    for _ in range(20):
        answer = client.post("/v1/nlp/sentiment", json={"text": POSITIVE})
        assert answer.status_code == 200, answer.text
    served = []
    for cid in replicas:
        logs = subprocess.run(
            ["docker", "logs", "--since", since, cid], capture_output=True, text=True, check=True
        )
        # The service's JSON access log: one line per request, health checks aside.
        served.append(sum("/sentiment" in line for line in (logs.stdout + logs.stderr).splitlines()))
    print(f"[e2e] 20 requests over 2 nlp-service replicas: {served}")
    assert all(n > 0 for n in served), served


def test_down_removes_everything(stack: ComposeStack) -> None:
    stack.down()
    assert stack.leftovers() == {"containers": [], "networks": [], "volumes": []}
