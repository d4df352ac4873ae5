"""The DICOM intake: upload bytes -> the canonical grey image the models see.

Torch-free and web-free. It lives in ``shared/`` because it has five users (the
gateway, training, bench, scripts and the tests), and a service package must
not be imported by training or by other services; ``shared/`` is where code
used by more than one component lives.

This module is the one public facade; everything else in the package is an
implementation detail (tests of internals may import the submodules).
"""

from shared.dicom.decode import CanonicalImage, decode_dicom, encode_png
from shared.dicom.errors import (
    DicomError,
    NotDicomError,
    NotSelectedError,
    UnsupportedDicomError,
)
from shared.dicom.header import DicomMetadata
from shared.dicom.isolate import DecodeOptions
from shared.dicom.probes import decodable_transfer_syntaxes
from shared.dicom.selection import (
    InvalidRulesError,
    Selection,
    SelectionRules,
    load_rules,
    select,
)

__all__ = [
    "CanonicalImage",
    "DecodeOptions",
    "DicomError",
    "DicomMetadata",
    "InvalidRulesError",
    "NotDicomError",
    "NotSelectedError",
    "Selection",
    "SelectionRules",
    "UnsupportedDicomError",
    "decodable_transfer_syntaxes",
    "decode_dicom",
    "encode_png",
    "load_rules",
    "select",
]
