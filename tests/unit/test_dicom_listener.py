"""The DICOM listener's parts on their own: spool, study grouping, reports, the gateway's
answers, the association rules, and how `spine` starts it. The real round trips (DCMTK,
Orthanc, the gateway) are in tests/integration/test_dicom_listener.py."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from prometheus_client import CollectorRegistry

from dicom_listener.forward import Fate, interpret
from dicom_listener.scp import ListenerConfigError, ScpConfig
from dicom_listener.spool import Spool, SpoolFull, SpoolInUseError, read_uids
from dicom_listener.studies import ImageResult, StudyTracker
from dicom_listener.studyreport import ListenerMetrics, StudyReports
from shared.settings import CliSettings, ListenerSettings
from spine.supervisor import LISTENER, build_children, stop_order
from tests.factories import make_dicom, radiograph_pixels

STUDY = "1.2.3.4"


def _instance(sop: str = "1.2.3.4.5", study: str = STUDY) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(make_dicom(radiograph_pixels(64, 64))))
    ds.StudyInstanceUID, ds.SOPInstanceUID = study, sop
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def test_the_spool_keeps_what_it_acknowledged_across_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_instance_bytes=10**7, max_total_bytes=10**8)
    first = spool.write(_instance("1.2.3.4.5"), STUDY, "1.2.3.4.5")
    spool.write(_instance("1.2.3.4.6"), STUDY, "1.2.3.4.6")
    (tmp_path / "tmp" / "half-written.dcm").write_bytes(b"never acknowledged")
    (tmp_path / "incoming" / "99999999999999999999-000000.dcm").write_bytes(b"garbage")

    spool.close()  # the process ends (a SIGKILL too drops its lock)
    again = Spool(tmp_path, max_instance_bytes=10**7, max_total_bytes=10**8)  # a restart
    entries, unreadable = again.pending()
    assert [(e.study_uid, e.sop_uid) for e in entries] == [
        (STUDY, "1.2.3.4.5"), (STUDY, "1.2.3.4.6")
    ]  # arrival order
    assert [path.name for path, _why in unreadable] == ["99999999999999999999-000000.dcm"]
    assert list((tmp_path / "tmp").iterdir()) == []
    assert again.count == 3
    again.remove(entries[0])
    again.move_to_failed(unreadable[0][0])
    assert again.count == 1 and not first.path.exists()
    assert (tmp_path / "failed" / "99999999999999999999-000000.dcm").exists()


def test_a_second_owner_of_the_spool_is_refused_and_leaves_it_untouched(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_instance_bytes=10**7, max_total_bytes=10**8)
    half = tmp_path / "tmp" / "being-written.dcm"  # the first listener is writing it
    half.write_bytes(b"half")
    with pytest.raises(SpoolInUseError, match=f"LISTENER_SPOOL_DIR {tmp_path} is in use"):
        Spool(tmp_path, max_instance_bytes=10**7, max_total_bytes=10**8)
    assert half.exists()
    spool.close()
    Spool(tmp_path, max_instance_bytes=10**7, max_total_bytes=10**8).close()
    assert not half.exists()  # the next owner cleans what a crash left half-written


def test_the_spool_refuses_beyond_its_caps(tmp_path: Path) -> None:
    data = _instance()
    spool = Spool(tmp_path, max_instance_bytes=len(data) - 1, max_total_bytes=10**8)
    with pytest.raises(SpoolFull, match="LISTENER_MAX_INSTANCE_BYTES"):
        spool.write(data, STUDY, "1.2.3.4.5")
    spool.close()
    spool = Spool(tmp_path, max_instance_bytes=10**7, max_total_bytes=len(data) + 10)
    spool.write(data, STUDY, "1.2.3.4.5")
    with pytest.raises(SpoolFull, match="LISTENER_SPOOL_MAX_BYTES"):
        spool.write(data, STUDY, "1.2.3.4.6")
    assert spool.count == 1 and list((tmp_path / "tmp").iterdir()) == []


def test_the_spool_keeps_results_until_delivered_across_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_instance_bytes=10**7, max_total_bytes=10**8)
    instance = spool.write(_instance("1.2.3.4.5"), STUDY, "1.2.3.4.5")
    sr, gsps = _instance("1.2.3.4.5.1"), _instance("1.2.3.4.5.2")
    written = [spool.write_result(sr), spool.write_result(gsps)]
    spool.remove(instance)  # the results are on disk: the instance may go
    assert [r.sop_uid for r in written] == ["1.2.3.4.5.1", "1.2.3.4.5.2"]
    assert (spool.count, spool.result_count, spool.used_bytes) == (0, 2, len(sr) + len(gsps))
    assert list((tmp_path / "tmp").iterdir()) == []

    (tmp_path / "results" / "1.2.3.9.dcm").write_bytes(b"garbage")
    spool.close()
    again = Spool(tmp_path, max_instance_bytes=10**7, max_total_bytes=10**8)  # a restart
    files, unreadable = again.pending_results()
    assert [(r.study_uid, r.sop_uid) for r in files] == [
        (STUDY, "1.2.3.4.5.1"), (STUDY, "1.2.3.4.5.2")
    ]
    assert [path.name for path, _why in unreadable] == ["1.2.3.9.dcm"]
    assert again.used_bytes == len(sr) + len(gsps) + 7  # results count toward the cap
    again.remove_result("1.2.3.4.5.1")  # delivered
    moved = again.fail_result("1.2.3.4.5.2")  # rejected: kept for the operator
    assert moved == tmp_path / "failed" / "results" / "1.2.3.4.5.2.dcm" and moved.read_bytes() == gsps
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["1.2.3.9.dcm"]
    assert (again.result_count, again.used_bytes) == (1, 7)
    again.fail_result(unreadable[0][0])
    assert (again.result_count, again.used_bytes) == (0, 0)
    with pytest.raises(ValueError):
        again.remove_result("../incoming/x")


def test_read_uids_needs_both_uids() -> None:
    assert read_uids(_instance("1.2.3.9")) == (STUDY, "1.2.3.9")
    with pytest.raises(ValueError):
        read_uids(b"not dicom at all")


def test_a_study_closes_when_idle_and_done_and_any_abnormal_makes_it_abnormal() -> None:
    tracker = StudyTracker(idle_s=5.0)
    tracker.received(STUDY, "a")
    tracker.received(STUDY, "b")
    tracker.finished(STUDY, ImageResult("a", "analysed", "Normal"))
    assert tracker.due(time.monotonic() + 60) == []  # "b" still pending
    study = tracker.finished(STUDY, ImageResult("b", "refused", reason="not a spine"))
    assert tracker.due(time.monotonic() + 1) == []  # not idle long enough
    assert study.overall == "Normal"
    tracker.received(STUDY, "c")
    tracker.finished(STUDY, ImageResult("c", "analysed", "Abnormal"))
    (closed,) = tracker.due(time.monotonic() + 6)
    assert (closed.count("analysed"), closed.count("refused"), closed.overall) == (
        2, 1, "Abnormal"
    )
    assert tracker.open == {}


def test_study_reports_are_files_and_open_ones_come_back(tmp_path: Path) -> None:
    reports = StudyReports(tmp_path, ListenerMetrics(CollectorRegistry()))
    tracker = StudyTracker(idle_s=0.0)
    tracker.received(STUDY, "a")
    reports.update(tracker.finished(STUDY, ImageResult("a", "analysed", "Abnormal")))
    assert json.loads((tmp_path / f"{STUDY}.json").read_text())["status"] == "open"
    (restored,) = reports.load_open()
    assert restored.images["a"].diagnosis == "Abnormal"
    data = reports.close(tracker.due()[0])
    assert (data["status"], data["analysed"], data["refused"], data["overall"]) == (
        "complete", 1, 0, "Abnormal"
    )
    assert reports.load_open() == []
    with pytest.raises(ValueError):
        reports.path("../../etc/passwd")


def _response(status: int, **kwargs: object) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("POST", "http://gw/upload/dicom"),
                          **kwargs)  # type: ignore[arg-type]


def test_the_gateways_answers_decide_the_fate() -> None:
    body = (
        b"--b\r\nContent-Type: application/dicom\r\nContent-ID: <sr>\r\n\r\nSR\r\n"
        b"--b\r\nContent-Type: application/dicom\r\nContent-ID: <gsps>\r\n\r\nPS\r\n"
        b"--b\r\nContent-Type: application/json\r\nContent-ID: <analysis>\r\n\r\n"
        b'{"diagnosis": "Abnormal"}\r\n--b--\r\n'
    )
    ok = interpret(_response(200, content=body, headers={
        "content-type": 'multipart/related; type="application/dicom"; boundary=b'
    }))
    assert (ok.fate, ok.sr, ok.gsps, ok.diagnosis) == (Fate.ANALYSED, b"SR", b"PS", "Abnormal")
    refused = interpret(_response(422, json={"status": "error", "message": "not a spine"}))
    assert (refused.fate, refused.reason) == (Fate.REFUSED, "not a spine")
    busy = interpret(_response(503, json={"message": "busy"}, headers={"Retry-After": "7"}))
    assert (busy.fate, busy.retry_after_s) == (Fate.RETRY, 7.0)
    assert interpret(_response(413, json={"message": "too big"})).fate is Fate.FAILED
    assert interpret(_response(200, content=b"{}", headers={
        "content-type": "application/json"})).fate is Fate.RETRY


def test_any_calling_ae_only_on_loopback() -> None:
    settings = ListenerSettings()
    assert ScpConfig.from_settings(settings, "127.0.0.1", 11112).allowed_calling == ()
    with pytest.raises(ListenerConfigError, match="LISTENER_ALLOWED_AE_TITLES"):
        ScpConfig.from_settings(settings, "0.0.0.0", 11112)
    listed = ListenerSettings(listener_allowed_ae_titles="ORTHANC, PACS")
    config = ScpConfig.from_settings(listed, "0.0.0.0", 11112)
    assert config.allowed_calling == ("ORTHANC", "PACS")
    # What input selection can accept: DX, CR, and Secondary Capture (if switched on).
    assert {"1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1",
            "1.2.840.10008.5.1.4.1.1.7"} <= set(config.sop_classes)


def test_serve_with_a_dicom_port_supervises_a_listener_stopped_first(tmp_path: Path) -> None:
    children = build_children(
        CliSettings(), host="127.0.0.1", gateway_port=8000, classifier_port=8001, detector_port=8002,
        model_dir=tmp_path, base_env={}, dicom_port=11112,
    )
    listener = next(child for child in children if child.name == LISTENER)
    argv = " ".join(listener.argv)
    assert "dicom-listener --host 127.0.0.1 --port 11112" in argv
    assert "--gateway-url http://127.0.0.1:8000" in argv
    assert listener.ready_url.endswith("/health")
    assert [group[0].name for group in stop_order(children)][:2] == [LISTENER, "gateway"]
    assert LISTENER not in {c.name for c in build_children(
        CliSettings(), host="127.0.0.1", gateway_port=8000, classifier_port=8001, detector_port=8002,
        model_dir=tmp_path, base_env={},
    )}
