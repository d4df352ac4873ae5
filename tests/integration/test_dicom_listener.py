"""``spine dicom-listener`` with real peers: DCMTK's ``echoscu`` / ``storescu`` and a real
Orthanc, in front of the real stack (session fixture, tiny bundle) on loopback.

- DCMTK: C-ECHO answers; a spine phantom stored by ``storescu`` is analysed and its SR
  and presentation state arrive in Orthanc (results by C-STORE); a calling AE title not
  in ``LISTENER_ALLOWED_AE_TITLES`` is rejected at association.
- Orthanc: a spine phantom and the pydicom-data chest CR (RG1, made part of the same
  study) are stored into Orthanc by REST; Orthanc sends them to our listener
  (``POST /modalities/SPINE/store``); the spine image's SR and presentation state land
  in Orthanc in the same study, the chest is refused (logged, counted), and the study
  report says 1 analysed / 1 refused. A study of 4 images: 4 SRs, 4 presentation states.
- Restart: a listener whose gateway is not reachable keeps what it acknowledged in its
  spool; stopped (SIGTERM) and started again with the gateway, it analyses it, and the
  results reach Orthanc by DICOMweb STOW-RS.
- Results kept: with the results' Orthanc down, an analysed image's SR and presentation
  state wait in the spool's ``results/``; the listener is stopped (they stay), Orthanc
  comes back, the listener starts again and sends them: they arrive in Orthanc.

The times from the Orthanc -> listener C-STORE to the SR being in Orthanc are printed
(``-s``); docs/INTEGRATION.md quotes them. No test depends on them.
"""

from __future__ import annotations

import io
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.integration.listener import Listener, metric, start_listener
from tests.integration.stack import free_port
from tests.peers.orthanc import Orthanc
from tests.tools import require_tools

pytestmark = pytest.mark.timeout(600)

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy Presentation State
ALLOWED = "ORTHANC,STORESCU,ECHOSCU"
MODALITY = "SPINE"


def _phantom(index: int) -> pydicom.Dataset:
    from training.phantoms.files import phantom_dataset, phantom_item
    from training.phantoms.image import render_spec

    item = phantom_item(seed=11, split="test", index=index)
    display, _ = render_spec(item.spec)
    return phantom_dataset(item, display, 11, "test")


def study_of(*datasets: pydicom.Dataset) -> tuple[str, list[bytes], list[str]]:
    """The datasets as one fresh study of one patient: (study UID, files, SOP UIDs)."""
    study = generate_uid()
    files, sops = [], []
    for n, ds in enumerate(datasets):
        ds = pydicom.dcmread(io.BytesIO(_bytes(ds)))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.PatientName, ds.InstanceNumber = "LISTENER-TEST", "Listener^Test", n + 1
        files.append(_bytes(ds))
        sops.append(str(ds.SOPInstanceUID))
    return study, files, sops


def _bytes(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def chest() -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("RG1_J2KR.dcm"))  # CR, BodyPartExamined CHEST


