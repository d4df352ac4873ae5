"""An independent, deliberately plain reference rendering (float64 numpy, PS3.14 order).

Written from the standard, not from gateway code: every step is the textbook
formula applied to every pixel. Slow, obvious, and the thing decode_dicom
must match within a grey level or two.
"""

from __future__ import annotations

import cv2
import numpy as np
from pydicom.dataset import Dataset


def _first(value: object) -> float:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return float(value[0])  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def stored_values(raw: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Mask the unused high bits and sign-extend (PS3.5 8.1.1)."""
    x = raw.astype(np.int64) & ((1 << bits_stored) - 1)
    if signed:
        x = np.where(x >= 1 << (bits_stored - 1), x - (1 << bits_stored), x)
    return x


def _lut(item: Dataset, x: np.ndarray) -> tuple[np.ndarray, int]:
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    data = item.LUTData
    if isinstance(data, bytes):
        data = np.frombuffer(data, dtype="<u2")
    table = np.asarray(data, dtype=np.float64)[:entries]
    index = np.clip(np.rint(x).astype(np.int64) - first, 0, len(table) - 1)
    return table[index], bits


def window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 / C.11.2.1.3, output range [0, 1]."""
    y = np.empty(x.shape, dtype=np.float64)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        below, above = x <= center - width / 2, x > center + width / 2
        y[:] = (x - center) / width + 0.5
    else:
        below = x <= center - 0.5 - (width - 1) / 2
        above = x > center - 0.5 + (width - 1) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            y[:] = (x - (center - 0.5)) / (width - 1) + 0.5
    y[below] = 0.0
    y[above] = 1.0
    return y


def canonical_size(rows: int, columns: int, long_side: int) -> tuple[int, int]:
    s = min(1.0, long_side / max(rows, columns))
    return round(columns * s), round(rows * s)


def render_full(ds: Dataset, raw: np.ndarray) -> tuple[np.ndarray, bool]:
    """Full-resolution uint8 rendering and whether the VOI fell back to min-max."""
    bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
    x = stored_values(raw, bits, signed)
    pad = np.zeros(x.shape, dtype=bool)
    if "PixelPaddingValue" in ds:
        p = stored_values(np.array([int(ds.PixelPaddingValue) & 0xFFFF]), bits, signed)[0]
        q = p
        if "PixelPaddingRangeLimit" in ds:
            q = stored_values(np.array([int(ds.PixelPaddingRangeLimit) & 0xFFFF]), bits, signed)[0]
        pad = (x >= min(p, q)) & (x <= max(p, q))

    if "ModalityLUTSequence" in ds:
        m, _ = _lut(ds.ModalityLUTSequence[0], x)
    else:
        m = x * float(ds.get("RescaleSlope", 1.0)) + float(ds.get("RescaleIntercept", 0.0))

    y, nominal = m, None
    if "VOILUTSequence" in ds:
        y, bits_out = _lut(ds.VOILUTSequence[0], m)
        nominal = float(2**bits_out - 1)
    elif "WindowCenter" in ds:
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        y = window(m, _first(ds.WindowCenter), _first(ds.WindowWidth), function)
        nominal = 1.0
    valid = ~pad
    fell_back = False
    if nominal is not None and np.ptp(y[valid]) < nominal / 255 and np.ptp(m[valid]) > 0:
        y, fell_back = m, True

    lo, hi = y[valid].min(), y[valid].max()
    t = (y - lo) / (hi - lo) if hi > lo else np.zeros_like(y)
    t = np.clip(t, 0.0, 1.0)
    inverse = (
        ds.PhotometricInterpretation == "MONOCHROME1" or ds.get("PresentationLUTShape") == "INVERSE"
    )
    if inverse:
        t = 1.0 - t
    out = np.floor(t * 255.0).astype(np.uint8)
    out[pad] = 0
    return out, fell_back


def render(ds: Dataset, raw: np.ndarray, long_side: int = 1024) -> tuple[np.ndarray, bool]:
    """Reference canonical image: full-resolution rendering, then INTER_AREA."""
    full, fell_back = render_full(ds, raw)
    size = canonical_size(full.shape[0], full.shape[1], long_side)
    if size != (full.shape[1], full.shape[0]):
        full = cv2.resize(full, size, interpolation=cv2.INTER_AREA)
    return full, fell_back


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())
