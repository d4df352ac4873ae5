"""Unit tests of the pure pieces: render paths, sizes, PNG, codec helpers, capabilities."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import uid as pduid

from shared import dicom
from shared.dicom import probes
from shared.dicom.codecs import openjpeg, sniff_syntax
from shared.dicom.codecs.j2k import reduce_factor
from shared.dicom.render import (
    LINEAR,
    LINEAR_EXACT,
    RenderSpec,
    Window,
    _render_lut,
    canonical_size,
    render,
    stored_domain,
)
from tests.dicom import hostile
from tests.tools import unavailable


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    bits=st.sampled_from([8, 10, 12, 15, 16]),
    signed=st.booleans(),
    slope=st.sampled_from([1.0, -1.0, 0.5, 2.0, -0.25]),
    intercept=st.sampled_from([0.0, -1024.0, 100.5]),
    window=st.one_of(
        st.none(),
        st.tuples(
            st.floats(-3000, 70000), st.floats(1, 70000), st.sampled_from([LINEAR, LINEAR_EXACT])
        ),
    ),
    invert=st.booleans(),
    dtype=st.sampled_from(["16", "32"]),
    seed=st.integers(0, 1000),
)
def test_affine_path_equals_lut_path(
    bits, signed, slope, intercept, window, invert, dtype, seed
) -> None:
    """The cv2.normalize shortcut gives the table's answer (within the 1/1024 floor band)."""
    lo, hi = stored_domain(bits, signed)
    rng = np.random.default_rng(seed)
    a, b = sorted(rng.integers(lo, hi + 1, size=2))
    pixels = rng.integers(a, b + 1, size=(40, 30))
    pixels = pixels.astype(np.int32 if dtype == "32" else (np.int16 if signed else np.uint16))
    spec = RenderSpec(
        bits_stored=bits,
        signed=signed,
        slope=slope,
        intercept=intercept,
        window=None if window is None else Window(window[0], window[1], window[2]),
        invert=invert,
    )
    fast = render(pixels, spec)
    table, table_warnings, table_range = _render_lut(pixels, spec)
    assert int(np.abs(fast.pixels.astype(int) - table.astype(int)).max()) <= 1
    assert set(fast.warnings) == set(table_warnings)
    assert fast.modality_range == table_range  # the same values kept, by min/max or histogram


@pytest.mark.parametrize(("padding", "histograms"), [(None, 0), (0, 1)], ids=["affine", "table"])
def test_a_decode_takes_at_most_one_histogram(
    monkeypatch: pytest.MonkeyPatch, padding: int | None, histograms: int
) -> None:
    """The presentation state's window comes from what the rendering kept, not a second
    full-resolution pass (the affine path needs none: its min/max is the range)."""
    from shared.dicom import render as rendering
    from tests.dicom.corpus import to_bytes

    taken: list[int] = []
    histogram = rendering._histogram
    monkeypatch.setattr(rendering, "_histogram", lambda *a: taken.append(1) or histogram(*a))
    ds = hostile.small_ds()  # 12 bits stored, a LINEAR window
    if padding is not None:
        ds.PixelPaddingValue = padding  # padding takes the table path
    _, metadata = dicom.decode_dicom(to_bytes(ds))
    assert len(taken) == histograms
    assert metadata.source is not None and metadata.source.window is not None


def test_canonical_size() -> None:
    assert canonical_size(1606, 2455, 1024) == (1024, 670)  # VinDr landscape
    assert canonical_size(2455, 1606, 1024) == (670, 1024)
    assert canonical_size(500, 400, 1024) == (400, 500)  # never upscaled
    assert canonical_size(3000, 10, 1024) == (3, 1024)
    assert canonical_size(5000, 1, 1024) == (1, 1024)  # never zero


def test_encode_png_roundtrip() -> None:
    pixels = np.arange(64 * 48, dtype=np.uint32).reshape(64, 48).astype(np.uint8)
    png = dicom.encode_png(pixels)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert png[24:26] == b"\x08\x00"  # IHDR: bit depth 8, colour type 0 (grey)
    assert np.array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED), pixels)
    with pytest.raises(ValueError):
        dicom.encode_png(pixels.astype(np.uint16))


