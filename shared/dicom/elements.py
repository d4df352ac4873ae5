"""Read data elements of an untrusted dataset: a value, or "absent", never an exception.

On a hostile file pydicom can raise while converting a value (a mutated VR,
a garbage length); here every such failure counts as "absent", and numbers
must be finite. Callers range-check what they get before it sizes anything.
"""

from __future__ import annotations

import math
from typing import Any

from pydicom.dataset import Dataset

__all__ = ["element_value", "first_item", "float_value", "int_value", "text_value"]


def element_value(ds: Dataset, keyword: str) -> Any:
    """Element value or None; pydicom conversion errors on hostile files count as absent."""
    try:
        elem = ds.get(keyword)
    except Exception:
        return None
    return None if elem is None or elem == "" else elem


def _first(value: Any) -> Any:
    """First value of a multi-valued element (VM > 1), the value itself otherwise."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return value[0] if len(value) else None
    return value


def float_value(value: Any) -> float | None:
    """The (first) value as a finite float, else None."""
    value = _first(value)
    if value is None or isinstance(value, (bytes, bytearray)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def int_value(value: Any) -> int | None:
    """The (first) value as an int when it is a whole number, else None."""
    number = float_value(value)
    if number is None or number != int(number):
        return None
    return int(number)


def text_value(ds: Dataset, keyword: str) -> str | None:
    """A string element as plain text (None when absent, empty or unreadable)."""
    text = _first(element_value(ds, keyword))
    if text is None:
        return None
    try:
        text = str(text).strip().strip("\x00").strip()
    except Exception:
        return None
    return text or None


def first_item(ds: Dataset, keyword: str) -> Dataset | None:
    """The first item of a sequence element (None when absent, empty or unreadable)."""
    seq = element_value(ds, keyword)
    try:
        return seq[0] if seq is not None and len(seq) else None
    except Exception:
        return None
