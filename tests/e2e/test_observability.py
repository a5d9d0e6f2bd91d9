"""The `observability` profile on the e2e stack (conftest.py turns it on, scraping and evaluating every
second): Prometheus finds every replica by DNS, `--scale`d ones included, and all answer; the recording
rules return the traffic this test sends; every query of the Grafana dashboard returns data.
Everything is read from Prometheus's HTTP API on the 127.0.0.1 port the fixture published.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import pytest

if TYPE_CHECKING:
    from tests.e2e.conftest import ComposeStack

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "modelgate.json"
IRIS_OIP = {"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
# The route template the gateway labels its OIP infer requests with (modelgate_core.oip.paths).
OIP_INFER = "/v2/models/{name}/infer"
SENT = 60
# Compose service -> port Prometheus scrapes (the gateway's METRICS_PORT, the services' own port).
SCRAPED = {"gateway": 9100, "tabular-service": 8000, "vision-service": 8000, "nlp-service": 8000}

T = TypeVar("T")


def prometheus_url(stack: ComposeStack) -> str:
    return f"http://127.0.0.1:{stack.env['PROMETHEUS_PORT']}"


def query(stack: ComposeStack, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prometheus_url(stack)}/api/v1/query", params={"query": expr}, timeout=10)
    assert answer.status_code == 200, f"{expr}: {answer.text}"
    result: list[dict[str, Any]] = answer.json()["data"]["result"]
    return result


def value(stack: ComposeStack, expr: str) -> float | None:
    """The single sample `expr` returns, or None while it returns none."""
    result = query(stack, expr)
    assert len(result) <= 1, f"{expr} returned several series: {result}"
    return float(result[0]["value"][1]) if result else None


def poll(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """`check()` until it returns something other than None (or False), within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.5)


