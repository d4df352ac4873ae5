"""The gateway's results spool (RESULTS_SPOOL_DIR) across a stop, with a real Orthanc.

The real services (tests/integration/stack.py) with the results' Orthanc not running:
STOW-RS instances into the gateway, a full spool refused (503), the gateway stopped by
SIGTERM with results pending (their files stay in the spool; a second gateway on the same
folder meanwhile refuses to start), then Orthanc started and a
new gateway on the same spool: the SR and presentation states appear in Orthanc (REST
API) and the spool is empty. One stack for the module.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.stack import Stack, base_env, start_service, start_stack, wait_ready
from tests.integration.test_stowrs import (
    GSPS_CLASS,
    SR_CLASS,
    demo_bundle,
    spine,
    sr_and_gsps,
    stow,
    uids,
)
from tests.peers.orthanc import Orthanc, require_orthanc

pytestmark = pytest.mark.timeout(300)

KEY = "spool-tests-" + "k" * 24
QUEUE = 4  # objects: two instances (SR + GSPS each) fill the queue and the spool


@pytest.fixture(scope="module")
def setup(
    tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Orthanc, dict[str, str], Path]]:
    """(stack, the results' Orthanc (not started), the gateway's environment, the spool)."""
    require_orthanc()
    tmp = tmp_path_factory.mktemp("stowrs-spool")
    bundle = demo_bundle(tiny_bundle, tmp / "bundle")
    orthanc = Orthanc(tmp / "orthanc")  # its ports are chosen; it runs later
    spool = tmp / "spool"
    overrides = {
        "API_KEYS_SHA256": f"tests:{hashlib.sha256(KEY.encode()).hexdigest()}",
        "RESULTS_DICOMWEB_URL": orthanc.dicomweb, "RESULTS_SPOOL_DIR": str(spool),
        "RESULTS_RETRY_INITIAL_S": "0.3", "RESULTS_RETRY_MAX_S": "1",
        "RESULTS_RETRY_BUDGET_S": "120", "RESULTS_QUEUE_SIZE": str(QUEUE),
        "RESULTS_DRAIN_TIMEOUT_S": "1",
    }
    stack = start_stack(bundle, tmp / "stack", **overrides)
    env = base_env(
        tmp / "stack", MODEL_DIR=str(bundle), CLASSIFIER_URLS=stack.classifier,
        DETECTOR_URLS=stack.detector, **overrides,
    )
    yield stack, orthanc, env, spool
    stack.stop()
    orthanc.stop()


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.dcm")} if folder.exists() else set()


def test_results_kept_at_a_stop_reach_orthanc_from_the_next_gateway(
    setup: tuple[Stack, Orthanc, dict[str, str], Path], tmp_path: Path
) -> None:
    stack, orthanc, env, spool = setup
    first, second = spine(401), spine(402)
    assert stow(stack.gateway, first, second, key=KEY).status_code == 200
    kept = files(spool / "results")
    assert len(kept) == 4  # on disk once the answer is back: SR + GSPS of each

    full = stow(stack.gateway, spine(403), key=KEY)  # queue and spool at RESULTS_QUEUE_SIZE
    assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1
    assert "RESULTS_QUEUE_SIZE" in full.json()["message"]
    assert files(spool / "results") == kept

    # A second gateway on the same folder would resend these files and delete the first's
    # half-written ones: it refuses to start, naming the folder.
    intruder = start_service("gateway", env, tmp_path)
    try:
        assert intruder.process.wait(timeout=120) != 0
    finally:
        intruder.stop()
    assert f"RESULTS_SPOOL_DIR {spool} is in use by another running gateway" in (
        intruder.log_text()), intruder.log_text()[-3000:]
    assert files(spool / "results") == kept

    gateway = stack.services["gateway"]
    gateway.stop()  # SIGTERM with the results pending: Orthanc is not running
    log = gateway.log_text()
    assert "Application shutdown complete" in log, log[-3000:]  # a clean stop, not a kill
    assert files(spool / "results") == kept and files(spool / "failed") == set()
    assert "results spool: 4 result(s) kept for the next start" in log
    assert "STOW-0401" not in log  # the phantom's PatientID: PHI never in the log

    orthanc.start()
    restarted = start_service("gateway", env, tmp_path)
    stack.services["gateway"] = restarted  # stopped with the module
    wait_ready(restarted)
    for data in (first, second):
        found = sr_and_gsps(orthanc, uids(data)[0], timeout_s=30)
        assert {SR_CLASS, GSPS_CLASS} <= set(found), restarted.log_text()[-3000:]
        assert {f"{uid}.dcm" for uid in found.values()} <= kept
    deadline = time.monotonic() + 10
    while files(spool / "results") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert files(spool / "results") == set() and files(spool / "failed") == set()
    assert "4 result(s) kept from the last run sent again" in restarted.log_text()
