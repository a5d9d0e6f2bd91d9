"""Write docs/metrics.md: every Prometheus metric the code defines, and the recording rules over them.

The metrics come from the code itself: each module of the five packages that assigns a prometheus_client
Counter, Gauge, Histogram or Summary at module level is found by its source (no list to forget to
update), imported, and the metric object read (name as scraped, type, labels, help text, buckets). The
recording rules come from deploy/prometheus/rules. `make metrics-doc` rewrites the file;
tests/observability/test_metrics_table.py fails when it differs from what this script writes.

    python scripts/metrics_table.py          # rewrite docs/metrics.md
    python scripts/metrics_table.py --check  # exit 1 if docs/metrics.md is out of date
"""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import Counter, Gauge, Histogram, Summary
from prometheus_client.metrics import MetricWrapperBase

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "docs" / "metrics.md"
RULES = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.rules.yml"))
# Package directory -> import name; each is installed editable (`make venv`).
PACKAGES = {
    "core/modelgate_core": "modelgate_core",
    "gateway/gateway": "gateway",
    "tabular-service/tabular_service": "tabular_service",
    "vision-service/vision_service": "vision_service",
    "nlp-service/nlp_service": "nlp_service",
}
_METRIC_CLASSES = {"Counter", "Gauge", "Histogram", "Summary"}


@dataclass(frozen=True)
class MetricRow:
    name: str
    kind: str
    labels: tuple[str, ...]
    meaning: str
    module: str


def _defines_metric(value: ast.expr | None) -> bool:
    """`Counter(...)` or `prometheus_client.Counter(...)` on the right of a module-level assignment."""
    if not isinstance(value, ast.Call):
        return False
    func = value.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    return name in _METRIC_CLASSES


def metric_definitions() -> list[tuple[str, str]]:
    """(module, variable) for every module-level metric assignment in the packages' sources."""
    found: list[tuple[str, str]] = []
    for folder, package in PACKAGES.items():
        root = REPO / folder
        for path in sorted(root.rglob("*.py")):
            if "tests" in path.relative_to(root).parts:
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in tree.body:
                targets: list[ast.expr] = []
                if isinstance(node, ast.Assign) and _defines_metric(node.value):
                    targets = node.targets
                elif isinstance(node, ast.AnnAssign) and _defines_metric(node.value):
                    targets = [node.target]
                parts = path.relative_to(root).with_suffix("").parts
                module = ".".join((package, *parts)).removesuffix(".__init__")
                found.extend((module, target.id) for target in targets if isinstance(target, ast.Name))
    return found


def _kind(metric: MetricWrapperBase) -> str:
    if isinstance(metric, Counter):
        return "counter"
    if isinstance(metric, Histogram):
        return "histogram"
    if isinstance(metric, Summary):
        return "summary"
    if isinstance(metric, Gauge):
        # How /metrics combines the Gunicorn workers' values (prometheus_client multiprocess mode).
        return f"gauge ({metric._multiprocess_mode} over workers)"
    raise TypeError(f"not a metric type this table knows: {type(metric).__name__}")


def _scraped_name(metric: MetricWrapperBase) -> str:
    name: str = metric._name
    return f"{name}_total" if isinstance(metric, Counter) else name


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else f"{value:g}"


def metric_rows() -> list[MetricRow]:
    rows: dict[str, MetricRow] = {}
    for module, variable in metric_definitions():
        metric = getattr(importlib.import_module(module), variable)
        if not isinstance(metric, MetricWrapperBase):
            raise TypeError(f"{module}.{variable} is not a prometheus_client metric")
        meaning: str = metric._documentation
        if isinstance(metric, Histogram):
            bounds = ", ".join(_bound(b) for b in metric._upper_bounds)
            meaning += f" Buckets: {bounds}."
        row = MetricRow(_scraped_name(metric), _kind(metric), tuple(metric._labelnames), meaning, module)
        rows[row.name] = row
    return sorted(rows.values(), key=lambda row: row.name)


def recording_rules() -> list[tuple[str, str, str]]:
    """(record, fixed labels, expression) of each recording rule, in file order."""
    found = []
    for path in RULES:
        document: dict[str, Any] = yaml.safe_load(path.read_text())
        for group in document["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    labels = ", ".join(f'{k}="{v}"' for k, v in rule.get("labels", {}).items())
                    # One line: the file's line breaks and the spaces they leave inside brackets go.
                    expr = re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", " ".join(str(rule["expr"]).split())))
                    found.append((str(rule["record"]), labels, expr))
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    lines = [
        "# Metrics",
        "",
        "<!-- Generated by scripts/metrics_table.py from the code and deploy/prometheus/rules: do not edit;",
        "     run `make metrics-doc` (tests/observability/test_metrics_table.py fails when it is stale). -->",
        "",
        "Every metric the processes export on `/metrics` (the model services on their port, the gateway on",
        "its METRICS_PORT only; docs/observability.md). A metric appears once a process has imported the",
        "module that defines it; a labelled one has series once something was counted with those labels.",
        "Histograms are scraped as `<name>_bucket` (label `le`), `<name>_sum` and `<name>_count`.",
        "",
        "| Name | Type | Labels | Meaning | Defined in |",
        "|---|---|---|---|---|",
    ]
    for row in metric_rows():
        labels = ", ".join(f"`{label}`" for label in row.labels) or "none"
        lines.append(f"| `{row.name}` | {row.kind} | {labels} | {_cell(row.meaning)} | `{row.module}` |")
    lines += [
        "",
        "## Recording rules",
        "",
        "Evaluated by Prometheus (deploy/prometheus/rules); the dashboard and the alerts read these.",
        "",
        "| Series | Fixed labels | Expression |",
        "|---|---|---|",
    ]
    for record, labels, expr in recording_rules():
        lines.append(f"| `{record}` | {labels or 'none'} | `{_cell(expr)}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/metrics.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUTPUT.is_file() or OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(REPO)} is out of date: run make metrics-doc", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
