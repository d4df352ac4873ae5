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

# Measurements, in percent: OHIF labels a drawn NUM "<concept meaning>: <value, 2
# decimals> <unit code>", so 0.18 in UCUM "1" would read "0.18 1" and lose precision.
PERCENT = Code("%", "UCUM", "percent")
# The image-level probability's concept names the call, because OHIF shows a measurement
# group's NUMs and never its Finding (docs/INTEGRATION.md "What OHIF shows").
PROBABILITY_OF_CALL = {
    "Abnormal": private("ABNPROB-ABNORMAL", "Abnormal, P(abnormal)"),
    "Normal": private("ABNPROB-NORMAL", "Normal, P(abnormal)"),
}
DECISION_THRESHOLD = private("THRESHOLD", "Decision threshold of P(abnormal)")
MEMBER_PROBABILITY = private("MEMBERPROB", "Ensemble member P(abnormal)")

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


# A box's confidence names its class, for the same reason (OHIF shows no Finding).
CONFIDENCE_VALUES: dict[str, str] = {
    "Surgical implant": "IMPLANT-CONF",
    "Osteophytes": "OSTEO-CONF",
    "Disc space narrowing": "DISCNARROW-CONF",
    "Foraminal stenosis": "FORAMSTEN-CONF",
    "Spondylolisthesis": "SPONDYLO-CONF",
    "Vertebral collapse": "VERTCOLL-CONF",
    "Other lesions": "OTHERLES-CONF",
}


def _code_stem(class_name: str, length: int) -> str:
    return "".join(ch for ch in class_name.upper() if ch.isalnum())[:length] or "UNKNOWN"


def detection_confidence(class_name: str) -> Code:
    """The NUM concept of a box, "<class>, confidence" (any class, known or not)."""
    value = CONFIDENCE_VALUES.get(class_name) or f"{_code_stem(class_name, 11)}-CONF"
    return private(value, f"{class_name[:50] or 'Unknown finding'}, confidence")


def finding_type(class_name: str) -> Code:
    """The code of a detector class (an unknown class keeps its name under 99SPINE)."""
    known = FINDING_TYPES.get(class_name)
    if known is not None:
        return known
    return private(_code_stem(class_name, 16), class_name[:64] or "Unknown finding")