def test_decodable_transfer_syntaxes_default_install() -> None:
    """With the gateway extra installed every syntax of issue 3 decodes (proven by probes)."""
    result = dicom.decodable_transfer_syntaxes()
    assert len(result) == 16
    assert all(isinstance(v, bool) for v in result.values())
    assert [k for k, v in result.items() if not v] == []


def test_decodable_transfer_syntaxes_in_workers(decoder_pool: dicom.DecoderPool) -> None:
    """The gateway proves its codecs in its workers; a probe that outlasts the deadline
    makes its syntax undecodable in /health, never a failed start."""
    assert dicom.decodable_transfer_syntaxes(decoder_pool) == dicom.decodable_transfer_syntaxes()
    with dicom.DecoderPool(1, timeout_s=0.001) as hopeless:
        result = dicom.decodable_transfer_syntaxes(hopeless)
    assert result[pduid.ExplicitVRLittleEndian.name] and result[pduid.ImplicitVRLittleEndian.name]
    assert not result[pduid.JPEG2000Lossless.name] and not result[pduid.RLELossless.name]


def test_every_compressed_syntax_has_a_probe() -> None:
    from shared.dicom.codecs import COMPRESSED_SYNTAXES

    assert {str(u) for u in COMPRESSED_SYNTAXES} == set(probes.PROBES)


def test_j2k_reduce_factor() -> None:
    assert reduce_factor(1606, 2455, (1024, 670), 5) == 1  # VinDr: half resolution suffices
    assert reduce_factor(1955, 1841, (964, 1024), 5) == 0  # 978 < 1024: full resolution
    assert reduce_factor(4096, 4096, (1024, 1024), 5) == 2
    assert reduce_factor(4096, 4096, (1024, 1024), 1) == 1  # limited by the codestream
    assert reduce_factor(4096, 4096, (1024, 1024), 0) == 0


def test_sniff_syntax() -> None:
    j2k = base64.b64decode(probes.PROBES[pduid.JPEG2000Lossless].frame_b64)
    ht = base64.b64decode(probes.PROBES[pduid.HTJ2KLossless].frame_b64)
    jls = base64.b64decode(probes.PROBES[pduid.JPEGLSLossless].frame_b64)
    ll = base64.b64decode(probes.PROBES[pduid.JPEGLosslessSV1].frame_b64)
    base = base64.b64decode(probes.PROBES[pduid.JPEGBaseline8Bit].frame_b64)
    rle = base64.b64decode(probes.PROBES[pduid.RLELossless].frame_b64)
    assert sniff_syntax(j2k) == pduid.JPEG2000
    assert sniff_syntax(ht) == pduid.HTJ2K
    assert sniff_syntax(jls) == pduid.JPEGLSLossless
    assert sniff_syntax(ll) == pduid.JPEGLossless
    assert sniff_syntax(base) == pduid.JPEGBaseline8Bit
    assert sniff_syntax(rle) == pduid.RLELossless
    assert sniff_syntax(b"\x00" * 100) is None


def test_j2k_size_is_checked_before_decoding() -> None:
    stream = base64.b64decode(probes.PROBES[pduid.JPEG2000Lossless].frame_b64)
    if not openjpeg.available():
        unavailable(
            "missing libopenjp2: pip install pillow (its wheel ships it) "
            "or apt-get install libopenjp2-7"
        )
    assert openjpeg.decode(stream).shape == (32, 32)
    with pytest.raises(openjpeg.J2kError):
        openjpeg.decode(stream, expected_size=(64, 32))
    with pytest.raises(openjpeg.J2kError):
        openjpeg.decode(stream[: len(stream) // 3])
    reduced = openjpeg.decode(stream, reduce=1)
    assert reduced.shape == (16, 16)


def test_error_classes() -> None:
    assert issubclass(dicom.NotDicomError, dicom.DicomError)
    assert issubclass(dicom.UnsupportedDicomError, dicom.DicomError)
    assert dicom.NotDicomError("x").status_code == 400
    assert dicom.UnsupportedDicomError("x").status_code == 422


def test_canonical_image_is_frozen_and_contiguous() -> None:
    canonical, meta = dicom.decode_dicom(hostile.j2k_small())
    assert canonical.pixels.flags.c_contiguous and canonical.pixels.dtype == np.uint8
    with pytest.raises(AttributeError):
        canonical.scale_x = 2.0  # type: ignore[misc]
    assert meta.transfer_syntax_name == "JPEG 2000 Image Compression (Lossless Only)"
