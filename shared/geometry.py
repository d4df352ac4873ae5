"""Pixel geometry shared by the gateway and training: pure functions, numpy-free, torch-free.

Models see the canonical image (the DICOM resized so its long side fits); users and
annotation files speak in the original DICOM's pixels. This is the one mapping back.
"""

from __future__ import annotations

XYXY = tuple[float, float, float, float]


def canonical_to_original(
    box: XYXY, scale_x: float, scale_y: float, width: int, height: int
) -> XYXY:
    """``(x1, y1, x2, y2)`` in canonical pixels -> original pixels, clipped to the image.

    ``scale_x`` and ``scale_y`` are canonical size / original size (``CanonicalImage``'s
    fields); ``width`` and ``height`` are the original image's columns and rows.
    """
    x1, y1, x2, y2 = box
    return (
        min(max(x1 / scale_x, 0.0), width),
        min(max(y1 / scale_y, 0.0), height),
        min(max(x2 / scale_x, 0.0), width),
        min(max(y2 / scale_y, 0.0), height),
    )
