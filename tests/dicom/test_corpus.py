"""Every transfer syntax, made by the real tools from real and synthetic radiographs,
renders within a grey level or two of an independent reference.

The reference decodes with a different decoder than the service (DCMTK for
JPEG/JPEG-LS/RLE, GDCM for JPEG 2000, OpenJPH for HTJ2K) and renders with
the plain float pipeline in tests/dicom/reference.py. For lossless syntaxes
the reference decode must also equal the uncompressed source bit for bit.
"""

from __future__ import annotations

import cv2
import numpy as np
import pydicom
import pytest

from shared import dicom
from tests.dicom import reference
from tests.dicom.conftest import require_encoding
from tests.dicom.corpus import ENCODINGS, Corpus, reference_pixels

ALL = list(ENCODINGS)
# rg1 (real CR, 15 bit, 3.6 MP) is slow to transcode: the syntaxes real DX/CR files use
# (its JPEG 2000 versions are real files from pydicom-data, see test_rendering.py).
RG1 = ["explicit_le", "rle", "jpeg_lossless_sv1", "jpegls_lossless", "htj2k_lossless"]
# ct693 is signed (CT, Pixel Padding): tools that cannot encode signed data are left out
# (dcmcjpls near-lossless refuses signed input; the corpus' HTJ2K path is unsigned only).
CT = [k for k in ALL if k not in ("jpegls_near", "htj2k_lossless", "htj2k_lossy")]

CASES = (
    [("dx12", k) for k in ALL]
    + [("dx12_mono1", k) for k in ALL]
    + [("rg3", k) for k in ALL]
    + [("rg1", k) for k in RG1]
    + [("ct693", k) for k in CT]
)


@pytest.mark.parametrize(("source", "key"), CASES, ids=[f"{s}-{k}" for s, k in CASES])
def test_renders_like_reference(corpus: Corpus, work_dir, source: str, key: str) -> None:
    require_encoding(key)
    path = corpus.get(source, key)
    ds = pydicom.dcmread(path)
    assert str(ds.file_meta.TransferSyntaxUID) == ENCODINGS[key].uid

    raw = reference_pixels(path, key, work_dir)
    if ENCODINGS[key].lossless:
        src = np.asarray(pydicom.dcmread(corpus.source(source)).pixel_array, dtype=np.int64)
        assert np.array_equal(raw, src), "the reference decoder is not lossless"
    expected, fell_back = reference.render(ds, raw)

    canonical, meta = dicom.decode_dicom(path.read_bytes())

    assert canonical.pixels.dtype == np.uint8 and canonical.pixels.flags.c_contiguous
    assert canonical.pixels.shape == expected.shape
    assert reference.max_diff(canonical.pixels, expected) <= (1 if ENCODINGS[key].lossless else 2)
    assert (dicom_warns_fallback(canonical)) == fell_back
    assert meta.transfer_syntax_uid == ENCODINGS[key].uid
    assert meta.rows == int(ds.Rows) and meta.columns == int(ds.Columns)
    assert meta.bits_stored == int(ds.BitsStored)
    h, w = canonical.pixels.shape
    assert canonical.scale_x == w / int(ds.Columns) and canonical.scale_y == h / int(ds.Rows)
    assert max(h, w) <= 1024


def dicom_warns_fallback(canonical: dicom.CanonicalImage) -> bool:
    return any("min-max window was used" in w for w in canonical.warnings)


def test_real_cr_is_monochrome1_and_inverted(corpus: Corpus) -> None:
    """RG3 is a real MONOCHROME1 CR: low stored values must come out bright (inverted once)."""
    canonical, meta = dicom.decode_dicom(corpus.source("rg3").read_bytes())
    assert meta.photometric_interpretation == "MONOCHROME1"
    raw = pydicom.dcmread(corpus.source("rg3")).pixel_array.astype(np.float32)
    h, w = canonical.pixels.shape
    small = cv2.resize(raw, (w, h), interpolation=cv2.INTER_AREA)
    assert np.corrcoef(small.ravel(), canonical.pixels.ravel())[0, 1] < -0.9


def test_reduced_j2k_is_close_and_says_so(corpus: Corpus) -> None:
    """The opt-in reduced-resolution JPEG 2000 path stays close to the exact rendering."""
    require_encoding("j2k_lossless")
    data = corpus.get("rg3", "j2k_lossless").read_bytes()
    exact, _ = dicom.decode_dicom(data, 700)
    fast, _ = dicom.decode_dicom(data, 700, reduced_j2k=True)
    assert fast.pixels.shape == exact.pixels.shape
    assert (fast.scale_x, fast.scale_y) == (exact.scale_x, exact.scale_y)
    diff = np.abs(fast.pixels.astype(int) - exact.pixels.astype(int))
    assert diff.mean() < 0.5
    assert (diff > 1).mean() < 0.02
    assert any("reduced resolution" in w for w in fast.warnings)
    assert not any("reduced resolution" in w for w in exact.warnings)
