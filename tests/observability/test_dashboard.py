"""The Grafana dashboard and its provisioning, without Grafana (it cannot run here): the panels use the
provisioned datasource, and every query parses in a real Prometheus (Debian's package; started here on
a free port, with our rules loaded). That each query returns data from the real stack is
tests/e2e/test_observability.py's check.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "modelgate.json"
RULES = REPO / "deploy" / "prometheus" / "rules"


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every target of every panel."""
    panels: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel["targets"]]


def test_every_panel_queries_the_provisioned_prometheus() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["url"] == "http://prometheus:9090"  # the compose service
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "modelgate"
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "modelgate.yml").read_text())
    (files,) = provider["providers"]
    # Where compose.yaml mounts deploy/grafana/dashboards.
    assert files["options"]["path"] == "/var/lib/modelgate-dashboards"
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    mounts = {(m["source"], m["target"]) for m in compose["services"]["grafana"]["volumes"] if "source" in m}
    assert ("./deploy/grafana/dashboards", files["options"]["path"]) in mounts
    assert ("./deploy/grafana/provisioning", "/etc/grafana/provisioning") in mounts


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus with our rules and nothing to scrape."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run scripts/ensure_test_services.sh (make test does)")
    work = tmp_path_factory.mktemp("prometheus")
    config = {"global": {"evaluation_interval": "1s"}, "rule_files": [str(RULES / "*.rules.yml")]}
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    args = [f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}"]
    process = subprocess.Popen(
        [binary, *args, f"--web.listen-address={url.removeprefix('http://')}"],
        stdout=subprocess.DEVNULL,
        stderr=(work / "log").open("w"),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prometheus did not become ready:\n{(work / 'log').read_text()[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_every_dashboard_query_parses_in_prometheus(prometheus: str) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 14
    refused = {}
    for title, expr in queries:
        answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        if answer.status_code != 200 or answer.json()["status"] != "success":
            refused[title] = answer.text
    assert refused == {}


def test_prometheus_loads_every_rule(prometheus: str) -> None:
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    names = {group["name"]: len(group["rules"]) for group in groups}
    assert names == {"modelgate-recording": 15, "modelgate-alerts": 10}
    broken = [rule["name"] for group in groups for rule in group["rules"] if rule["health"] == "err"]
    assert broken == []
