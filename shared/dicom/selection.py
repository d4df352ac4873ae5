"""Input selection: is this DICOM a spine radiograph we analyse? Decided on the header.

A research group that routes every radiograph of a study to the service must get
chests, hands and knees refused, not "Abnormal" with spine lesions drawn over the
lungs. :func:`select` decides on the one :class:`~shared.dicom.examination.Examination`
read with the header, before any pixel is decoded, by the rules of ONE YAML file:
the shipped ``selection_default.yaml`` (documented there and in README "Input
selection"), or the operator's ``INPUT_SELECTION_RULES`` file merged over it.

The checks run in a fixed order and the first that refuses decides:
SOP Class -> Modality -> image size -> ViewPosition -> body part. The body part is
looked for field by field (Anatomic Region Sequence codes, BodyPartExamined, the
descriptions); the first field that names a spine or a non-spine term decides, and
none at all is accepted with the warning "Body part not stated" (by default).

Messages name the rule and what it matched (a listed keyword or code, a SOP Class
name, a size), never a description's text, which is free text and may hold PHI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydicom.dataset import Dataset
from pydicom.uid import UID

from shared.dicom.errors import NotSelectedError
from shared.dicom.examination import Examination, read_examination
from shared.dicom.header import ImageHeader
from shared.mappings import deep_merge

__all__ = [
    "RULE_BODY_PART",
    "RULE_BODY_PART_NOT_STATED",
    "RULE_IMAGE_SIZE",
    "RULE_MODALITY",
    "RULE_SOP_CLASS",
    "RULE_VIEW_POSITION",
    "WARN_BODY_PART_NOT_STATED",
    "InvalidRulesError",
    "Selection",
    "SelectionRules",
    "default_rules",
    "load_rules",
    "require_selected",
    "select",
]

DEFAULT_RULES_FILE = "selection_default.yaml"

RULE_SOP_CLASS = "sop_class"
RULE_MODALITY = "modality"
RULE_IMAGE_SIZE = "image_size"
RULE_VIEW_POSITION = "view_position"
RULE_BODY_PART = "body_part"
RULE_BODY_PART_NOT_STATED = "body_part_not_stated"

WARN_BODY_PART_NOT_STATED = (
    "Body part not stated: the DICOM header names no body part (Anatomic Region Sequence, "
    "BodyPartExamined, Series/Study Description, Protocol Name); it was analysed as a spine "
    "radiograph."
)

# A coded string we may quote in a message: a short CS value (Modality, ViewPosition).
_CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")
_UID = re.compile(r"[0-9.]{1,64}")
_WORD = re.compile(r"[^\W_]+")

FieldName = Literal[
    "AnatomicRegionSequence",
    "BodyPartExamined",
    "SeriesDescription",
    "ProtocolName",
    "StudyDescription",
]
_TEXT_FIELDS: dict[str, str] = {
    "BodyPartExamined": "body_part_examined",
    "SeriesDescription": "series_description",
    "ProtocolName": "protocol_name",
    "StudyDescription": "study_description",
}


class InvalidRulesError(ValueError):
    """An INPUT_SELECTION_RULES file that cannot be read or does not fit the schema."""


# ------------------------------------------------------------------ the rules


class _Strict(BaseModel):
    """Unknown keys are errors: a typo in a rules file must not silently mean "default"."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SopClass(_Strict):
    uid: str
    name: str


class Code(_Strict):
    """A coded body part (Anatomic Region Sequence item): scheme and value decide."""

    scheme: str
    value: str
    meaning: str

    @field_validator("scheme")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.strip().upper()


class SopClassRules(_Strict):
    accept: tuple[SopClass, ...]
    secondary_capture: bool
    secondary_capture_classes: tuple[SopClass, ...]


