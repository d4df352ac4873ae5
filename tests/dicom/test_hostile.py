"""Bad uploads get the right DicomError, fast, without big allocations.

Odd but valid ones (no file meta, mislabelled encodings) decode.
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from shared import dicom
from tests.dicom import hostile
from tests.dicom.corpus import SENTINELS, to_bytes


@pytest.mark.parametrize("name", sorted(hostile.HOSTILE))
def test_refused_with_right_status(name: str) -> None:
    maker, expected = hostile.HOSTILE[name]
    data = maker()
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(dicom.DicomError) as info:
            dicom.decode_dicom(data)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    error = info.value
    assert type(error) is expected, error.message
    assert error.status_code == (400 if expected is dicom.NotDicomError else 422)
    assert error.message and error.message == str(error)
    assert not any(s in error.message for s in SENTINELS)
    assert elapsed < 3.0
    assert peak < 64 * 1024 * 1024, f"allocated {peak / 2**20:.0f} MiB"


def test_deflate_bomb_is_refused_without_inflating_it() -> None:
    limits = dicom.DecodeLimits(max_inflated_bytes=4 * 1024 * 1024)
    bomb = hostile.deflate_bomb(16 * 1024 * 1024)
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(dicom.UnsupportedDicomError, match="MAX_DICOM_INFLATED_BYTES"):
            dicom.decode_dicom(bomb, limits=limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * 1024 * 1024


def test_deflated_small_body_decodes() -> None:
    ds = hostile.small_ds()
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    canonical, meta = dicom.decode_dicom(hostile.deflated(hostile.deflate_raw(body.getvalue())))
    assert meta.transfer_syntax_name == "Deflated Explicit VR Little Endian"
    assert canonical.pixels.shape == (64, 48)


EXPECTED = dicom.decode_dicom(to_bytes(hostile.small_ds()))[0].pixels


@pytest.mark.parametrize(
    ("name", "maker"),
    [
        (
            "no_meta_implicit",
            lambda: hostile.raw_file(hostile.small_ds(), None, implicit=True, with_meta=False),
        ),
        ("no_meta_explicit", lambda: hostile.raw_file(hostile.small_ds(), None, with_meta=False)),
        ("no_meta_big_endian", hostile.big_endian_no_meta),
        ("meta_without_syntax", lambda: hostile.raw_file(hostile.small_ds(), None)),
        ("meta_with_garbage_syntax", lambda: hostile.raw_file(hostile.small_ds(), "not-a-uid")),
        ("encapsulated_no_meta", hostile.encapsulated_no_meta),
    ],
)
def test_missing_file_meta_is_inferred(name: str, maker) -> None:
    canonical, meta = dicom.decode_dicom(maker())
    assert np.array_equal(canonical.pixels, EXPECTED)
    assert any("inferred" in w for w in canonical.warnings)
    assert meta.patient_id is not None  # the dataset really was parsed


def test_declared_explicit_but_written_implicit_still_decodes() -> None:
    data = hostile.raw_file(hostile.small_ds(), "1.2.840.10008.1.2.1", implicit=True)
    canonical, _ = dicom.decode_dicom(data)
    assert np.array_equal(canonical.pixels, EXPECTED)


def test_long_side_must_be_positive() -> None:
    with pytest.raises(ValueError):
        dicom.decode_dicom(to_bytes(hostile.small_ds()), long_side=0)


def test_messages_are_sentences() -> None:
    for name, (maker, _) in hostile.HOSTILE.items():
        try:
            dicom.decode_dicom(maker())
        except dicom.DicomError as exc:
            assert exc.message[0].isupper() and exc.message.rstrip().endswith("."), (
                name,
                exc.message,
            )