def gateway_counter(stack: ComposeStack, name: str, labels: dict[str, str]) -> float:
    """The sum of a counter's series that carry `labels`, as the gateway itself exports it now (its
    METRICS_PORT, from inside its network)."""
    code = (
        "import sys, urllib.request;"
        "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    )
    text = stack.run("exec", "-T", "gateway", "python", "-c", code, "http://127.0.0.1:9100/metrics").stdout
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    total = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}{{"):
            series, sample = line.rsplit(" ", 1)
            # Label values here are model names and statuses: no commas or quotes inside them.
            if wanted <= set(series[len(name) + 1 : -1].split(",")):
                total += float(sample)
    return total


def infer_iris(client: httpx.Client) -> httpx.Response:
    return client.post("/v2/models/iris/infer", json=IRIS_OIP)


def backend_addresses(stack: ComposeStack, service: str) -> set[str]:
    network = f"{stack.project}_backend"
    addresses = set()
    for cid in stack.container_ids(service):
        networks = stack.inspect(cid)["NetworkSettings"]["Networks"]  # type: ignore[index]
        addresses.add(networks[network]["IPAddress"])
    return addresses


def test_prometheus_publishes_only_its_port_on_localhost(stack: ComposeStack) -> None:
    (cid,) = stack.container_ids("prometheus")
    info = stack.inspect(cid)
    networks = set(info["NetworkSettings"]["Networks"])  # type: ignore[index]
    assert networks == {f"{stack.project}_backend", f"{stack.project}_monitoring"}
    ports = info["NetworkSettings"]["Ports"]  # type: ignore[index]
    assert ports == {"9090/tcp": [{"HostIp": "127.0.0.1", "HostPort": stack.env["PROMETHEUS_PORT"]}]}
    assert httpx.get(f"{prometheus_url(stack)}/-/ready", timeout=5).status_code == 200
    # The scrape interval the fixture asked for reached the rendered configuration (start.sh).
    config = httpx.get(f"{prometheus_url(stack)}/api/v1/status/config", timeout=5).json()["data"]["yaml"]
    assert "scrape_interval: 1s" in config


def test_every_replica_is_a_target_and_up(stack: ComposeStack) -> None:
    """Two nlp-service replicas (the compose tests may have scaled it already): DNS service discovery
    finds each container's address, and every target of every service answers."""
    stack.run(
        "up", "-d", "--no-build", "--no-deps", "--wait", "--scale", "nlp-service=2", "nlp-service",
        timeout=600,
    )  # fmt: skip
    expected = {
        service: {f"{address}:{port}" for address in backend_addresses(stack, service)}
        for service, port in SCRAPED.items()
    }
    assert len(expected["nlp-service"]) == 2

    def targets() -> dict[str, dict[str, str]] | None:
        answer = httpx.get(f"{prometheus_url(stack)}/api/v1/targets", params={"state": "active"}, timeout=10)
        found: dict[str, dict[str, str]] = {}
        for target in answer.json()["data"]["activeTargets"]:
            found.setdefault(target["labels"]["job"], {})[target["labels"]["instance"]] = target["health"]
        wanted = {job: dict.fromkeys(instances, "up") for job, instances in expected.items()}
        return found if {job: found.get(job) for job in wanted} == wanted else None

    started = time.monotonic()
    try:
        found = poll(targets, 60, "every replica a target, and up")
    except AssertionError:
        answer = httpx.get(f"{prometheus_url(stack)}/api/v1/targets", timeout=10).json()
        raise AssertionError(f"expected {expected}, Prometheus has {json.dumps(answer)[:3000]}") from None
    print(f"\n[e2e] Prometheus targets up {time.monotonic() - started:.1f}s after the scale: {found}")
    assert found["prometheus"] == {"127.0.0.1:9090": "up"}
    assert value(stack, 'count(up{job!="prometheus"} == 1)') == sum(len(i) for i in expected.values())


def test_recording_rules_return_the_traffic_just_sent(stack: ComposeStack, client: httpx.Client) -> None:
    """SENT OIP requests to iris: Prometheus's raw counter goes up by exactly SENT (the gateway's own
    /metrics says the same), and the recording rules per model and per route show that traffic."""
    labels = {"model": "iris", "status": "200"}
    raw = 'sum(modelgate_model_requests_total{model="iris", status="200"})'
    # The gateway's model directory may not list iris yet (it asks the services on a schedule): the
    # first 200 starts the count.
    poll(lambda: infer_iris(client).status_code == 200, 60, "a first 200 from /v2/models/iris/infer")
    before = gateway_counter(stack, "modelgate_model_requests_total", labels)
    poll(lambda: value(stack, raw) == before, 30, f"Prometheus's counter at the gateway's {before}")
    # A rate extrapolates the increase over the samples it has to the whole window: over a series only
    # seconds old that is a lot. Ten scrapes of it first keep that within 15%.
    samples = 'count_over_time(modelgate_model_requests_total{model="iris", status="200"}[1m])'
    poll(lambda: (value(stack, f"min({samples})") or 0) >= 10, 30, "ten scrapes of the iris counter")
    started = time.monotonic()
    for _ in range(SENT):
        answer = infer_iris(client)
        assert answer.status_code == 200, answer.text
    sent_seconds = time.monotonic() - started
    after = gateway_counter(stack, "modelgate_model_requests_total", labels)
    assert after - before == SENT
    poll(lambda: value(stack, raw) == after, 30, f"Prometheus's counter at the gateway's {after}")

    # A rate over 1 minute times 60: the requests sent (Prometheus extrapolates a little to the window's
    # edges), as long as the window still holds them all.
    def per_minute(expr: str) -> float | None:
        rate = value(stack, expr)
        return rate * 60 if rate is not None and rate * 60 >= SENT * 0.9 else None

    model_rate = poll(
        lambda: per_minute('model:modelgate_model_requests:rate1m{model="iris"}'), 20, "iris rate1m"
    )
    route_rate = poll(
        lambda: per_minute(
            f'service_route:modelgate_http_requests:rate1m{{service="gateway", route="{OIP_INFER}"}}'
        ),
        20,
        "gateway OIP route rate1m",
    )
    calls = poll(lambda: per_minute('model:modelgate_model_inference:rate1m{model="iris"}'), 20, "iris calls")
    print(
        f"[e2e] {SENT} requests in {sent_seconds:.1f}s; per minute, Prometheus's recording rules say: "
        f"model {model_rate:.1f}, gateway route {route_rate:.1f}, model calls {calls:.1f}"
    )
    # Only this test uses the OIP routes now; the /v1 routes also call iris (the compose tests' traffic
    # may still be in the window), so the model calls have no upper bound.
    assert model_rate <= SENT * 1.3
    assert route_rate <= SENT * 1.3
    # 0 exactly when the gateway answered iris with no 5xx (a 503 while its directory did not list iris
    # yet would count): the `or ... * 0` that keeps an error-free model's ratio a 0 rather than no data.
    ratio = value(stack, 'model:modelgate_model_errors:ratio_rate5m{model="iris"}')
    server_errors = sum(
        gateway_counter(stack, "modelgate_model_requests_total", {"model": "iris", "status": str(status)})
        for status in (500, 502, 503, 504)
    )
    if server_errors == 0:
        assert ratio == 0, ratio
    else:
        assert ratio is not None and 0 < ratio < 1, (ratio, server_errors)
    p99 = value(
        stack,
        "service_route:modelgate_http_request_duration_seconds:quantile5m"
        f'{{service="gateway", route="{OIP_INFER}", quantile="0.99"}}',
    )
    assert p99 is not None and 0 < p99 < 2, p99
    batch = value(stack, 'model:modelgate_model_batch_size:mean5m{model="iris"}')
    assert batch is not None and batch >= 1, batch


def test_every_dashboard_query_returns_data(stack: ComposeStack, client: httpx.Client) -> None:
    """After traffic on every service, a few client errors and some rate-limit refusals (a key allowed
    one request), each query of each panel returns at least one series."""
    poll(lambda: infer_iris(client).status_code == 200, 60, "a 200 from /v2/models/iris/infer")
    for _ in range(3):
        assert client.post("/v1/tabular/iris", json=SETOSA).status_code == 200
        assert client.post("/v1/nlp/sentiment", json={"text": "what a lovely day"}).status_code == 200
        with (REPO / "tests" / "assets" / "coffee.jpg").open("rb") as image:
            files = {"file": ("coffee.jpg", image, "image/jpeg")}
            assert client.post("/v1/vision/classify", files=files).status_code == 200
    bad_key = httpx.post(f"{stack.base_url}/v1/tabular/iris", json=SETOSA, headers={"X-API-Key": "mg_nope"})
    assert bad_key.status_code == 401
    created = stack.run(
        "exec", "-T", "gateway", "python", "-m", "gateway.keys", "create",
        "--name", "e2e-limited", "--scopes", "tabular", "--rate", "0.01", "--burst", "1",
    )  # fmt: skip
    (limited,) = [token for token in created.stdout.split() if token.startswith("mg_")]
    statuses = [
        httpx.post(
            f"{stack.base_url}/v1/tabular/iris", json=SETOSA, headers={"X-API-Key": limited}
        ).status_code
        for _ in range(4)
    ]
    assert statuses == [200, 429, 429, 429]

    panels = json.loads(DASHBOARD.read_text())["panels"]
    queries = [(panel["title"], target["expr"]) for panel in panels for target in panel["targets"]]

    missing: list[str] = []

    def all_answered() -> bool:
        missing[:] = [f"{title}: {expr}" for title, expr in queries if not query(stack, expr)]
        return not missing

    started = time.monotonic()
    try:
        poll(all_answered, 60, "every dashboard query returns data")
    except AssertionError:
        raise AssertionError("dashboard queries with no data:\n" + "\n".join(missing)) from None
    print(
        f"[e2e] all {len(queries)} queries of {len(panels)} panels return data"
        f" ({time.monotonic() - started:.1f}s after the traffic)"
    )
