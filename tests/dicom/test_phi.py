"""PHI: sentinels planted in PatientName/ID/BirthDate (and in odd places) never reach
error messages, warnings, logs or stderr; public_patient_id follows the operator's mode."""

from __future__ import annotations

import hashlib
import hmac
import logging
import traceback
import warnings

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from gateway.pipeline.phi import public_patient_id
from shared import dicom
from shared.settings import PhiMode
from tests.dicom import hostile
from tests.dicom.corpus import SENTINEL_BIRTH, SENTINEL_ID, SENTINEL_NAME, SENTINELS, to_bytes


def _phi_in_odd_places() -> dict[str, bytes]:
    """Sentinels where a parser might quote them: pixel-module values, the transfer syntax."""

    def raw(group: int, element: int, vr: str, text: str) -> bytes:
        ds = hostile.small_ds()
        value = text.encode() + b" " * (len(text) % 2)
        tag = Tag(group, element)
        ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
        return to_bytes(ds)

    files: dict[str, bytes] = {
        "window_center": raw(0x0028, 0x1050, "DS", SENTINEL_ID),  # invalid DS: ignored, not quoted
        "rows_text": raw(0x0028, 0x0010, "US", SENTINEL_ID),
        "bits_text": raw(0x0028, 0x0101, "US", SENTINEL_NAME),
        "frames_text": raw(0x0028, 0x0008, "IS", SENTINEL_BIRTH),
    }
    files["syntax"] = hostile.raw_file(hostile.small_ds(), SENTINEL_ID)
    ds = hostile.small_ds()
    ds.PhotometricInterpretation = SENTINEL_NAME
    files["photometric"] = to_bytes(ds)
    ds = hostile.small_ds()
    ds.VOILUTFunction = SENTINEL_BIRTH
    files["voi_function"] = to_bytes(ds)
    return files


CASES = {**{name: maker for name, (maker, _) in hostile.HOSTILE.items()}}


def _all_inputs() -> dict[str, bytes]:
    inputs = {name: maker() for name, maker in CASES.items()}
    inputs.update({f"odd_{k}": v for k, v in _phi_in_odd_places().items()})
    inputs["valid"] = to_bytes(hostile.small_ds())
    inputs["valid_j2k"] = hostile.j2k_small()
    return inputs


def test_sentinels_never_leak(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    leaks: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, data in _all_inputs().items():
            try:
                canonical, meta = dicom.decode_dicom(data)
            except dicom.DicomError as exc:
                text = exc.message + "".join(traceback.format_exception(exc))
            else:
                text = " ".join(canonical.warnings) + repr(
                    (
                        meta.study_date,
                        meta.modality,
                        meta.transfer_syntax_uid,
                        meta.transfer_syntax_name,
                    )
                )
                assert meta.patient_id in (SENTINEL_ID, None)  # raw on purpose: gateway.pipeline.phi decides
            leaks += [f"{name}: {s}" for s in SENTINELS if s in text]
    out, err = capfd.readouterr()
    logged = caplog.text + out + err + " ".join(str(w.message) for w in caught)
    leaks += [f"log/stderr/warnings: {s}" for s in SENTINELS if s in logged]
    assert not leaks


def test_pseudonym_is_keyed_stable_and_short() -> None:
    expected = "anon-" + hmac.new(b"s3cret", SENTINEL_ID.encode(), hashlib.sha256).hexdigest()[:16]
    assert public_patient_id(SENTINEL_ID, PhiMode.PSEUDONYMIZE, "s3cret") == expected
    assert public_patient_id(SENTINEL_ID, PhiMode("pseudonymize"), "s3cret") == expected
    assert public_patient_id(SENTINEL_ID, PhiMode.PSEUDONYMIZE, "other") != expected
    assert public_patient_id("other-id", PhiMode.PSEUDONYMIZE, "s3cret") != expected
    assert SENTINEL_ID not in expected


def test_modes() -> None:
    assert public_patient_id(SENTINEL_ID, PhiMode.REDACT, "s") is None
    assert public_patient_id(SENTINEL_ID, PhiMode.PASSTHROUGH, "s") == SENTINEL_ID
    for mode in PhiMode:
        assert public_patient_id(None, mode, "s") is None
        assert public_patient_id("", mode, "s") is None
    with pytest.raises(ValueError):
        public_patient_id(SENTINEL_ID, PhiMode.PSEUDONYMIZE, "")


def test_metadata_carries_raw_id_for_the_caller_to_pseudonymise() -> None:
    _, meta = dicom.decode_dicom(to_bytes(hostile.small_ds()))
    assert meta.patient_id == SENTINEL_ID
    assert meta.study_date == "20240102" and meta.modality == "DX"
    assert meta.sop_instance_uid and meta.study_instance_uid
