"""The Locust smoke profile, headless, against the real stack: no failures, every domain exercised."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack import LocalStack

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TAGS = ("tabular", "vision", "nlp", "catalog", "versions")  # the locustfile's task tags


def test_smoke_profile_passes_with_no_failures(stack: LocalStack, api_key: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "--config",
            str(REPO / "loadtests" / "smoke.conf"),
            "--locustfile",
            str(REPO / "loadtests" / "locustfile.py"),
            "--host",
            stack.url("gateway"),
            "--users",
            "5",
            "--spawn-rate",
            "5",
            "--run-time",
            "15s",
            "--csv",
            str(tmp_path / "smoke"),
            "--html",
            str(tmp_path / "smoke.html"),
        ],
        cwd=REPO,
        env={**os.environ, "MODELGATE_API_KEY": api_key, "LOADTEST_MAX_FAIL_RATIO": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "load test passed" in output, output[-4000:]

    with open(tmp_path / "smoke_stats.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    total = next(r for r in rows if r["Name"] == "Aggregated")
    assert int(total["Failure Count"]) == 0, rows
    assert int(total["Request Count"]) > 0

    by_domain = dict.fromkeys(TAGS, 0)
    for row in rows:
        parts = row["Name"].split("/")  # /v1/<domain>/<route>, or /v1/models
        if row["Name"] == "/v1/models":
            by_domain["catalog"] += int(row["Request Count"])
        elif row["Name"].startswith("/v2/models/iris/") and row["Name"].endswith("(version 1)"):
            by_domain["versions"] += int(row["Request Count"])  # named after the version that answered
        elif len(parts) > 2 and parts[2] in by_domain:
            by_domain[parts[2]] += int(row["Request Count"])
    for domain, count in by_domain.items():
        assert count > 0, f"no {domain} requests: {by_domain}"
    assert (tmp_path / "smoke.html").stat().st_size > 0
