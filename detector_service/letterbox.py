"""Ultralytics' letterbox arithmetic, torch-free: where an image lands in the detector input.

One pure rule shared by everything that feeds a YOLO network (``detector_service.yolo``,
a Triton ``model.py``, tests): the same numbers as Ultralytics' ``LetterBox`` (centre
padding, ``scaleup`` allowed, its rounding). ``stride=None`` is the fixed square
(``auto=False``: any image shapes share a batch); a stride (32 for YOLO11) is the minimal
rectangle Ultralytics' own ``predict`` uses (``auto=True``: a 2400x1600 portrait radiograph
becomes 640x448, a third less work), where only images of the same rectangle batch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Letterbox:
    """How one image was placed in the input: scale, padding, and the input's size."""

    gain: float
    left: int
    top: int
    new_width: int
    new_height: int
    input_height: int = 0
    input_width: int = 0


def letterbox_shape(height: int, width: int, imgsz: int, stride: int | None = None
                    ) -> tuple[int, int]:
    """``(input_height, input_width)`` for an image of ``height`` x ``width``."""
    return _layout(height, width, imgsz, stride)[0]


def letterbox_geometry(height: int, width: int, size: int, stride: int | None = None
                       ) -> Letterbox:
    """Ultralytics' LetterBox (center=True, scaleup allowed; ``auto`` when ``stride``)."""
    (input_height, input_width), gain, new_width, new_height, pad_w, pad_h = _layout(
        height, width, size, stride
    )
    return Letterbox(gain, round(pad_w / 2 - 0.1), round(pad_h / 2 - 0.1), new_width,
                     new_height, input_height, input_width)


def _layout(height: int, width: int, size: int, stride: int | None
            ) -> tuple[tuple[int, int], float, int, int, int, int]:
    if height < 1 or width < 1 or size < 1:
        raise ValueError("image and input sizes must be positive")
    gain = min(size / height, size / width)
    new_width = max(round(width * gain), 1)
    new_height = max(round(height * gain), 1)
    pad_w, pad_h = size - new_width, size - new_height
    if stride:
        pad_w, pad_h = pad_w % stride, pad_h % stride
    return (new_height + pad_h, new_width + pad_w), gain, new_width, new_height, pad_w, pad_h
