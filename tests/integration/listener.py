"""``spine dicom-listener`` as a real subprocess on free loopback ports, for tests.

On a test host (tests/peers/hosts.py) it binds the host's ``address`` (DICOM and status
ports) and runs under ``wrap`` (``host.command([])``); its status server then needs the
operator key, sent as ``status_headers``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.integration.stack import REPO, base_env, free_port


@dataclass
class Listener:
    """One listener process; ``spool`` / ``results`` survive :meth:`stop` for a restart."""

    root: Path
    env: dict[str, str]
    ae_title: str = "SPINE"
    port: int = field(default_factory=free_port)
    status_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    address: str = "127.0.0.1"
    wrap: tuple[str, ...] = ()
    status_headers: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return f"http://{self.address}:{self.status_port}"

    @property
    def log_path(self) -> Path:
        return self.root / "listener.log"

    def start(self, timeout_s: float = 60.0, **overrides: str) -> None:
        self.env.update(overrides)
        handle = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*self.wrap, sys.executable, "-m", "spine.cli", "dicom-listener",
             "--host", self.address,
             "--port", str(self.port), "--ae-title", self.ae_title,
             "--status-port", str(self.status_port)],
            env=self.env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"listener exited:\n{self.log_text()[-3000:]}")
            try:
                if self._get("/health", timeout_s=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"listener not ready in {timeout_s} s:\n{self.log_text()[-3000:]}")

    def stop(self) -> int | None:
        """SIGTERM (the documented shutdown) and wait; the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _get(self, path: str, timeout_s: float = 5.0) -> httpx.Response:
        return httpx.get(self.status + path, headers=self.status_headers, timeout=timeout_s)

    def health(self) -> dict[str, Any]:
        return self._get("/health").json()

    def metrics(self) -> str:
        return self._get("/metrics").text

    def study(self, study_uid: str) -> dict[str, Any] | None:
        response = self._get(f"/studies/{study_uid}")
        return response.json() if response.status_code == 200 else None

    def wait_for_study(self, study_uid: str, timeout_s: float = 120.0) -> dict[str, Any]:
        """The study's report once it is ``complete``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.study(study_uid)
            if found is not None and found["status"] == "complete":
                return found
            time.sleep(0.2)
        raise RuntimeError(f"study {study_uid} not complete after {timeout_s} s:\n"
                           f"{self.log_text()[-3000:]}")


def start_listener(
    root: Path, gateway_url: str, *, address: str = "127.0.0.1", wrap: tuple[str, ...] = (),
    status_headers: dict[str, str] | None = None, **overrides: str,
) -> Listener:
    """A started listener sending to ``gateway_url``; ``overrides`` are environment values."""
    root.mkdir(parents=True, exist_ok=True)
    env = base_env(
        root, LISTENER_GATEWAY_URL=gateway_url, LISTENER_SPOOL_DIR=str(root / "spool"),
        LISTENER_RESULTS_DIR=str(root / "studies"), LISTENER_STUDY_IDLE_S="1",
        LISTENER_RETRY_INITIAL_S="0.5", LISTENER_RETRY_MAX_S="2", LOG_JSON="1",
        RESULTS_RETRY_INITIAL_S="0.5", RESULTS_RETRY_MAX_S="2", LISTENER_STATUS_HOST=address,
    )
    for name in ("RESULTS_STORE_AE", "RESULTS_DICOMWEB_URL", "LISTENER_ALLOWED_AE_TITLES"):
        env.pop(name, None)
    env.update(overrides)
    listener = Listener(root, env, address=address, wrap=wrap,
                        status_headers=dict(status_headers or {}))
    listener.start()
    return listener


def metric(text: str, name: str) -> float:
    """A sample's value from Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith("#") and line.rsplit(" ", 1)[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return 0.0

