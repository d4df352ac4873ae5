"""The codes our results use: DICOM and SNOMED CT where a code exists, else ``99SPINE``.

``99SPINE`` is this project's private coding scheme (PS3.3 8.2: designators that start
with "99" are private). It is declared in every result's Coding Scheme Identification
Sequence. A finding type gets a SNOMED CT code only where DICOM's own code dictionary
(PS3.16, as pydicom ships it) lists one for the concept; the other VinDr-SpineXR classes
keep private codes until a terminologist maps them (the mapping is one table below).
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

PRIVATE_SCHEME = "99SPINE"
PRIVATE_SCHEME_NAME = "Spine lesion service private codes"
PRIVATE_SCHEME_ORGANIZATION = "spine-lesion-service"


def private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME, meaning)


# Image-level finding: the image's measurement group's "Finding" (DCM 121071) is
# SNOMED Normal / Abnormal.
NORMAL = codes.SCT.Normal  # 17621005
ABNORMAL = codes.SCT.Abnormal  # 263654008
DIAGNOSIS_VALUES = {"Normal": NORMAL, "Abnormal": ABNORMAL}

# Measurements (unitless, UCUM "1").
NO_UNITS = Code("1", "UCUM", "no units")
ABNORMAL_PROBABILITY = private("ABNPROB", "Ensemble probability of abnormality")
DECISION_THRESHOLD = private("THRESHOLD", "Abnormality decision threshold")
MEMBER_PROBABILITY = private("MEMBERPROB", "Ensemble member probability of abnormality")
DETECTION_CONFIDENCE = private("DETCONF", "Detection confidence")

# Text items of the report.
DISCLAIMER = private("DISCLAIMER", "Intended use statement")
BUNDLE_KIND = private("BUNDLEKIND", "Model bundle kind")

# Procedure reported.
PROCEDURE = private("SPINEXR-AI", "Automated analysis of a spine radiograph")
LESION = codes.SCT.Lesion  # 52988006: finding category of every box

# VinDr-SpineXR class name -> finding type.
FINDING_TYPES: dict[str, Code] = {
    "Surgical implant": codes.SCT.Implant,  # 40388003
    "Osteophytes": private("OSTEOPHYTES", "Osteophytes"),
    "Disc space narrowing": private("DISCNARROW", "Disc space narrowing"),
    "Foraminal stenosis": private("FORAMSTEN", "Foraminal stenosis"),
    "Spondylolisthesis": private("SPONDYLOLISTH", "Spondylolisthesis"),
    "Vertebral collapse": private("VERTCOLLAPSE", "Vertebral collapse"),
    "Other lesions": private("OTHERLESION", "Other lesion"),
}


def finding_type(class_name: str) -> Code:
    """The code of a detector class (an unknown class keeps its name under 99SPINE)."""
    known = FINDING_TYPES.get(class_name)
    if known is not None:
        return known
    value = "".join(ch for ch in class_name.upper() if ch.isalnum())[:16] or "UNKNOWN"
    return private(value, class_name[:64] or "Unknown finding")
