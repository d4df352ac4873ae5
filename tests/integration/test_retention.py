"""Bounded disk with the real services and tiny caps (issue 22 item 5).

- The listener: a spool capped at about one instance, its gateway not there yet. A
  pynetdicom sender stores one instance (Success), then a second (0xA700 Out of
  Resources: the sender keeps it); ``/metrics`` shows the one instance held in
  ``incoming/``. A gateway then starts on the listener's gateway address: the spool
  drains (the acknowledged instance is analysed, never dropped) and the second
  instance is accepted and analysed.
- The gateway: a results spool capped at 1 KiB, its PACS (a real Orthanc) down. A
  STOW-RS request is analysed and its results kept on disk; the next one is refused
  with 503 + Retry-After naming ``RESULTS_SPOOL_MAX_BYTES`` and the kept files stay; the
  PACS comes back, the results are delivered, and STOW-RS is accepted again.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from tests.integration.listener import Listener, metric, start_listener
from tests.integration.stack import Stack, base_env, free_port, start_service, wait_ready
from tests.integration.test_stowrs import metric as gateway_metric
from tests.integration.test_stowrs import spine, stow, uids
from tests.peers.orthanc import Orthanc, require_orthanc

pytestmark = pytest.mark.timeout(400)

SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700


def c_store(listener: Listener, data: bytes) -> int:
    """One C-STORE by pynetdicom; the status the listener answered."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title=listener.ae_title)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    return int(status.Status)


def wait_until(check: Callable[[], bool], timeout_s: float, why: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(why())
        time.sleep(0.2)


def gateway_env(stack: Stack, tmp: Path, tiny_bundle: Path, **overrides: str) -> dict[str, str]:
    return base_env(
        tmp, MODEL_DIR=str(tiny_bundle), CLASSIFIER_URLS=stack.classifier,
        DETECTOR_URLS=stack.detector, MAX_CONTENT_LENGTH=str(8 * 1024 * 1024), **overrides,
    )


def test_the_listener_refuses_at_its_cap_and_accepts_again_once_drained(
    stack: Stack, tiny_bundle: Path, tmp_path: Path
) -> None:
    first, second = spine(501), spine(502)
    port = free_port()  # the listener's gateway: nothing there until the spool is full
    listener = start_listener(
        tmp_path / "listener", f"http://127.0.0.1:{port}",
        LISTENER_SPOOL_MAX_BYTES=str(len(first) * 3 // 2), LISTENER_RETRY_MAX_S="1",
    )
    gateway = None
    try:
        assert c_store(listener, first) == SUCCESS
        assert c_store(listener, second) == OUT_OF_RESOURCES
        assert "C-STORE refused (A700)" in listener.log_text()
        text = listener.metrics()
        assert metric(text, 'spine_listener_folder_files{folder="incoming"}') == 1
        assert metric(text, 'spine_listener_folder_bytes{folder="incoming"}') >= len(first)
        assert listener.health()["spool"]["instances"] == 1  # acknowledged: kept

        gateway = start_service("gateway", gateway_env(stack, tmp_path / "gw", tiny_bundle),
                                tmp_path, port=port)
        wait_ready(gateway)
        wait_until(lambda: listener.health()["spool"]["instances"] == 0, 120,
                   lambda: listener.log_text()[-3000:])
        assert c_store(listener, second) == SUCCESS  # room again
        report = listener.wait_for_study(uids(second)[0])
        assert report["analysed"] == 1
        assert listener.wait_for_study(uids(first)[0])["analysed"] == 1  # never dropped
        text = listener.metrics()
        assert metric(text, 'spine_listener_folder_files{folder="incoming"}') == 0
        assert metric(text, 'spine_listener_folder_files{folder="studies"}') == 2
    finally:
        listener.stop()
        if gateway is not None:
            gateway.stop()


def test_the_gateway_answers_503_with_retry_after_at_its_results_spool_cap(
    stack: Stack, tiny_bundle: Path, tmp_path: Path
) -> None:
    require_orthanc()
    pacs = Orthanc(tmp_path / "orthanc")  # down until the spool is full
    spool = tmp_path / "spool"
    env = gateway_env(
        stack, tmp_path / "gw", tiny_bundle, RESULTS_DICOMWEB_URL=pacs.dicomweb,
        RESULTS_SPOOL_DIR=str(spool), RESULTS_SPOOL_MAX_BYTES="1024",
        RESULTS_RETRY_INITIAL_S="0.3", RESULTS_RETRY_MAX_S="1", RESULTS_RETRY_BUDGET_S="300",
    )
    gateway = start_service("gateway", env, tmp_path)
    try:
        wait_ready(gateway)
        assert stow(gateway.url, spine(601), key=None).status_code == 200
        kept = sorted(p.name for p in (spool / "results").glob("*.dcm"))
        assert len(kept) == 2  # SR + presentation state, waiting for the PACS

        full = stow(gateway.url, spine(602), key=None)
        assert full.status_code == 503, full.text
        assert int(full.headers["retry-after"]) >= 1
        assert "RESULTS_SPOOL_MAX_BYTES" in full.json()["message"]
        assert sorted(p.name for p in (spool / "results").glob("*.dcm")) == kept
        assert gateway_metric(gateway.url, "spine_results_spool_folder_files",
                              folder="results") == 2
        assert gateway_metric(gateway.url, "spine_results_spool_folder_bytes",
                              folder="results") > 1024

        pacs.start()
        wait_until(lambda: not list((spool / "results").glob("*.dcm")), 60,
                   lambda: gateway.log_text()[-3000:])
        assert stow(gateway.url, spine(603), key=None).status_code == 200
        assert list((spool / "failed").iterdir()) == []
    finally:
        gateway.stop()
        pacs.stop()
