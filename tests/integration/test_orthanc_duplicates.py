"""What a real Orthanc does with our results written twice for one image (issue 22 item 3).

The same image's SR and presentation state are written twice, a second apart (a
re-analysis: same UIDs, later creation times), and both copies are sent to Orthanc by
C-STORE, the second again by STOW-RS. Orthanc (``OverwriteInstances`` at its default,
false) answers every send with success and keeps one SR and one presentation state: the
first copy.
"""

from __future__ import annotations

import io
import time

import httpx
import pydicom
import pytest
from pynetdicom import AE

from shared.dicom import decode_dicom
from shared.dicom.results import AnalysisResult, ResultBox, ResultKind, write_results
from tests.integration.test_dicom_listener import GSPS_CLASS, SR_CLASS, _phantom, study_of
from tests.integration.test_stowrs import related
from tests.peers.orthanc import Orthanc

pytestmark = pytest.mark.timeout(300)


def _analysis() -> AnalysisResult:
    return AnalysisResult(
        diagnosis="Abnormal", abnormal_probability=0.8, threshold=0.5, members={"m": 0.8},
        boxes=(ResultBox("Osteophytes", 0.6, (10.0, 20.0, 60.0, 90.0)),),
        bundle_name="tests", bundle_kind="demo", checkpoints={"m.pth": "a" * 64},
        fusion_mode="paper",
    )


def _c_store(orthanc: Orthanc, *objects: bytes) -> list[int]:
    ae = AE(ae_title="RESULTSTEST")
    for sop_class in (SR_CLASS, GSPS_CLASS):
        ae.add_requested_context(sop_class)
    association = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=orthanc.aet)
    assert association.is_established
    try:
        return [
            association.send_c_store(pydicom.dcmread(io.BytesIO(data))).Status
            for data in objects
        ]
    finally:
        association.release()


def test_a_second_copy_of_our_results_is_stored_once(orthanc: Orthanc) -> None:
    study, (data,), _ = study_of(_phantom(40))
    _, metadata = decode_dicom(data)
    first = write_results(metadata.source, _analysis())
    time.sleep(1.1)  # a re-analysis, later
    second = write_results(metadata.source, _analysis())
    assert first.uids == second.uids and first.sr != second.sr  # same UIDs, new times

    assert _c_store(orthanc, first.sr, first.gsps) == [0x0000, 0x0000]
    assert _c_store(orthanc, second.sr, second.gsps) == [0x0000, 0x0000]  # not a failure
    body, content_type = related(second.sr, second.gsps)
    stowed = httpx.post(
        f"{orthanc.dicomweb}/studies", content=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        timeout=30.0,
    )
    assert stowed.status_code == 200, stowed.text
    answer = stowed.json()
    assert not answer.get("00081198", {}).get("Value")  # Failed SOP Sequence: empty
    stored = {item["00081155"]["Value"][0] for item in answer["00081199"]["Value"]}
    assert stored == {first.uids[ResultKind.SR].instance, first.uids[ResultKind.GSPS].instance}

    found = orthanc.study_instances(study)
    assert sorted(found.values()) == sorted([SR_CLASS, GSPS_CLASS])  # one of each
    kept = orthanc.tags(orthanc.find_instance(first.uids[ResultKind.SR].instance) or "")
    written = pydicom.dcmread(io.BytesIO(first.sr))
    assert kept["InstanceCreationTime"] == written.InstanceCreationTime  # the first copy
