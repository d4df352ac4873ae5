"""What a response may say about the patient: a keyed pseudonym by default.

The pseudonym is HMAC-SHA256 keyed with an operator secret, so it is stable
across requests and replicas (results for one patient can be joined) but
cannot be reversed or recomputed by someone who only has the patient ID and
not the secret, unlike a plain hash of a short, guessable ID.
"""

from __future__ import annotations

import hashlib
import hmac

from shared.settings import PhiMode, StudyDateMode

__all__ = ["PSEUDONYM_PREFIX", "keyed_digest", "public_patient_id", "public_study_date"]

PSEUDONYM_PREFIX = "anon-"
PATIENT_ID_HEX_DIGITS = 16


def keyed_digest(secret: str, value: str, *, hex_digits: int, domain: bytes = b"") -> str:
    """The first ``hex_digits`` hex digits of HMAC-SHA256(secret, ``domain`` + value).

    ``domain`` keeps pseudonyms of different kinds apart (a UID and a patient ID
    with the same text get unrelated digests).
    """
    message = domain + value.encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()[:hex_digits]


def public_patient_id(raw: str | None, mode: PhiMode, secret: str) -> str | None:
    """The patient ID as the response may show it.

    pseudonymize: "anon-" + the first 16 hex digits of HMAC-SHA256(secret, raw);
    redact: None; passthrough: the raw value. A missing ID stays None in every
    mode (a pseudonym of "nothing" would make unrelated studies look linked).
    """
    mode = PhiMode(mode)
    if raw is None or raw == "" or mode is PhiMode.REDACT:
        return None
    if mode is PhiMode.PASSTHROUGH:
        return raw
    if not secret:
        raise ValueError("pseudonymisation needs a non-empty secret")
    return PSEUDONYM_PREFIX + keyed_digest(secret, raw, hex_digits=PATIENT_ID_HEX_DIGITS)


def study_date_mode(mode: StudyDateMode, phi_mode: PhiMode) -> StudyDateMode:
    """``auto`` resolved by PHI_MODE: redact omits the date, pseudonymize keeps the year."""
    if mode is not StudyDateMode.AUTO:
        return mode
    return {
        PhiMode.REDACT: StudyDateMode.OMIT,
        PhiMode.PSEUDONYMIZE: StudyDateMode.YEAR,
        PhiMode.PASSTHROUGH: StudyDateMode.FULL,
    }[PhiMode(phi_mode)]


def public_study_date(raw: str | None, mode: StudyDateMode, phi_mode: PhiMode) -> str | None:
    """The study date (DICOM DA, ``YYYYMMDD``) as the response may show it.

    A full date joined with other facts narrows a patient down; the year is enough
    for most research questions. ``year`` gives the first four digits (None if the
    value does not start with a year); ``omit`` gives None.
    """
    chosen = study_date_mode(StudyDateMode(mode), phi_mode)
    if not raw or chosen is StudyDateMode.OMIT:
        return None
    if chosen is StudyDateMode.YEAR:
        year = raw.strip()[:4]
        return year if len(year) == 4 and year.isdigit() else None
    return raw
