"""The DICOM intake's exceptions (re-exported by :mod:`gateway.dicom`).

They live in their own module so that the helper modules can raise them
without importing :mod:`gateway.dicom`. Messages are fixed sentences plus
numbers and transfer-syntax names: never an element value, never the text of
an underlying library exception (those can quote patient data).
"""

from __future__ import annotations


class DicomError(Exception):
    """An upload that cannot become a canonical image; ``status_code`` is the HTTP status."""

    status_code: int = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotDicomError(DicomError):
    """Unreadable bytes, not DICOM at all, or a DICOM file too damaged to use (400)."""

    status_code = 400


class UnsupportedDicomError(DicomError):
    """Valid DICOM that this service cannot analyse: no pixels, colour, multi-frame... (422)."""

    status_code = 422