def wait_for_results(
    orthanc: Orthanc, study_uid: str, images: int, timeout_s: float = 180.0
) -> dict[str, str]:
    """The study's instances once it holds ``images`` SRs and as many presentation states."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = orthanc.study_instances(study_uid)
        classes = list(found.values())
        if classes.count(SR_CLASS) >= images and classes.count(GSPS_CLASS) >= images:
            return found
        time.sleep(0.1)
    raise AssertionError(f"results of {study_uid} not in Orthanc: {found}")


@pytest.fixture(scope="module")
def listener(
    stack, orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Listener]:
    """One listener for the module: allowed callers listed, results by C-STORE to Orthanc."""
    running = start_listener(
        tmp_path_factory.mktemp("listener"), stack.gateway,
        LISTENER_ALLOWED_AE_TITLES=ALLOWED, RESULTS_STORE_AE=orthanc.store_ae,
    )
    orthanc.add_modality(MODALITY, running.ae_title, "127.0.0.1", running.port)
    yield running
    assert running.stop() == 0, running.log_text()[-3000:]


def storescu(listener: Listener, path: Path, calling: str = "STORESCU") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["storescu", "-aet", calling, "-aec", listener.ae_title, "127.0.0.1",
         str(listener.port), str(path)], capture_output=True, text=True, timeout=60,
    )


def test_dcmtk_echo_and_store_are_analysed_and_delivered(
    listener: Listener, orthanc: Orthanc, tmp_path: Path
) -> None:
    require_tools("echoscu", "storescu")
    echo = subprocess.run(
        ["echoscu", "-aet", "ECHOSCU", "-aec", listener.ae_title, "127.0.0.1",
         str(listener.port)], capture_output=True, text=True, timeout=30,
    )
    assert echo.returncode == 0, echo.stderr
    study, (data,), (sop,) = study_of(_phantom(0))
    path = tmp_path / "phantom.dcm"
    path.write_bytes(data)
    stored = storescu(listener, path)
    assert stored.returncode == 0, stored.stderr
    report = listener.wait_for_study(study)
    assert (report["analysed"], report["refused"], report["failed"]) == (1, 0, 0)
    assert report["overall"] in ("Normal", "Abnormal")
    assert report["instances"][0]["sop_instance_uid"] == sop
    wait_for_results(orthanc, study, 1)
    file_report = Path(listener.env["LISTENER_RESULTS_DIR"]) / f"{study}.json"
    assert '"status": "complete"' in file_report.read_text()


def test_the_spool_cap_is_exported_for_the_fill_alert(listener: Listener) -> None:
    """deploy/prometheus/ divides spine_listener_spool_bytes by it."""
    default_cap = 2 * 1024**3  # LISTENER_SPOOL_MAX_BYTES's documented default
    assert metric(listener.metrics(), "spine_listener_spool_capacity_bytes") == default_cap


def test_a_calling_ae_title_not_allowed_is_rejected(listener: Listener, tmp_path: Path) -> None:
    require_tools("echoscu", "storescu")
    before = metric(listener.metrics(), 'spine_listener_associations_total{result="rejected"}')
    received = metric(listener.metrics(), "spine_listener_instances_received_total")
    path = tmp_path / "phantom.dcm"
    path.write_bytes(study_of(_phantom(1))[1][0])
    refused = storescu(listener, path, calling="INTRUDER")
    assert refused.returncode != 0
    assert "Association Rejected" in refused.stderr + refused.stdout
    text = listener.metrics()
    assert metric(text, 'spine_listener_associations_total{result="rejected"}') == before + 1
    assert metric(text, "spine_listener_instances_received_total") == received
    assert "calling AE 'INTRUDER'" in listener.log_text()


def _send_through_orthanc(
    orthanc: Orthanc, files: list[bytes]
) -> float:
    """Store into Orthanc by REST, ask it to C-STORE them to us; the send's start time."""
    ids = [orthanc.upload(data) for data in files]
    started = time.monotonic()
    answer = orthanc.store_to_modality(MODALITY, ids)
    assert answer.get("FailedInstancesCount", 0) == 0, answer
    return started


def test_orthanc_sends_a_study_the_results_land_in_it_and_the_chest_is_refused(
    listener: Listener, orthanc: Orthanc
) -> None:
    assert orthanc.rest("POST", f"/modalities/{MODALITY}/echo", json={}).status_code == 200
    study, files, (spine_sop, chest_sop) = study_of(_phantom(2), chest())
    refused_before = metric(listener.metrics(), 'spine_listener_images_total{outcome="refused"}')
    started = _send_through_orthanc(orthanc, files)
    found = wait_for_results(orthanc, study, 1)
    print(f"\n[listener] 1 spine image + 1 chest: C-STORE -> SR in Orthanc "
          f"{time.monotonic() - started:.2f} s")
    assert list(found.values()).count(SR_CLASS) == 1  # none for the chest
    report = listener.wait_for_study(study)
    assert (report["images"], report["analysed"], report["refused"]) == (2, 1, 1)
    outcomes = {i["sop_instance_uid"]: i for i in report["instances"]}
    assert outcomes[spine_sop]["outcome"] == "analysed"
    assert outcomes[chest_sop]["outcome"] == "refused"
    assert "BodyPartExamined is CHEST" in outcomes[chest_sop]["reason"]
    assert report["overall"] == outcomes[spine_sop]["diagnosis"]
    text = listener.metrics()
    assert metric(text, 'spine_listener_images_total{outcome="refused"}') == refused_before + 1
    log = listener.log_text()
    assert chest_sop in log and "refused" in log
    assert "Listener^Test" not in log and "LISTENER-TEST" not in log  # no PHI


