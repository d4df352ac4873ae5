"""A real Prometheus (Debian ``prometheus``) as a plain process, for tests.

Its configuration is the shipped example (``deploy/prometheus/prometheus.yml``) with the
tests' targets, short scrape and evaluation intervals, and a variant of the shipped rules
in which only the alerts' ``for:`` holds are shortened (every expression as shipped), so
an alert can fire within seconds. Data in a temporary folder, a free loopback port, no
system service. Under ``CI=1`` a missing Prometheus fails naming the Debian package.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.integration.stack import REPO, free_port, spawn_answering, stop_process
from tests.tools import require_tools

RULES_DIR = REPO / "deploy" / "prometheus"
SHIPPED_RULES = RULES_DIR / "spine-rules.yml"
SHIPPED_CONFIG = RULES_DIR / "prometheus.yml"


def require_prometheus() -> None:
    require_tools("prometheus", "promtool")


def rules_with_holds(hold: str) -> dict[str, Any]:
    """The shipped rules with every alert's ``for:`` set to ``hold``; nothing else changed."""
    rules = yaml.safe_load(SHIPPED_RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule and "for" in rule:
                rule["for"] = hold
    return rules


def config_for(targets: dict[str, str], rule_file: Path, interval: str) -> dict[str, Any]:
    """The shipped configuration scraping ``targets`` (job name -> ``host:port``) only."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config["global"] = {"scrape_interval": interval, "evaluation_interval": interval,
                        "scrape_timeout": interval}
    config["rule_files"] = [str(rule_file)]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    unknown = set(targets) - set(jobs)
    if unknown:
        raise ValueError(f"no job {sorted(unknown)} in {SHIPPED_CONFIG}")
    config["scrape_configs"] = [
        {**jobs[name], "static_configs": [{"targets": [target]}]}
        for name, target in targets.items()
    ]
    return config


@dataclass
class Prometheus:
    """One Prometheus process; ``url`` is its HTTP API root."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "prometheus.log"

    def start(self, config: dict[str, Any], rules: dict[str, Any], timeout_s: float = 60) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
        config_path = self.root / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.process = spawn_answering(
            ["prometheus", f"--config.file={config_path}",
             f"--storage.tsdb.path={self.root / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            self.log_path, self.root, f"{self.url}/-/ready", "Prometheus", timeout_s,
        )

    def stop(self) -> None:
        stop_process(self.process)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5)
        response.raise_for_status()
        return response.json()["data"]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending or firing), as ``/api/v1/alerts`` lists them."""
        return list(self.api("alerts")["alerts"])

    def targets_up(self) -> dict[str, bool]:
        """Job name -> whether its last scrape succeeded."""
        return {
            target["labels"]["job"]: target["health"] == "up"
            for target in self.api("targets")["activeTargets"]
        }
