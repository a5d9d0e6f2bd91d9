"""docs/metrics.md is what scripts/metrics_table.py makes of the code (the drift check), the script finds
metrics however a module spells the constructor, and every metric the rules and the dashboard query
exists in the code.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import metrics_table  # noqa: E402

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "modelgate.json"
_HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")


def test_docs_metrics_md_is_what_the_script_generates() -> None:
    expected = metrics_table.render()
    actual = metrics_table.OUTPUT.read_text()
    assert actual == expected, "docs/metrics.md is out of date: run `make metrics-doc` and commit it"


def test_the_script_finds_every_way_of_defining_a_metric() -> None:
    found = set(metrics_table.metric_definitions())
    # Plain names, from several packages and modules (core, gateway, the repository runtime).
    assert ("modelgate_core.metrics", "HTTP_REQUESTS") in found
    assert ("gateway.metrics", "REDIS_ERRORS") in found
    assert ("gateway.resilience", "BREAKER_STATE") in found
    assert ("modelgate_core.repository.served", "MODEL_DROPPED") in found
    source = "import prometheus_client\nfrom prometheus_client import Gauge\n"
    source += "A = prometheus_client.Counter('a', 'a')\nB: Gauge = Gauge('b', 'b')\nC = dict(x=1)\n"
    assignments = ast.parse(source).body[2:]
    defined = [
        metrics_table._defines_metric(node.value)
        for node in assignments
        if isinstance(node, ast.Assign | ast.AnnAssign)
    ]
    assert defined == [True, True, False]


def test_each_row_says_what_prometheus_scrapes() -> None:
    rows = {row.name: row for row in metrics_table.metric_rows()}
    assert rows["modelgate_http_requests_total"].labels == ("service", "route", "method", "status")
    assert rows["modelgate_http_requests_total"].kind == "counter"
    assert rows["modelgate_circuit_breaker_state"].kind == "gauge (livemax over workers)"
    assert rows["modelgate_model_batch_size"].kind == "histogram"
    assert "Buckets: 1, 2, 4," in rows["modelgate_model_batch_size"].meaning
    assert rows["modelgate_redis_errors_total"].labels == ()


def queried_metrics(expression: str) -> set[str]:
    """The modelgate_* metric names an expression reads (histogram series mapped to their metric)."""
    return {_HISTOGRAM_SERIES.sub("", name) for name in re.findall(r"\bmodelgate_[a-z_]+", expression)}


def test_every_metric_the_rules_and_the_dashboard_query_exists() -> None:
    known = {row.name for row in metrics_table.metric_rows()}
    expressions = []
    for path in sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.rules.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            expressions += [rule["expr"] for rule in group["rules"]]
    panels = json.loads(DASHBOARD.read_text())["panels"]
    expressions += [target["expr"] for panel in panels for target in panel.get("targets", [])]
    # The recording rules' own names contain metric names (`model:modelgate_model_requests:rate1m`).
    queried = set().union(*(queried_metrics(re.sub(r"\b\w+:\w+:\w+", "", e)) for e in expressions))
    assert queried, "no expression read a modelgate_ metric"
    assert queried - known == set()
