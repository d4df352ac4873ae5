"""The one DICOM writer: lossless round trips, given UIDs kept, same input -> same bytes."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from training.dicom_writer import (
    CR_IMAGE_STORAGE,
    DX_FOR_PRESENTATION,
    SECONDARY_CAPTURE,
    file_bytes,
    xray_dataset,
)

UID = "1.2.826.0.1.3680043.8.498.1"


def _pixels(bits: int = 12) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 1 << bits, size=(48, 32), dtype=np.uint16)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless])
def test_round_trip_is_lossless_and_keeps_the_uid(syntax: str) -> None:
    pixels = _pixels()
    data = file_bytes(
        xray_dataset(
            pixels,
            sop_instance_uid=UID,
            attributes={"Modality": "DX", "PatientID": "P1"},
            photometric="MONOCHROME1",
            transfer_syntax=syntax,
        )
    )
    assert data[128:132] == b"DICM"
    ds = pydicom.dcmread(BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == UID
    assert ds.SOPClassUID == DX_FOR_PRESENTATION
    assert (ds.PhotometricInterpretation, ds.BitsStored, ds.HighBit) == ("MONOCHROME1", 12, 11)
    assert (ds.PatientID, ds.Modality) == ("P1", "DX")
    np.testing.assert_array_equal(ds.pixel_array, pixels)


def test_same_input_gives_the_same_bytes() -> None:
    def write() -> bytes:
        return file_bytes(
            xray_dataset(_pixels(), sop_instance_uid=UID, transfer_syntax=JPEG2000Lossless)
        )

    assert write() == write()


def test_eight_bit_secondary_capture_and_cr() -> None:
    pixels = _pixels(bits=8).astype(np.uint8)
    for sop_class in (SECONDARY_CAPTURE, CR_IMAGE_STORAGE):
        ds = pydicom.dcmread(
            BytesIO(
                file_bytes(
                    xray_dataset(
                        pixels, sop_instance_uid=UID, bits_stored=8, sop_class_uid=sop_class
                    )
                )
            )
        )
        assert (ds.SOPClassUID, ds.BitsAllocated) == (sop_class, 8)
        np.testing.assert_array_equal(ds.pixel_array, pixels)


def test_writer_owned_attributes_are_refused() -> None:
    with pytest.raises(ValueError, match="Rows"):
        xray_dataset(_pixels(), sop_instance_uid=UID, attributes={"Rows": 7})
    with pytest.raises(ValueError, match="grey frame"):
        xray_dataset(np.zeros((2, 2, 3), np.uint16), sop_instance_uid=UID)
