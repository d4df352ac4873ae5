"""Which transfer syntax the pixels are in: the declared one if usable, else inferred.

A file may come without file meta, or with a garbage or wrong Transfer Syntax
UID. We use the declared syntax when it is a supported one that agrees with
how the Pixel Data is stored (encapsulated or not); otherwise we infer it from
how pydicom read the body (native) or from the codestream's first bytes
(compressed), with a warning, or refuse the file.
"""

from __future__ import annotations

import re

from pydicom.dataset import Dataset
from pydicom.uid import UID, UID_dictionary

from shared.dicom.codecs import COMPRESSED_SYNTAXES, SUPPORTED_SYNTAXES, first_frame, sniff_syntax
from shared.dicom.errors import NotDicomError, UnsupportedDicomError
from shared.dicom.parse import encoding_syntax

__all__ = ["WARN_SYNTAX_INFERRED", "resolve_syntax", "syntax_name"]

_UID_RE = re.compile(r"^[0-9.]{1,64}$")

WARN_SYNTAX_INFERRED = (
    "The file has no (usable) transfer syntax in its file meta; it was inferred from the data."
)


def syntax_name(uid: UID) -> str:
    """The standard's name of a transfer syntax, for messages and the response."""
    return uid.name if uid in UID_dictionary else "an unknown transfer syntax"


def resolve_syntax(
    ds: Dataset, declared: UID | None, encapsulated: bool, pixel_data: bytes
) -> tuple[UID, list[str]]:
    """The transfer syntax to decode with and the notes it leaves, or a refusal."""
    if declared is not None and not _UID_RE.match(str(declared)):
        declared = None  # garbage in the meta: infer like a missing one
    if declared is not None and declared not in SUPPORTED_SYNTAXES:
        if declared in UID_dictionary:
            raise UnsupportedDicomError(
                f"The transfer syntax {syntax_name(declared)} ({declared}) is not supported; "
                "re-export the image uncompressed, or as JPEG, JPEG-LS, JPEG 2000 or RLE."
            )
        raise UnsupportedDicomError(
            f"The transfer syntax {declared} is not a known DICOM transfer syntax; "
            "re-export the image with a standard one."
        )
    if declared is not None and (declared in COMPRESSED_SYNTAXES) == encapsulated:
        return declared, []
    if declared in COMPRESSED_SYNTAXES:
        raise NotDicomError(
            "The transfer syntax says the pixels are compressed, but the Pixel Data is not "
            "encapsulated; the file is inconsistent."
        )
    if encapsulated:
        sniffed = sniff_syntax(first_frame(pixel_data))
        if sniffed is None:
            raise NotDicomError(
                "The Pixel Data is compressed but the transfer syntax is missing and the "
                "compression could not be recognised."
            )
        return sniffed, [WARN_SYNTAX_INFERRED]
    if declared is not None:
        return declared, []
    inferred = encoding_syntax(ds)
    if inferred is None:
        raise NotDicomError("The transfer syntax is missing and could not be inferred.")
    return inferred, [WARN_SYNTAX_INFERRED]
