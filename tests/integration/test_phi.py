"""PHI planted in a DICOM reaches neither the response (by default) nor any service log."""

from __future__ import annotations

import httpx
import pytest

from tests.factories import make_dicom, radiograph_pixels

pytestmark = pytest.mark.timeout(120)

SENTINELS = {
    "PatientName": "Sentinel^Zqxname",
    "PatientID": "ZQX-PID-424242",
    "PatientBirthDate": "19010203",
    "PatientAddress": "42 Zqx Street",
    "InstitutionName": "Zqx Memorial",
    "ReferringPhysicianName": "Doctor^Zqxref",
    "AccessionNumber": "ZQXACC99",
}


def test_phi_sentinels_stay_out_of_response_and_logs(stack) -> None:
    extra = {k: v for k, v in SENTINELS.items() if k not in ("PatientName", "PatientID")}
    data = make_dicom(
        radiograph_pixels(600, 400), patient_name=SENTINELS["PatientName"],
        patient_id=SENTINELS["PatientID"], extra=extra,
    )
    for query in ({"annotate": "false"}, {"annotate": "true", "canonical_image": "true"}):
        response = httpx.post(f"{stack.gateway}/upload", files={"file": ("x.dcm", data)},
                              params=query, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["metadata"]["patient_id"].startswith("anon-")
        for value in SENTINELS.values():
            assert value not in response.text
    # a refused upload carrying the same PHI must not leak it either
    refused = httpx.post(f"{stack.gateway}/upload", files={"file": ("x.dcm", data[: len(data) // 3])},
                         timeout=60)
    assert refused.status_code in (400, 422)
    logs = stack.logs()
    assert "analysed upload" in logs  # the logs were really captured
    for value in SENTINELS.values():
        assert value not in logs
        assert value.replace("^", " ") not in logs
