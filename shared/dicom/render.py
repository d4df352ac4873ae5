"""Stored pixel values -> display-ready 8-bit grey, as DICOM PS3.14 describes it.

The pipeline, in the order the standard applies it:

1. stored value: mask the bits above Bits Stored, sign-extend signed data;
2. modality LUT: Rescale Slope/Intercept, or a Modality LUT Sequence;
3. VOI: the first VOI LUT Sequence item, else the first Window Center/Width
   pair with its VOI LUT Function (LINEAR, LINEAR_EXACT or SIGMOID). A VOI
   that leaves the image with less than one grey level of contrast (a window
   that misses the data) is dropped for a min-max window, with a warning;
4. min-max to [0, 1] over the pixels that are not Pixel Padding;
5. MONOCHROME1 / Presentation LUT Shape INVERSE: t -> 1 - t (once);
6. 8 bit: floor(255 * t), as the VinDr PNG conversion does
   (``(x / max * 255).astype(uint8)``); padding pixels become 0 (black).

Why no float image: every step is a function of the stored value alone, so
instead of pushing 5 million float64 pixels through each step (what pydicom's
``apply_modality_lut``/``apply_voi_lut`` do) we evaluate the steps on the at
most 65536 possible stored values and apply the resulting uint8 table once.
When the whole chain is affine-with-clipping (rescale + a LINEAR window, or
no window: by far the most common radiograph) we skip the table too and let
OpenCV do one saturating scale-and-shift over the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = [
    "Lut",
    "RenderSpec",
    "Rendered",
    "Window",
    "canonical_size",
    "display_window",
    "render",
    "resize_to",
    "stored_domain",
]

LINEAR = "LINEAR"
LINEAR_EXACT = "LINEAR_EXACT"
SIGMOID = "SIGMOID"

# A VOI output range narrower than this fraction of its nominal range would
# render as (almost) a single grey: treat the VOI as missing the data.
_MISS_FRACTION = 1.0 / 255.0
# floor(y) == round(y - 0.5 + _EPS) except in a 1/1024-wide band below integers;
# OpenCV's saturating conversions round to nearest, so this turns them into floor.
_EPS = 1.0 / 1024.0

WARN_VOI_MISSES = (
    "The VOI window/LUT in the file misses the pixel data (it would give a blank "
    "image); a min-max window was used instead."
)
WARN_UNIFORM = "The image has a single grey value."
WARN_ALL_PADDING = "Every pixel is Pixel Padding; the image is blank."


@dataclass(frozen=True)
class Lut:
    """A Modality or VOI LUT: ``values[i]`` is the output for input ``first + i``."""

    first: int
    values: np.ndarray  # float64, at least one entry
    bits: int  # nominal output depth (LUT Descriptor third value)

    def lookup(self, x: np.ndarray) -> np.ndarray:
        """Inputs below the first mapped value take the first entry, above the last the last."""
        idx = np.clip(np.rint(x) - self.first, 0, len(self.values) - 1).astype(np.intp)
        return self.values[idx]


@dataclass(frozen=True)
class Window:
    """Window Center/Width with its VOI LUT Function (validated: width > 0, or >= 1 for LINEAR)."""

    center: float
    width: float
    function: str = LINEAR

    def bounds(self) -> tuple[float, float]:
        """Input values where the output leaves 0 and reaches 1 (PS3.3 C.11.2.1.2)."""
        if self.function == LINEAR:
            c, w = self.center - 0.5, self.width - 1.0
        else:
            c, w = self.center, self.width
        return c - w / 2.0, c + w / 2.0

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Window output in [0, 1] for modality values `x`."""
        if self.function == SIGMOID:
            return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - self.center) / self.width, -700, 700)))
        lo, hi = self.bounds()
        if hi <= lo:  # LINEAR with width 1: a step
            return (x > lo).astype(np.float64)
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


@dataclass(frozen=True)
class RenderSpec:
    """Everything the rendering needs from the header, already parsed and validated."""

    bits_stored: int
    signed: bool
    slope: float = 1.0
    intercept: float = 0.0
    modality_lut: Lut | None = None
    voi_lut: Lut | None = None
    window: Window | None = None
    invert: bool = False
    padding: tuple[int, int] | None = None  # inclusive stored-value range
    notes: tuple[str, ...] = field(default=())  # header problems already worked around


