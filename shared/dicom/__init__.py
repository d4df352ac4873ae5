"""The DICOM intake: upload bytes -> the canonical grey image the models see.

Torch-free and web-free. It lives in ``shared/`` because it has five users (the
gateway, training, bench, scripts and the tests), and a service package must
not be imported by training or by other services; ``shared/`` is where code
used by more than one component lives.

This module is the one public facade; everything else in the package is an
implementation detail (tests of internals may import the submodules).
"""

from shared.dicom.decode import (
    decodable_transfer_syntaxes,
    decode_dicom,
    encode_png,
    identify_dicom,
    inspect_dicom,
)
from shared.dicom.errors import (
    DicomError,
    NotDicomError,
    NotSelectedError,
    UnsupportedDicomError,
)
from shared.dicom.header import DicomMetadata
from shared.dicom.limits import DecodeLimits, DicomLimitError, decode_bytes
from shared.dicom.pool import DecoderPool, available_cpus
from shared.dicom.selection import (
    InvalidRulesError,
    Selection,
    SelectionRules,
    load_rules,
    select,
)
from shared.dicom.steps import CanonicalImage, Inspection, InstanceIds

__all__ = [
    "CanonicalImage",
    "DecodeLimits",
    "DecoderPool",
    "DicomError",
    "DicomLimitError",
    "DicomMetadata",
    "Inspection",
    "InstanceIds",
    "InvalidRulesError",
    "NotDicomError",
    "NotSelectedError",
    "Selection",
    "SelectionRules",
    "UnsupportedDicomError",
    "available_cpus",
    "decodable_transfer_syntaxes",
    "decode_bytes",
    "decode_dicom",
    "encode_png",
    "identify_dicom",
    "inspect_dicom",
    "load_rules",
    "select",
]
