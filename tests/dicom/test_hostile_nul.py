"""Zero bytes parse as a run of (0000,0000) elements in pydicom; they are not DICOM (400)."""

from __future__ import annotations

import pytest

from shared.dicom import NotDicomError, decode_dicom


@pytest.mark.parametrize("data", [b"\0" * 4096, b"\0" * 200, b"\0" * 128 + b"DICM" + b"\0" * 100])
def test_zero_bytes_are_not_dicom(data: bytes) -> None:
    with pytest.raises(NotDicomError) as caught:
        decode_dicom(data)
    assert caught.value.status_code == 400
