"""Fixtures for the operations tests: one real stack with the production-like locks on.

The model services require an internal token and the gateway sends it; extra gateways
(auth, limits, CORS, small timeouts) start in about a second each against the same
model services, so the expensive part (loading models) happens once per session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.factories import make_dicom, radiograph_pixels
from tests.integration.stack import Service, Stack, base_env, start_service, start_stack, wait_ready

INTERNAL_TOKEN = "ops-internal-token-0123456789"
PSEUDONYM_SECRET = "ops-pseudonym-secret"
PATIENT_ID = "PID-OPS-SENTINEL-4242"
PATIENT_NAME = "Sentinel^Opsfixture"


@pytest.fixture(scope="session")
def ops_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ops")


@pytest.fixture(scope="session")
def ops_stack(tiny_bundle: Path, ops_dir: Path) -> Iterator[Stack]:
    """Classifier, detector and gateway with the internal token and a file audit log."""
    stack = start_stack(
        tiny_bundle, ops_dir / "stack",
        INTERNAL_TOKEN=INTERNAL_TOKEN,
        PSEUDONYM_SECRET=PSEUDONYM_SECRET,
        AUDIT_LOG_PATH=str(ops_dir / "audit.jsonl"),
        UPSTREAM_TIMEOUT_S="20",
        REQUEST_TIMEOUT_S="30",
        MAX_CONTENT_LENGTH=str(8 * 1024 * 1024),
    )
    yield stack
    stack.stop()


GatewayFactory = Callable[..., Service]


def restart_detector(
    stack: Stack, tiny_bundle: Path, ops_dir: Path, log_folder: str = "detector-restarted"
) -> None:
    """Start a new detector on the killed one's port (as a supervisor would), logging to
    its own folder under ``ops_dir``; return once it is ready."""
    old = stack.services["detector"]
    port = int(old.url.rsplit(":", 1)[1])
    folder = ops_dir / log_folder
    folder.mkdir(exist_ok=True)
    env = base_env(ops_dir / "stack", MODEL_DIR=str(tiny_bundle), INTERNAL_TOKEN=INTERNAL_TOKEN)
    stack.services["detector"] = start_service("detector", env, folder, port=port)
    wait_ready(stack.services["detector"])


@pytest.fixture(scope="session")
def start_gateway(ops_stack: Stack, ops_dir: Path) -> Iterator[GatewayFactory]:
    """Start another gateway on the ops stack's model services, with ``env`` overrides."""
    started: list[Service] = []

    def start(name: str, **env: str) -> Service:
        folder = ops_dir / f"gateway-{name}"
        folder.mkdir(exist_ok=True)
        full = base_env(folder)
        full.update(
            CLASSIFIER_URLS=ops_stack.classifier,
            DETECTOR_URLS=ops_stack.detector,
            INTERNAL_TOKEN=INTERNAL_TOKEN,
            PSEUDONYM_SECRET=PSEUDONYM_SECRET,
        )
        full.update(env)
        service = start_service("gateway", full, folder)
        started.append(service)
        wait_ready(service, timeout_s=60)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture(scope="session")
def dicom_bytes() -> bytes:
    """A small DX with PHI sentinels that must never reach a log line or the audit log."""
    return make_dicom(
        radiograph_pixels(640, 480, seed=11), patient_id=PATIENT_ID, patient_name=PATIENT_NAME
    )