@dataclass(frozen=True)
class Rendered:
    """What :func:`render` made of the stored values."""

    pixels: np.ndarray  # uint8 display grey, the input's shape
    warnings: tuple[str, ...]
    # Lowest and highest modality value of the pixels it kept (not Pixel Padding), read off
    # the histogram or the min/max it took anyway: what :func:`display_window` needs, so
    # nothing looks at the pixels twice. None when no pixel was kept (all padding).
    modality_range: tuple[float, float] | None


def stored_domain(bits_stored: int, signed: bool) -> tuple[int, int]:
    """Smallest and largest stored value that Bits Stored / Pixel Representation allow."""
    if signed:
        return -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    return 0, (1 << bits_stored) - 1


def canonical_size(rows: int, columns: int, long_side: int) -> tuple[int, int]:
    """(width, height) with the long side at most `long_side`, aspect kept, never upscaled."""
    s = min(1.0, long_side / max(rows, columns))
    return max(1, round(columns * s)), max(1, round(rows * s))


def resize_to(image: np.ndarray, size: tuple[int, int], *, j2k_reduce: int = 0) -> np.ndarray:
    """Shrink with pixel-area averaging (cv2.INTER_AREA); C-contiguous copy either way.

    ``j2k_reduce`` > 0 says `image` is a JPEG 2000 resolution level: its pixel
    k is the low-pass centred on full-resolution pixel 2**r * k, not on the
    middle of the 2**r block that INTER_AREA assumes. Moving it by
    0.5 - 2**-(r+1) of its pixels first removes that misalignment, which is
    most of the difference to a full-resolution rendering.
    """
    if j2k_reduce > 0:
        shift = 0.5 - 2.0 ** -(j2k_reduce + 1)
        matrix = np.float32([[1, 0, -shift], [0, 1, -shift]])
        image = cv2.warpAffine(
            image,
            matrix,
            (image.shape[1], image.shape[0]),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
    if (image.shape[1], image.shape[0]) == size:
        return np.ascontiguousarray(image)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


# ------------------------------------------------------------ scalar chain


def _index_to_stored(index_bits: int, spec: RenderSpec) -> np.ndarray:
    """Stored value for every raw index: high bits masked, sign extended (int64)."""
    raw = np.arange(1 << index_bits, dtype=np.int64)
    values = raw & ((1 << spec.bits_stored) - 1)
    if spec.signed:
        sign = 1 << (spec.bits_stored - 1)
        values = (values ^ sign) - sign
    return values


def _modality(stored: np.ndarray, spec: RenderSpec) -> np.ndarray:
    """Modality LUT (sequence wins) or rescale, in float64."""
    if spec.modality_lut is not None:
        return spec.modality_lut.lookup(stored)
    return stored * spec.slope + spec.intercept


def _voi(modality: np.ndarray, spec: RenderSpec) -> tuple[np.ndarray, float] | None:
    """VOI output and its nominal range (None when the file has no VOI)."""
    if spec.voi_lut is not None:
        return spec.voi_lut.lookup(modality), float((1 << spec.voi_lut.bits) - 1)
    if spec.window is not None:
        return spec.window.apply(modality), 1.0
    return None


def _is_padding(stored: np.ndarray, spec: RenderSpec) -> np.ndarray:
    if spec.padding is None:
        return np.zeros(stored.shape, dtype=bool)
    lo, hi = spec.padding
    return (stored >= lo) & (stored <= hi)


# -------------------------------------------------------------- LUT path


def _histogram(index: np.ndarray, bins: int) -> np.ndarray:
    """Count of each raw index (cv2.calcHist is ~7x faster than np.bincount here)."""
    hist = cv2.calcHist([index], [0], None, [bins], [0, bins])
    return hist.ravel() > 0


def _to_index(pixels: np.ndarray) -> tuple[np.ndarray, int]:
    """Raw indices (uint8 or uint16 view/copy) and their bit width."""
    if pixels.dtype.itemsize == 1:
        return pixels.view(np.uint8), 8
    if pixels.dtype.itemsize == 2:
        return pixels.view(np.uint16), 16
    return pixels.astype(np.uint16), 16  # int32 from JPEG 2000: wraps to the bit pattern


_Made = tuple[np.ndarray, list[str], tuple[float, float] | None]


def _render_lut(pixels: np.ndarray, spec: RenderSpec) -> _Made:
    """General path: a uint8 table over every possible raw value, applied once."""
    index, bits = _to_index(pixels)
    present = _histogram(index, 1 << bits)
    stored = _index_to_stored(bits, spec)
    padding = _is_padding(stored, spec)
    valid = present & ~padding
    warnings: list[str] = []
    if not valid.any():
        return np.zeros(pixels.shape, dtype=np.uint8), [WARN_ALL_PADDING], None
    values = _modality(stored, spec)
    kept = (float(values[valid].min()), float(values[valid].max()))
    voi = _voi(values, spec)
    if voi is not None:
        out, nominal = voi
        span = float(out[valid].max() - out[valid].min())
        if span < _MISS_FRACTION * nominal and float(np.ptp(values[valid])) > 0:
            warnings.append(WARN_VOI_MISSES)
        else:
            values = out
    lo, hi = float(values[valid].min()), float(values[valid].max())
    if hi > lo:
        t = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    else:
        warnings.append(WARN_UNIFORM)
        t = np.zeros_like(values)
    if spec.invert:
        t = 1.0 - t
    table = np.floor(t * 255.0).astype(np.uint8)
    table[padding] = 0
    if bits == 8:
        return cv2.LUT(index, table), warnings, kept
    return np.take(table, index), warnings, kept


# ------------------------------------------------------------ affine path


def _affine_applicable(spec: RenderSpec) -> bool:
    """Rescale + (no VOI | LINEAR/LINEAR_EXACT window) + no padding: one scale-and-shift."""
    if spec.modality_lut is not None or spec.voi_lut is not None or spec.padding is not None:
        return False
    if spec.window is None:
        return True
    lo, hi = spec.window.bounds()
    return spec.window.function in (LINEAR, LINEAR_EXACT) and hi > lo


def _render_affine(
    pixels: np.ndarray, spec: RenderSpec, vmin: float, vmax: float
) -> tuple[np.ndarray, list[str]]:
    """out = floor(255 * clip(a*x + b)), composed analytically, applied by cv2.normalize.

    With x in [vmin, vmax] and an increasing clipped-affine window g, the
    min-max stage's t(x) = (g(m(x)) - lo) / (hi - lo) is itself clip(a*x + b)
    (the window's clipping only ever lands on lo or hi). cv2.normalize with
    NORM_MINMAX maps [vmin, vmax] linearly onto [alpha, beta] with one
    saturating (rounding) conversion, so we hand it the alpha/beta that make
    its scale and shift equal ours. It only scales upwards; a decreasing map
    (inversion, negative slope) is computed as 255 - ceil(255 * (1 - t)),
    which is exactly floor(255 * t).
    """
    warnings: list[str] = []
    m_lo, m_hi = sorted((vmin * spec.slope + spec.intercept, vmax * spec.slope + spec.intercept))
    scale, shift = spec.slope, spec.intercept  # t = (x*scale + shift - lo) / (hi - lo)
    lo, hi = m_lo, m_hi
    window = spec.window
    if window is not None:
        w_lo, w_hi = window.bounds()
        g_lo = min(max((m_lo - w_lo) / (w_hi - w_lo), 0.0), 1.0)
        g_hi = min(max((m_hi - w_lo) / (w_hi - w_lo), 0.0), 1.0)
        if g_hi - g_lo < _MISS_FRACTION and m_hi > m_lo:
            warnings.append(WARN_VOI_MISSES)
        else:
            # g(m) = (m - w_lo) / (w_hi - w_lo); lo/hi are its (clipped) extremes
            scale, shift = spec.slope / (w_hi - w_lo), (spec.intercept - w_lo) / (w_hi - w_lo)
            lo, hi = g_lo, g_hi
    if hi <= lo:
        fill = 255 if spec.invert else 0
        return np.full(pixels.shape, fill, dtype=np.uint8), [*warnings, WARN_UNIFORM]
    a = scale / (hi - lo)
    b = (shift - lo) / (hi - lo)
    decreasing = (a < 0) != spec.invert
    if spec.invert:
        a, b = -a, 1.0 - b  # t' = 1 - t
    if decreasing:
        # floor(255*t) = 255 - ceil(255*(1-t)); ceil(y) = round(y + 0.5 - eps)
        a, b, offset = -a, 1.0 - b, 0.5 - _EPS
    else:
        offset = -0.5 + _EPS
    alpha = 255.0 * (a * vmin + b) + offset
    beta = 255.0 * (a * vmax + b) + offset
    if vmax == vmin:  # normalize would divide by zero; the constant is alpha
        out = np.full(pixels.shape, min(255, max(0, round(alpha))), dtype=np.uint8)
    else:
        out = cv2.normalize(pixels, None, alpha, beta, cv2.NORM_MINMAX, dtype=cv2.CV_8U)
    if decreasing:
        cv2.bitwise_not(out, dst=out)
    return out, warnings


# ------------------------------------------------------------------ entry


def render(pixels: np.ndarray, spec: RenderSpec, *, approximate: bool = False) -> Rendered:
    """Stored values (raw bit patterns allowed) -> uint8 display grey, plus warnings.

    ``approximate`` marks values from a reduced-resolution JPEG 2000 decode:
    its low-pass filter can overshoot the stored range slightly, so values are
    clipped into it instead of being masked as raw bit patterns.
    """
    if pixels.ndim != 2 or pixels.size == 0:
        raise ValueError("render() needs a non-empty 2-D array")
    lo_dom, hi_dom = stored_domain(spec.bits_stored, spec.signed)
    if approximate:
        pixels = np.clip(pixels, lo_dom, hi_dom)
    warnings = list(spec.notes)
    if pixels.dtype.itemsize >= 2 and _affine_applicable(spec):
        vmin, vmax, _, _ = cv2.minMaxLoc(pixels)
        if lo_dom <= vmin and vmax <= hi_dom and math.isfinite(vmin):
            out, more = _render_affine(pixels, spec, vmin, vmax)
            ends = sorted((vmin * spec.slope + spec.intercept, vmax * spec.slope + spec.intercept))
            return Rendered(out, tuple(warnings + more), (ends[0], ends[1]))
    out, more, kept = _render_lut(pixels, spec)
    return Rendered(out, tuple(warnings + more), kept)


# ------------------------------------------------------------ display window


def display_window(
    modality_range: tuple[float, float] | None, spec: RenderSpec
) -> tuple[Window | None, bool]:
    """The LINEAR window over modality values that :func:`render` effectively applied.

    For a presentation state that shows the image as the models saw it. ``render`` maps
    the VOI output min-max onto 0..255; for no VOI or a LINEAR window that is one linear
    window from the lowest to the highest modality value it kept (inside the file's
    window, when there is one): ``modality_range`` is :attr:`Rendered.modality_range`.
    ``(window, exact)``: ``exact`` is False where a VOI LUT, a SIGMOID window or a
    Modality LUT can only be approximated by that window; the window is None when no
    pixel is left (all padding, a single grey).
    """
    if modality_range is None:
        return None, False
    lo, hi = modality_range
    exact = spec.voi_lut is None and spec.modality_lut is None
    window = spec.window
    if window is not None and spec.voi_lut is None:
        if window.function == SIGMOID:
            return window, False
        w_lo, w_hi = window.bounds()
        inside_lo, inside_hi = max(lo, w_lo), min(hi, w_hi)
        if (inside_hi - inside_lo) >= _MISS_FRACTION * (w_hi - w_lo):  # render used it
            lo, hi = inside_lo, inside_hi
    if hi <= lo:
        return None, False
    # LINEAR (PS3.3 C.11.2.1.2): output 0 at c - 0.5 - (w-1)/2, 1 at c - 0.5 + (w-1)/2.
    return Window(center=(lo + hi + 1.0) / 2.0, width=hi - lo + 1.0, function=LINEAR), exact
