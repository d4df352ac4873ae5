"""Property: for any mutation of a valid DICOM, decode_dicom returns a valid canonical
image or raises DicomError: never another exception, never a hang.

And under the gateway's budget (issue 12): the same input decoded the gateway's way,
in a worker process with its address-space limit, deadline and caps, gives the same
answer as with the default caps and no memory limit, and no input crosses the
budget: no MemoryError and no worker out of memory, nothing near the deadline,
only DicomError subclasses. Both run in worker processes, so a decoder that
aborts costs a worker (and fails the property), never the test run.

Seeds are small valid files in every encoding we can make here; mutations
flip bytes, truncate, splice garbage, drop elements and change header values.
DICOM_FUZZ_EXAMPLES=5000 explores further than the default CI budget.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import JPEG2000Lossless, RLELossless

from gateway.pipeline.decode import decode_limits, decoder_pool
from shared import dicom
from shared.settings import GatewaySettings
from tests.dicom import hostile
from tests.dicom.corpus import ENCODINGS, convert, to_bytes
from tests.tools import have_tools

EXAMPLES = int(os.environ.get("DICOM_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=5000,
    derandomize=os.environ.get("DICOM_FUZZ_RANDOM") is None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TOOL_SEEDS = (
    "jpeg_lossless_sv1",
    "jpeg_baseline",
    "jpeg_extended",
    "jpegls_lossless",
    "htj2k_lossless",
)


def _seeds(tmp: Path) -> list[bytes]:
    ds = hostile.small_ds()
    seeds = [to_bytes(ds)]
    mono1 = hostile.small_ds()
    mono1.PhotometricInterpretation = "MONOCHROME1"
    mono1.PixelPaddingValue = 0
    mono1.VOILUTFunction = "SIGMOID"
    seeds.append(to_bytes(mono1))
    seeds.append(hostile.raw_file(ds, None, implicit=True, with_meta=False))
    for syntax in (RLELossless, JPEG2000Lossless):
        compressed = hostile.small_ds()
        compressed.compress(
            syntax, encoding_plugin="pylibjpeg" if syntax == JPEG2000Lossless else ""
        )
        seeds.append(to_bytes(compressed))
    src = tmp / "fuzz-seed.dcm"
    src.write_bytes(seeds[0])
    for key in TOOL_SEEDS:
        if have_tools(*ENCODINGS[key].tools):  # under CI a missing one fails
            seeds.append(convert(src, tmp / f"fuzz-seed.{key}.dcm", key).read_bytes())
    return seeds


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return _seeds(tmp_path_factory.mktemp("fuzz"))


# The gateway's way from default settings: its caps, in its workers (RLIMIT_AS, deadline).
GATEWAY = GatewaySettings(_env_file=None)
LIMITS = decode_limits(GATEWAY)


def _warm(workers: dicom.DecoderPool) -> dicom.DecoderPool:
    """A worker started and used once, so no example pays for its start (about a second)."""
    dicom.inspect_dicom(to_bytes(hostile.small_ds()), pool=workers)
    return workers


@pytest.fixture(scope="module")
def budget() -> Iterator[dicom.DecoderPool]:
    workers = decoder_pool(GATEWAY)
    assert workers is not None and workers.memory_mb > 0
    with workers:
        yield _warm(workers)


@pytest.fixture(scope="module")
def unlimited() -> Iterator[dicom.DecoderPool]:
    """Workers without a memory limit, for the default caps' answer."""
    with dicom.DecoderPool(memory_mb=0) as workers:
        yield _warm(workers)


def _budgeted(
    data: bytes, budget: dicom.DecoderPool
) -> tuple[np.ndarray, dicom.DicomMetadata] | dicom.DicomError:
    """decode_dicom the gateway's way; asserts the input stays inside the budget."""
    started = time.perf_counter()
    try:
        canonical, meta = dicom.decode_dicom(data, long_side=256, limits=LIMITS, pool=budget)
        result: tuple[np.ndarray, dicom.DicomMetadata] | dicom.DicomError = (
            canonical.pixels, meta
        )
    except dicom.DicomError as exc:
        result = exc
        for crossed in ("DICOM_DECODE_TIMEOUT_S", "DECODE_WORKER_MEMORY_MB"):
            assert crossed not in exc.message, exc.message
    elapsed = time.perf_counter() - started
    assert elapsed < budget.timeout_s / 2, f"{elapsed:.1f} s"
    return result


