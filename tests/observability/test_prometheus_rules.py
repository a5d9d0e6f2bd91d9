"""deploy/prometheus checked by the real promtool (Debian's prometheus package;
scripts/ensure_test_services.sh installs it): the configuration as start.sh renders it in the
container, the rule files, and the rule unit tests in deploy/prometheus/tests. The unit tests are
themselves shown to catch a broken rule: a copy of the rules with one alert's bound or `for` changed
must fail them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules" / "modelgate.rules.yml"
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.test.yml"))


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: run scripts/ensure_test_services.sh (make test does)")
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def render(out: Path, **env: str) -> Path:
    """prometheus.yml as the container's entrypoint writes it, with these PROMETHEUS_* settings."""
    subprocess.run(
        ["sh", str(PROMETHEUS / "start.sh"), "true"],
        env={**os.environ, "PROMETHEUS_RUNTIME_DIR": str(out), **env},
        check=True,
        timeout=30,
    )
    return out / "prometheus.yml"


def test_the_configuration_is_valid_as_shipped_and_as_the_e2e_test_renders_it(tmp_path: Path) -> None:
    shipped = promtool("check", "config", "prometheus.yml")
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    assert "SUCCESS" in shipped.stdout
    fast = render(
        tmp_path,
        PROMETHEUS_SCRAPE_INTERVAL="1s",
        PROMETHEUS_EVALUATION_INTERVAL="1s",
        PROMETHEUS_SD_REFRESH_INTERVAL="2s",
        PROMETHEUS_GATEWAY_METRICS_PORT="9200",
    )
    text = fast.read_text()
    assert "scrape_interval: 1s  # PROMETHEUS_SCRAPE_INTERVAL" in text
    assert "evaluation_interval: 1s  # PROMETHEUS_EVALUATION_INTERVAL" in text
    assert text.count("refresh_interval: 2s  # PROMETHEUS_SD_REFRESH_INTERVAL") == 4
    assert "port: 9200  # PROMETHEUS_GATEWAY_METRICS_PORT" in text
    # The rendered file finds the rules through the link start.sh makes next to it.
    checked = promtool("check", "config", str(fast), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 25 rules found" in checked.stdout


def test_start_refuses_a_setting_that_is_not_a_duration(tmp_path: Path) -> None:
    refused = subprocess.run(
        ["sh", str(PROMETHEUS / "start.sh"), "true"],
        env={**os.environ, "PROMETHEUS_RUNTIME_DIR": str(tmp_path), "PROMETHEUS_SCRAPE_INTERVAL": "1s|x"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    assert "expected a duration" in refused.stderr
    assert not (tmp_path / "prometheus.yml").exists()


def test_the_rules_are_valid() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 25 rules found" in checked.stdout


def test_the_rule_unit_tests_pass() -> None:
    assert RULE_TESTS, "no rule unit tests in deploy/prometheus/tests"
    tested = promtool("test", "rules", *[str(path) for path in RULE_TESTS])
    print(tested.stdout)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert tested.stdout.count("SUCCESS") == len(RULE_TESTS)


@pytest.mark.parametrize(
    ("broken", "original", "replacement"),
    [
        # An error-ratio bound of 50% would let a route fail one request in ten without a page.
        (
            "error ratio bound",
            'ratio_rate5m{service="gateway"} > 0.05',
            'ratio_rate5m{service="gateway"} > 0.5',
        ),
        # A stopped service has no target at all: only its own line in the rule can notice.
        (
            "service left out",
            '\n          or label_replace(vector(1), "job", "nlp-service", "", "") unless on (job) (up == 1)',
            "",
        ),
        # Without max_over_time a breaker that half-opens to probe would never page.
        (
            "breaker flapping",
            "max_over_time(modelgate_circuit_breaker_state[1m])",
            "modelgate_circuit_breaker_state",
        ),
        ("p99 for", "    for: 10m\n", "    for: 1m\n"),
    ],
)
def test_the_unit_tests_catch_a_broken_rule(
    tmp_path: Path, broken: str, original: str, replacement: str
) -> None:
    text = RULES.read_text()
    assert text.count(original) == 1, f"{broken}: {original!r} is not in the rules once"
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(text.replace(original, replacement))
    (tmp_path / "tests").mkdir()
    for path in RULE_TESTS:
        shutil.copy(path, tmp_path / "tests" / path.name)
    assert promtool("check", "rules", str(tmp_path / "rules" / RULES.name)).returncode == 0, broken
    tested = promtool("test", "rules", *[f"tests/{path.name}" for path in RULE_TESTS], cwd=tmp_path)
    assert tested.returncode != 0, f"the rule unit tests pass with the {broken} rule broken:\n{tested.stdout}"
    assert "FAILED:" in tested.stdout + tested.stderr
