"""PS3.14 rendering rules on crafted variants and on pydicom's real test files.

Each crafted file changes one thing (VOI LUT Sequence, several windows,
SIGMOID, negative slope, padding, MONOCHROME1 + INVERSE, signed, 8-bit,
garbage high bits, a window that misses...) and is compared with the plain
float reference in tests/dicom/reference.py.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence

from shared import dicom
from tests.dicom import reference
from tests.dicom.conftest import require_encoding
from tests.dicom.corpus import (
    base_dataset,
    pydicom_data_file,
    reference_pixels,
    synthetic_dx,
    to_bytes,
)

DX = synthetic_dx(rows=300, columns=240)


def _lut_item(first: int, values: np.ndarray, bits: int) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "SS" if first < 0 else "US", [len(values) % 65536, first, bits])
    item.add_new(0x00283006, "US", [int(v) for v in values])
    return item


def v_plain() -> Dataset:
    return base_dataset(DX, bits_stored=12)


def v_window() -> Dataset:
    ds = v_plain()
    ds.WindowCenter, ds.WindowWidth = 1800, 1200
    return ds


def v_voi_lut_sequence() -> Dataset:
    ds = v_window()  # the LUT must win over the window
    x = np.arange(4096)
    ds.VOILUTSequence = Sequence([_lut_item(0, np.rint(65535 * (x / 4095) ** 0.5), 16)])
    return ds


def v_voi_lut_8bit_offset() -> Dataset:
    ds = v_plain()
    x = np.arange(2000)
    ds.VOILUTSequence = Sequence([_lut_item(1000, np.rint(255 * x / 1999), 8)])
    return ds


def v_voi_lut_decreasing() -> Dataset:
    ds = v_plain()
    x = np.arange(4096)
    ds.VOILUTSequence = Sequence([_lut_item(0, 4095 - x, 12)])
    return ds


def v_windows_multi() -> Dataset:
    ds = v_plain()
    ds.WindowCenter, ds.WindowWidth = [1500, 3000], [800, 500]
    return ds


def v_linear_exact() -> Dataset:
    ds = v_window()
    ds.VOILUTFunction = "LINEAR_EXACT"
    return ds


def v_sigmoid() -> Dataset:
    ds = v_window()
    ds.VOILUTFunction = "SIGMOID"
    return ds


def v_negative_slope() -> Dataset:
    ds = v_plain()
    ds.RescaleSlope, ds.RescaleIntercept = -1, 4095
    ds.WindowCenter, ds.WindowWidth = 2300, 1500
    return ds


def v_float_rescale() -> Dataset:
    ds = v_plain()
    ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-1024.25"
    ds.WindowCenter, ds.WindowWidth = -100, 900
    return ds


def v_modality_lut_sequence() -> Dataset:
    ds = v_plain()
    x = np.arange(4096)
    ds.ModalityLUTSequence = Sequence([_lut_item(0, np.rint(4095 * np.sqrt(x / 4095)), 12)])
    ds.WindowCenter, ds.WindowWidth = 2500, 2000
    return ds


def _padded() -> np.ndarray:
    pixels = DX.copy()
    pixels[:, :30] = 4095  # padding in the brightest value: must not stretch the min-max
    return pixels


def v_padding() -> Dataset:
    ds = base_dataset(_padded(), bits_stored=12)
    ds.PixelPaddingValue = 4095
    return ds


def v_padding_range() -> Dataset:
    pixels = _padded()
    pixels[:, 30:40] = 4000
    ds = base_dataset(pixels, bits_stored=12)
    ds.PixelPaddingValue = 4095
    ds.PixelPaddingRangeLimit = 3990
    return ds


def v_mono1() -> Dataset:
    ds = base_dataset(DX, bits_stored=12, photometric="MONOCHROME1")
    ds.WindowCenter, ds.WindowWidth = 1800, 1200
    return ds


def v_mono1_inverse() -> Dataset:
    ds = v_mono1()
    ds.PresentationLUTShape = "INVERSE"
    return ds


def v_mono2_inverse() -> Dataset:
    ds = v_window()
    ds.PresentationLUTShape = "INVERSE"
    return ds


def v_signed() -> Dataset:
    pixels = (DX.astype(np.int16) - 2048).astype(np.int16)
    ds = base_dataset(pixels, bits_stored=12, signed=True, modality="CT")
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = -1200, 1400
    return ds


def v_signed_not_extended() -> Dataset:
    pixels = ((DX.astype(np.int32) - 2048) & 0x0FFF).astype(
        np.uint16
    )  # raw 12-bit two's complement
    ds = base_dataset(pixels.view(np.int16), bits_stored=12, signed=True, modality="CT")
    ds.WindowCenter, ds.WindowWidth = 0, 3000
    return ds


def v_signed_padding() -> Dataset:
    pixels = (DX.astype(np.int16) - 2048).astype(np.int16)
    pixels[:20] = -2048
    ds = base_dataset(pixels, bits_stored=12, signed=True, modality="CT")
    ds.PixelPaddingValue = -2048
    return ds


def v_eight_bit() -> Dataset:
    ds = base_dataset((DX >> 4).astype(np.uint8), bits_stored=8)
    ds.WindowCenter, ds.WindowWidth = 110, 120
    return ds


def v_eight_bit_signed() -> Dataset:
    return base_dataset(
        ((DX >> 4).astype(np.int16) - 128).astype(np.int8), bits_stored=8, signed=True
    )


def v_seven_of_eight_bits_mono1() -> Dataset:
    ds = base_dataset((DX >> 5).astype(np.uint8) | 0x80, bits_stored=7, photometric="MONOCHROME1")
    return ds


def v_high_bits() -> Dataset:
    rng = np.random.default_rng(5)
    noise = (
        rng.integers(0, 16, DX.shape, dtype=np.uint16) << 12
    )  # overlay-like garbage above bit 11
    return base_dataset(DX | noise, bits_stored=12)


def v_high_bits_window() -> Dataset:
    ds = v_high_bits()
    ds.WindowCenter, ds.WindowWidth = 1800, 1200
    return ds


def v_sixteen_bits() -> Dataset:
    ds = base_dataset(DX * 16 + 7, bits_stored=16)
    ds.WindowCenter, ds.WindowWidth = 30000, 40000
    return ds


def v_window_misses() -> Dataset:
    ds = v_plain()
    ds.WindowCenter, ds.WindowWidth = 60000, 100
    return ds


def v_sigmoid_misses() -> Dataset:
    ds = v_sigmoid()
    ds.WindowCenter, ds.WindowWidth = -50000, 10
    return ds


def v_voi_lut_misses() -> Dataset:
    ds = v_plain()
    ds.VOILUTSequence = Sequence([_lut_item(5000, np.arange(100), 16)])
    return ds


def v_narrow_window() -> Dataset:
    ds = v_plain()
    ds.WindowCenter, ds.WindowWidth = 2300, 1
    return ds


def v_small_no_resize() -> Dataset:
    ds = base_dataset(DX[:90, :70].copy(), bits_stored=12)
    ds.WindowCenter, ds.WindowWidth = 1800, 1200
    return ds


def v_tall() -> Dataset:
    return base_dataset(np.tile(DX, (8, 1))[:2200, :150].copy(), bits_stored=12)


VARIANTS: dict[str, Callable[[], Dataset]] = {
    name[2:]: fn for name, fn in globals().items() if name.startswith("v_") and callable(fn)
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_crafted_variant_matches_reference(name: str) -> None:
    ds = VARIANTS[name]()
    raw = ds.pixel_array
    expected, fell_back = reference.render(ds, raw)
    canonical, meta = dicom.decode_dicom(to_bytes(ds))
    assert canonical.pixels.shape == expected.shape
    assert reference.max_diff(canonical.pixels, expected) <= 1
    warned = any("min-max window was used" in w for w in canonical.warnings)
    assert warned == fell_back
    assert meta.photometric_interpretation == ds.PhotometricInterpretation


def test_long_side_and_scale() -> None:
    canonical, _ = dicom.decode_dicom(to_bytes(v_tall()), long_side=512)
    assert canonical.pixels.shape == (512, round(150 * 512 / 2200))
    assert canonical.scale_y == 512 / 2200 and canonical.scale_x == canonical.pixels.shape[1] / 150
    small, _ = dicom.decode_dicom(to_bytes(v_small_no_resize()), long_side=4096)
    assert small.pixels.shape == (90, 70) and small.scale_x == small.scale_y == 1.0


def test_inverse_is_one_inversion() -> None:
    """MONOCHROME1 + INVERSE renders like MONOCHROME1 alone.

    MONOCHROME2 + INVERSE is the negative of MONOCHROME2.
    """
    mono1 = dicom.decode_dicom(to_bytes(v_mono1()))[0].pixels
    both = dicom.decode_dicom(to_bytes(v_mono1_inverse()))[0].pixels
    assert np.array_equal(mono1, both)
    plain = dicom.decode_dicom(to_bytes(v_window()))[0].pixels.astype(int)
    assert reference.max_diff(mono1, 255 - plain) <= 1


def test_padding_excluded_from_min_max() -> None:
    canonical, _ = dicom.decode_dicom(to_bytes(v_padding()), long_side=10_000)
    assert canonical.pixels[:, :30].max() == 0  # padding renders black
    assert canonical.pixels[:, 30:].max() == 255  # the real data still spans the full range


def test_window_miss_warns_and_is_not_blank() -> None:
    canonical, _ = dicom.decode_dicom(to_bytes(v_window_misses()))
    assert canonical.pixels.std() > 10
    assert any("min-max window" in w for w in canonical.warnings)


def test_uniform_and_all_padding_images_do_not_crash() -> None:
    flat = base_dataset(np.full((50, 40), 1234, dtype=np.uint16), bits_stored=12)
    canonical, _ = dicom.decode_dicom(to_bytes(flat))
    assert canonical.pixels.max() == 0 and any("single grey" in w for w in canonical.warnings)
    flat.PixelPaddingValue = 1234
    canonical, _ = dicom.decode_dicom(to_bytes(flat))
    assert canonical.pixels.max() == 0 and any("Pixel Padding" in w for w in canonical.warnings)


def test_reference_agrees_with_pydicom_processing() -> None:
    """Cross-check of the reference itself against pydicom's modality/VOI functions.

    (Not for a negative Rescale Slope: pydicom's apply_windowing derives the
    window's output range from the slope, so it comes out inverted there;
    PS3.3 C.11.2.1.2 defines the window output as increasing. Nor for our
    12-bit Modality LUT: apply_modality_lut asks numpy for a 'uint12' dtype.)
    """
    for make in (v_window, v_voi_lut_sequence, v_sigmoid, v_linear_exact, v_windows_multi):
        ds = make()
        arr = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
        arr = (arr - arr.min()) / (arr.max() - arr.min())
        theirs = np.floor(arr * 255).astype(np.uint8)
        ours, _ = reference.render_full(ds, ds.pixel_array)
        assert reference.max_diff(ours, theirs) <= 1, make.__name__


# ------------------------------------------------------------ real files

REAL = {
    # name: (file, reference decoder: "pydicom" or an encoding key for tools)
    "ct_small_signed_padding": ("CT_small.dcm", "pydicom"),
    "mr_small": ("MR_small.dcm", "pydicom"),
    "mr_small_rle": ("MR_small_RLE.dcm", "pydicom"),
    "mr_small_big_endian": ("MR_small_bigendian.dcm", "pydicom"),
    "mr_small_jpegls": ("MR_small_jpeg_ls_lossless.dcm", "jpegls_lossless"),
    "mr_siemens_two_windows": ("MR-SIEMENS-DICOM-WithOverlays.dcm", "pydicom"),
    "modality_lut_mlut_18": ("mlut_18.dcm", "pydicom"),
    "voi_lut_vlut_04": ("vlut_04.dcm", "pydicom"),
    "deflated_image_dfl": ("image_dfl.dcm", "pydicom"),
    "j2k_nm": ("JPEG2000.dcm", "j2k_lossless"),
    "j2k_ct_signed_693": ("693_J2KR.dcm", "j2k_lossless"),
    "j2k_lossy_ct_693": ("693_J2KI.dcm", "j2k_lossy"),
    "j2k_mr2_float_rescale": ("MR2_J2KR.dcm", "j2k_lossless"),
    "j2k_pixelrep_mismatch": ("J2K_pixelrep_mismatch.dcm", "pydicom"),
    "jpeg_extended_12bit": ("JPGExtended.dcm", "jpeg_extended"),
    "jpeg_lossy_12bit": ("JPEG-lossy.dcm", "jpeg_extended"),
    "jpegls_near_16": ("JPEGLSNearLossless_16.dcm", "jpegls_near"),
    "jpegls_near_08": ("JPEGLSNearLossless_08.dcm", "jpegls_near"),
    "rg1_j2k_lossless_real": ("RG1_J2KR.dcm", "j2k_lossless"),
    "rg3_j2k_lossy_real": ("RG3_J2KI.dcm", "j2k_lossy"),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_file_matches_reference(name: str, work_dir) -> None:
    filename, decoder = REAL[name]
    path = pydicom_data_file(filename)
    ds = pydicom.dcmread(path)
    if decoder == "pydicom":
        raw = np.asarray(ds.pixel_array)
    else:
        require_encoding(decoder)
        raw = reference_pixels(path, decoder, work_dir)
    expected, _ = reference.render(ds, raw)
    canonical, meta = dicom.decode_dicom(path.read_bytes())
    assert reference.max_diff(canonical.pixels, expected) <= 1
    assert meta.transfer_syntax_uid == str(ds.file_meta.TransferSyntaxUID)
