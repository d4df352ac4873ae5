"""The DICOM intake's exceptions (re-exported by :mod:`shared.dicom`).

They live in their own module so that every module of the package can raise
them without importing the facade. They are :class:`shared.errors.ServiceError`
subclasses, so the gateway maps them to HTTP answers by ``status_code`` and
``message`` alone. Messages are fixed sentences plus numbers and
transfer-syntax names: never an element value, never the text of an
underlying library exception (those can quote patient data).
"""

from __future__ import annotations

from shared.errors import ServiceError

__all__ = ["DicomError", "NotDicomError", "NotSelectedError", "UnsupportedDicomError"]


class DicomError(ServiceError):
    """An upload that cannot become a canonical image; ``status_code`` is the HTTP status."""

    status_code: int = 400


class NotDicomError(DicomError):
    """Unreadable bytes, not DICOM at all, or a DICOM file too damaged to use (400)."""

    status_code = 400


class UnsupportedDicomError(DicomError):
    """Valid DICOM that this service cannot analyse: no pixels, colour, multi-frame... (422)."""

    status_code = 422


class NotSelectedError(UnsupportedDicomError):
    """Refused by the input selection rules: not a spine radiograph we analyse (422).

    The message starts "not a spine radiograph:" and names the rule and what it
    matched (a body-part term or code, a SOP Class, a size), never a description.
    """

    status_code = 422

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message)
        self.rule = rule