def _check(data: bytes, budget: dicom.DecoderPool, unlimited: dicom.DecoderPool) -> None:
    budgeted = _budgeted(data, budget)
    try:
        canonical, meta = dicom.decode_dicom(data, long_side=256, pool=unlimited)
    except dicom.DicomError as exc:
        assert exc.status_code in (400, 422)
        assert isinstance(exc.message, str) and exc.message
        assert isinstance(budgeted, dicom.DicomError), "decoded only the gateway's way"
        assert (type(budgeted), budgeted.message) == (type(exc), exc.message)
        return
    assert not isinstance(budgeted, dicom.DicomError), budgeted.message
    assert np.array_equal(budgeted[0], canonical.pixels) and budgeted[1] == meta
    pixels = canonical.pixels
    assert pixels.dtype == np.uint8 and pixels.ndim == 2 and pixels.flags.c_contiguous
    assert 0 < max(pixels.shape) <= 256
    assert canonical.original_rows == meta.rows and canonical.original_columns == meta.columns
    assert canonical.scale_x == pixels.shape[1] / meta.columns
    assert canonical.scale_y == pixels.shape[0] / meta.rows


@FUZZ
@given(data=st.data())
def test_byte_mutations(
    seeds: list[bytes], budget: dicom.DecoderPool, unlimited: dicom.DecoderPool,
    data: st.DataObject,
) -> None:
    seed = bytearray(data.draw(st.sampled_from(seeds), label="seed"))
    kind = data.draw(st.sampled_from(["flip", "truncate", "splice", "flip_header"]), label="kind")
    if kind == "truncate":
        mutated = bytes(seed[: data.draw(st.integers(0, len(seed)))])
    elif kind == "splice":
        at = data.draw(st.integers(0, len(seed)))
        junk = data.draw(st.binary(min_size=1, max_size=64))
        mutated = bytes(seed[:at]) + junk + bytes(seed[at:])
    else:
        # header bytes (first 2 KiB) are where mutations change meaning most
        top = min(len(seed), 2048) if kind == "flip_header" else len(seed)
        flips = data.draw(
            st.lists(
                st.tuples(st.integers(0, top - 1), st.integers(0, 255)), min_size=1, max_size=16
            )
        )
        for position, value in flips:
            seed[position] = value
        mutated = bytes(seed)
    _check(mutated, budget, unlimited)


KEYWORDS = [
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "SamplesPerPixel", "NumberOfFrames", "PhotometricInterpretation", "WindowCenter",
    "WindowWidth", "RescaleSlope", "RescaleIntercept", "VOILUTFunction", "PixelPaddingValue",
    "PresentationLUTShape", "PlanarConfiguration",
]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from([0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 32, 64, 255, 4096, 65535]),
    st.integers(-(2**15), 2**16 - 1),
    st.sampled_from(
        ["MONOCHROME1", "RGB", "PALETTE COLOR", "SIGMOID", "LINEAR_EXACT", "INVERSE", "x", ""]
    ),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)


@FUZZ
@given(data=st.data())
def test_element_mutations(
    seeds: list[bytes], budget: dicom.DecoderPool, unlimited: dicom.DecoderPool,
    data: st.DataObject,
) -> None:
    seed = data.draw(st.sampled_from(seeds), label="seed")
    ds = pydicom.dcmread(io.BytesIO(seed), force=True)
    action = data.draw(st.sampled_from(["drop", "set", "drop_meta"]), label="action")
    if action == "drop":
        tags = list(ds.keys())
        del ds[data.draw(st.sampled_from(tags), label="tag")]
    elif action == "drop_meta" and hasattr(ds, "file_meta") and len(ds.file_meta):
        del ds.file_meta[data.draw(st.sampled_from(list(ds.file_meta.keys())), label="meta tag")]
    else:
        keyword = data.draw(st.sampled_from(KEYWORDS), label="keyword")
        value = data.draw(VALUES, label="value")
        try:
            setattr(ds, keyword, value)
        except Exception:
            return  # pydicom refuses the value outright: nothing to send
    buffer = io.BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=False)
    except Exception:
        return  # not writable (pydicom validates some values on write)
    _check(buffer.getvalue(), budget, unlimited)