class BodyPartRules(_Strict):
    fields: tuple[FieldName, ...]
    when_not_stated: Literal["warn", "accept", "refuse"]
    spine_terms: tuple[str, ...]
    non_spine_terms: tuple[str, ...]
    spine_codes: tuple[Code, ...]
    non_spine_codes: tuple[Code, ...]

    @field_validator("spine_terms", "non_spine_terms")
    @classmethod
    def _words(cls, terms: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = tuple(str(term).strip().upper() for term in terms)
        if any(not _WORD.search(term) for term in cleaned):
            raise ValueError("every term needs at least one letter or digit")
        return cleaned


class SelectionRules(_Strict):
    """The whole rule set, as ``selection_default.yaml`` spells it."""

    sop_classes: SopClassRules
    modalities: tuple[str, ...]
    min_rows: int = Field(ge=1)
    min_columns: int = Field(ge=1)
    view_positions: tuple[str, ...]
    body_part: BodyPartRules

    @field_validator("modalities", "view_positions")
    @classmethod
    def _upper(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(value).strip().upper() for value in values)


def _default_mapping() -> dict[str, Any]:
    text = resources.files("shared.dicom").joinpath(DEFAULT_RULES_FILE).read_text("utf-8")
    return yaml.safe_load(text)


@lru_cache(maxsize=1)
def default_rules() -> SelectionRules:
    """The shipped rules (``shared/dicom/selection_default.yaml``)."""
    return SelectionRules.model_validate(_default_mapping())


def load_rules(path: Path | None = None) -> SelectionRules:
    """The shipped rules, with the YAML file at ``path`` (if any) merged over them.

    Merging is key by key: a mapping merges into the default's mapping, any other
    value (a list included) replaces the default's. Raises :class:`InvalidRulesError`
    naming the file and the problem.
    """
    if path is None:
        return default_rules()
    try:
        custom = yaml.safe_load(Path(path).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidRulesError(f"input selection rules {path}: cannot read: {exc}") from None
    if custom is None:
        custom = {}
    if not isinstance(custom, Mapping):
        raise InvalidRulesError(f"input selection rules {path}: expected a mapping at the top")
    try:
        return SelectionRules.model_validate(deep_merge(_default_mapping(), custom))
    except ValidationError as exc:
        raise InvalidRulesError(f"input selection rules {path}: {exc}") from None



# ---------------------------------------------------------------- the decision


@dataclass(frozen=True)
class Selection:
    """The decision: accepted or not, by which rule, why, and warnings for the answer.

    ``reason`` names what the rule matched ("BodyPartExamined is LSPINE",
    "SeriesDescription contains SPINE"); it is safe to show a client.
    """

    accepted: bool
    rule: str
    reason: str
    warnings: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        """The 422 message of a refusal."""
        return (
            f"not a spine radiograph: {self.reason} (input selection rule: {self.rule}); "
            "this service analyses spine radiographs only"
        )


def select(source: ImageHeader | Examination | Dataset, rules: SelectionRules) -> Selection:
    """Decide on the header alone; a pure function of the header and the rules."""
    if isinstance(source, ImageHeader):
        exam = source.examination
    elif isinstance(source, Examination):
        exam = source
    else:
        exam = read_examination(source)
    for check in (_sop_class, _modality, _image_size, _view_position):
        refusal = check(exam, rules)
        if refusal is not None:
            return refusal
    return _body_part(exam, rules.body_part)


def require_selected(header: ImageHeader, rules: SelectionRules) -> Selection:
    """:func:`select`, raising :class:`NotSelectedError` (422) on a refusal."""
    selection = select(header, rules)
    if not selection.accepted:
        raise NotSelectedError(selection.message, rule=selection.rule)
    return selection


def _refuse(rule: str, reason: str) -> Selection:
    return Selection(accepted=False, rule=rule, reason=reason)


def _sop_class(exam: Examination, rules: SelectionRules) -> Selection | None:
    uid = exam.sop_class_uid
    if uid is None:
        return None  # not stated: the other rules decide
    sop = rules.sop_classes
    if uid in {c.uid for c in sop.accept}:
        return None
    captures = {c.uid: c.name for c in sop.secondary_capture_classes}
    if uid in captures:
        if sop.secondary_capture:
            return None
        return _refuse(
            RULE_SOP_CLASS,
            f"SOP Class is {captures[uid]}, accepted only with secondary_capture: true "
            "in INPUT_SELECTION_RULES",
        )
    return _refuse(RULE_SOP_CLASS, f"SOP Class is {_sop_name(uid)}, not a radiograph class")


def _sop_name(uid: str) -> str:
    """A SOP Class as a person reads it: pydicom's name, else the UID if it looks like one."""
    name = UID(uid).name if _UID.fullmatch(uid) else ""
    if name and name != uid:
        return name
    return uid if _UID.fullmatch(uid) else "not a valid UID"


def _quoted(value: str) -> str | None:
    """A coded string fit to quote (short, upper-case letters and digits), else None."""
    value = value.strip().upper()
    return value if _CODE_STRING.fullmatch(value) else None


def _modality(exam: Examination, rules: SelectionRules) -> Selection | None:
    if exam.modality is None or not rules.modalities:
        return None  # VinDr-SpineXR files carry no Modality
    if exam.modality.strip().upper() in rules.modalities:
        return None
    shown = _quoted(exam.modality)
    said = f"Modality is {shown}" if shown else "the Modality value"
    return _refuse(RULE_MODALITY, f"{said}, not one of {', '.join(rules.modalities)}")


def _image_size(exam: Examination, rules: SelectionRules) -> Selection | None:
    rows, columns = exam.rows, exam.columns
    if rows is None or columns is None:
        return None  # the header check refuses a missing size
    if rows >= rules.min_rows and columns >= rules.min_columns:
        return None
    return _refuse(
        RULE_IMAGE_SIZE,
        f"the image is {columns}x{rows} pixels, smaller than the "
        f"{rules.min_columns}x{rules.min_rows} minimum of a radiograph",
    )


def _view_position(exam: Examination, rules: SelectionRules) -> Selection | None:
    if not rules.view_positions or exam.view_position is None:
        return None
    if exam.view_position.strip().upper() in rules.view_positions:
        return None
    shown = _quoted(exam.view_position)
    said = f"ViewPosition is {shown}" if shown else "the ViewPosition value"
    return _refuse(RULE_VIEW_POSITION, f"{said}, not one of {', '.join(rules.view_positions)}")


def _body_part(exam: Examination, rules: BodyPartRules) -> Selection:
    for name in rules.fields:
        if name == "AnatomicRegionSequence":
            decided = _by_code(exam.anatomic_codes, rules)
        else:
            decided = _by_text(name, getattr(exam, _TEXT_FIELDS[name]), rules)
        if decided is not None:
            return decided
    if rules.when_not_stated == "refuse":
        return _refuse(RULE_BODY_PART_NOT_STATED, "the header names no body part")
    warnings = (WARN_BODY_PART_NOT_STATED,) if rules.when_not_stated == "warn" else ()
    return Selection(
        accepted=True, rule=RULE_BODY_PART_NOT_STATED, reason="no body part stated",
        warnings=warnings,
    )


def _by_code(codes: tuple[tuple[str, str], ...], rules: BodyPartRules) -> Selection | None:
    """A spine code in any item accepts; otherwise a listed non-spine code refuses."""
    for accepted, listed in ((True, rules.spine_codes), (False, rules.non_spine_codes)):
        for code in listed:
            if (code.scheme, code.value) in codes:
                reason = f"AnatomicRegionSequence is {code.scheme} {code.value} ({code.meaning})"
                return Selection(accepted=accepted, rule=RULE_BODY_PART, reason=reason)
    return None


def _by_text(name: str, text: str | None, rules: BodyPartRules) -> Selection | None:
    """A spine term in the field accepts; otherwise a listed non-spine term refuses."""
    if not text:
        return None
    words = _words(text)
    for accepted, terms in ((True, rules.spine_terms), (False, rules.non_spine_terms)):
        for term in terms:
            term_words = _words(term)
            if _contains(words, term_words):
                verb = "is" if _same(words, term_words) else "contains"
                reason = f"{name} {verb} {term}"
                return Selection(accepted=accepted, rule=RULE_BODY_PART, reason=reason)
    return None


def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.upper()))


def _word_matches(word: str, term_word: str) -> bool:
    return word == term_word or word == term_word + "S"


def _same(words: tuple[str, ...], term: tuple[str, ...]) -> bool:
    return len(words) == len(term) and all(map(_word_matches, words, term))


def _contains(words: tuple[str, ...], term: tuple[str, ...]) -> bool:
    """Whether ``term``'s words occur in ``words`` in a row (whole words, plural S allowed)."""
    n = len(term)
    return any(_same(words[i : i + n], term) for i in range(len(words) - n + 1))