def test_orthanc_sends_a_study_of_four_images(listener: Listener, orthanc: Orthanc) -> None:
    runs = []
    for _ in range(1):
        study, files, _sops = study_of(*(_phantom(n) for n in range(3, 7)))
        started = _send_through_orthanc(orthanc, files)
        wait_for_results(orthanc, study, 4)
        runs.append(time.monotonic() - started)
        assert listener.wait_for_study(study)["analysed"] == 4
    print(f"\n[listener] 4-image study: C-STORE -> 4 SRs in Orthanc "
          f"{statistics.median(runs):.2f} s (runs {', '.join(f'{r:.2f}' for r in runs)})")


def test_a_restart_analyses_what_the_spool_kept(
    stack, orthanc: Orthanc, tmp_path: Path
) -> None:
    require_tools("storescu")
    unreachable = f"http://127.0.0.1:{free_port()}"  # the gateway is not there (yet)
    listener = start_listener(
        tmp_path / "listener", unreachable, RESULTS_DICOMWEB_URL=orthanc.dicomweb
    )
    try:
        study, (data,), (sop,) = study_of(_phantom(7))
        path = tmp_path / "phantom.dcm"
        path.write_bytes(data)
        assert storescu(listener, path).returncode == 0  # any calling AE: loopback
        deadline = time.monotonic() + 30
        while "kept in the spool" not in listener.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert listener.health()["spool"]["instances"] == 1
        assert listener.stop() == 0
        assert "1 instance(s) and 0 result(s) kept in the spool" in listener.log_text()
        assert len(list((tmp_path / "listener" / "spool" / "incoming").iterdir())) == 1

        listener.start(LISTENER_GATEWAY_URL=stack.gateway)
        assert "1 instance(s) replayed" in listener.log_text()
        report = listener.wait_for_study(study)
        assert (report["analysed"], report["instances"][0]["sop_instance_uid"]) == (1, sop)
        wait_for_results(orthanc, study, 1)  # by STOW-RS this time
        assert listener.health()["spool"]["instances"] == 0
    finally:
        listener.stop()


def test_results_not_delivered_at_a_shutdown_are_sent_after_the_restart(
    stack, orthanc_factory, tmp_path: Path
) -> None:
    require_tools("storescu")
    pacs: Orthanc = orthanc_factory()
    pacs.stop()  # the results destination is down
    listener = start_listener(
        tmp_path / "listener", stack.gateway, RESULTS_DICOMWEB_URL=pacs.dicomweb,
        RESULTS_DRAIN_TIMEOUT_S="0.5", RESULTS_TIMEOUT_S="2",
    )
    kept = tmp_path / "listener" / "spool" / "results"
    try:
        study, (data,), _ = study_of(_phantom(11))  # explicit VR LE, as storescu sends it
        path = tmp_path / "phantom.dcm"
        path.write_bytes(data)
        assert storescu(listener, path).returncode == 0
        assert listener.wait_for_study(study)["analysed"] == 1
        spool = listener.health()["spool"]
        assert (spool["instances"], spool["results"]) == (0, 2)  # on disk, not only queued
        assert listener.stop() == 0
        assert "0 instance(s) and 2 result(s) kept in the spool" in listener.log_text()
        assert len(list(kept.glob("*.dcm"))) == 2

        pacs.start()
        listener.start()
        assert "2 result(s) sent again" in listener.log_text()
        wait_for_results(pacs, study, 1, timeout_s=60.0)
        deadline = time.monotonic() + 30
        while listener.health()["spool"]["results"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert listener.health()["spool"]["results"] == 0 and not list(kept.glob("*.dcm"))
        text = listener.metrics()
        assert metric(text, 'spine_listener_results_total{outcome="delivered"}') == 2
    finally:
        listener.stop()
