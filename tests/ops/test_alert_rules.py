"""The shipped alert rules (deploy/prometheus/): checked and unit-tested by promtool, and
run by a real Prometheus against the real stack.

promtool checks the rule file and the example configuration, then runs
tests/ops/prometheus/spine-rules.test.yml, which gives each alert series that make it
fire and series that must leave it quiet. The static checks keep the file honest: every
alert is tested both ways and has a runbook line, and every metric it reads is one a
service exports. The integration test runs a Prometheus scraping the ops stack (the real
gateway and model services on loopback, internal token on) every second with the shipped
rules (only the ``for:`` holds shortened), kills the detector and waits for
SpineDetectorUnavailable to fire, restarts it and waits for the alert to resolve; the
times go to test-artifacts/ops/prometheus_alerts.json.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.stack import REPO, Stack
from tests.ops.conftest import restart_detector
from tests.ops.load import record
from tests.peers.prometheus import (
    SHIPPED_CONFIG,
    SHIPPED_RULES,
    Prometheus,
    config_for,
    require_prometheus,
    rules_with_holds,
)

pytestmark = pytest.mark.timeout(300)

UNIT_TESTS = Path(__file__).parent / "prometheus" / "spine-rules.test.yml"
OPERATIONS = REPO / "docs" / "OPERATIONS.md"
PRODUCT_DIRS = (
    "gateway", "shared", "model_server", "classifier_service", "detector_service", "dicom_listener",
)
HOLD = "2s"  # every alert's for: in the integration test
INTERVAL = "1s"  # scrape and evaluation


def promtool(*args: str) -> str:
    require_prometheus()
    done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(SHIPPED_RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_the_shipped_rules_and_config_pass_promtool_check() -> None:
    assert "SUCCESS: 27 rules found" in promtool("check", "rules", str(SHIPPED_RULES))
    promtool("check", "config", str(SHIPPED_CONFIG))


def test_every_alert_passes_its_promtool_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(UNIT_TESTS))


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    cases = [
        case for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} never fires"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} never quiet"


def test_every_alert_has_a_runbook_line() -> None:
    runbook = OPERATIONS.read_text().split("\n## Alerts", 1)[1].split("\n## ", 1)[0]
    for rule in alert_rules():
        assert rule["annotations"]["runbook"] == "docs/OPERATIONS.md#alerts"
        assert f"| `{rule['alert']}` |" in runbook, rule["alert"]


def test_the_rules_read_only_metrics_the_services_export() -> None:
    text = SHIPPED_RULES.read_text()
    # metric names; recorded ones (job:spine_...:rate5m) are the file's own
    names = set(re.findall(r"(?<![\w:])((?:spine|nv)_\w+)(?![\w:])", text))
    sources = "\n".join(
        path.read_text() for folder in PRODUCT_DIRS for path in (REPO / folder).rglob("*.py")
    )
    assert len(names) >= 20
    for name in sorted(names):
        # a counter may be declared with or without _total; histograms add _count, _bucket
        declared = {name, re.sub(r"_(total|count|bucket)$", "", name)}
        assert any(f'"{n}"' in sources for n in declared), f"{name}: no service declares it"


# ------------------------------------------------------------ a real Prometheus


@pytest.fixture
def prometheus(ops_stack: Stack, tmp_path: Path) -> Iterator[Prometheus]:
    """A Prometheus scraping the ops stack's three services with the shipped rules."""
    require_prometheus()
    server = Prometheus(tmp_path / "prometheus")
    targets = {
        f"spine-{name}": service.url.removeprefix("http://")
        for name, service in ops_stack.services.items()
    }
    server.start(config_for(targets, server.root / "rules.yml", INTERVAL), rules_with_holds(HOLD))
    yield server
    server.stop()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``condition`` every 0.2 s; the monotonic time it first held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def firing(prometheus: Prometheus, alertname: str) -> list[dict[str, Any]]:
    return [
        alert for alert in prometheus.alerts()
        if alert["labels"]["alertname"] == alertname and alert["state"] == "firing"
    ]


def active(prometheus: Prometheus, alertname: str) -> bool:
    return any(a["labels"]["alertname"] == alertname for a in prometheus.alerts())


def detector_ready_in_gateway(prometheus: Prometheus) -> bool:
    query = 'spine_upstream_replicas{job="spine-gateway",service="detector",state="ready"} == 1'
    return bool(prometheus.api("query", query=query)["result"])


def test_detector_down_fires_after_a_kill_and_resolves_after_a_restart(
    prometheus: Prometheus, ops_stack: Stack, tiny_bundle: Path, ops_dir: Path
) -> None:
    stack = ops_stack
    wait_for(lambda: all(prometheus.targets_up().values()), 60, "every target scraped")
    wait_for(lambda: detector_ready_in_gateway(prometheus), 60, "the gateway's gauge scraped")
    time.sleep(3)  # a few evaluations of every rule on a healthy stack
    assert prometheus.alerts() == [], "a healthy stack must raise nothing"

    detector = stack.services["detector"]
    detector.process.kill()
    detector.process.wait()
    killed = time.monotonic()
    fired = wait_for(lambda: bool(firing(prometheus, "SpineDetectorUnavailable")), 60,
                     "SpineDetectorUnavailable firing")
    (alert,) = firing(prometheus, "SpineDetectorUnavailable")
    gateway = stack.gateway.removeprefix("http://")
    assert alert["labels"] == {
        "alertname": "SpineDetectorUnavailable", "severity": "critical", "job": "spine-gateway",
        "instance": gateway, "service": "detector", "state": "ready",
    }
    assert f"Gateway {gateway} has no detector replica" in alert["annotations"]["summary"]
    target_down = wait_for(
        lambda: any(a["labels"]["job"] == "spine-detector"
                    for a in firing(prometheus, "SpineTargetDown")),
        30, "SpineTargetDown firing for spine-detector")
    # The classifier still answers: uploads get a diagnosis, so nothing says otherwise.
    assert not active(prometheus, "SpineClassifierUnavailable")
    assert httpx.get(f"{stack.gateway}/readyz", timeout=5).status_code == 200

    restarted = time.monotonic()
    restart_detector(stack, tiny_bundle, ops_dir, "detector-restarted-alerts")
    ready = time.monotonic()
    resolved = wait_for(lambda: not active(prometheus, "SpineDetectorUnavailable"), 60,
                        "SpineDetectorUnavailable resolved")
    wait_for(lambda: not active(prometheus, "SpineTargetDown"), 30, "SpineTargetDown resolved")
    record("prometheus_alerts", {
        "scrape_and_evaluation_interval": INTERVAL, "for_hold": HOLD,
        "kill_to_firing_s": round(fired - killed, 2),
        "kill_to_target_down_firing_s": round(target_down - killed, 2),
        "restart_to_resolved_s": round(resolved - restarted, 2),
        "detector_ready_to_resolved_s": round(resolved - ready, 2),
    })
