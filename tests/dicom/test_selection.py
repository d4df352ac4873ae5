"""Input selection on the header: a table of header cases, the rules file, the decode path."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from shared.dicom import NotSelectedError, decode_dicom, load_rules
from shared.dicom.examination import Examination
from shared.dicom.header import read_header
from shared.dicom.parse import parse_dicom
from shared.dicom.selection import (
    WARN_BODY_PART_NOT_STATED,
    InvalidRulesError,
    default_rules,
    select,
)
from tests.factories import make_dicom, radiograph_pixels
from training.dicom_writer import CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, SECONDARY_CAPTURE

DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MAMMOGRAPHY = "1.2.840.10008.5.1.4.1.1.1.2"

BASE = Examination(
    sop_class_uid=DX_FOR_PRESENTATION,
    modality="DX",
    body_part_examined=None,
    study_description=None,
    series_description=None,
    protocol_name=None,
    view_position=None,
    anatomic_codes=(),
    rows=2000,
    columns=1500,
)

# (case, header changes, accepted, rule, reason)
CASES: list[tuple[str, dict[str, object], bool, str, str]] = [
    ("lspine", {"body_part_examined": "LSPINE"}, True, "body_part", "BodyPartExamined is LSPINE"),
    ("cspine cr", {"sop_class_uid": CR_IMAGE_STORAGE, "modality": "CR",
                   "body_part_examined": "CSPINE"}, True, "body_part",
     "BodyPartExamined is CSPINE"),
    ("dx for processing", {"sop_class_uid": DX_PROCESSING, "body_part_examined": "TSPINE"},
     True, "body_part", "BodyPartExamined is TSPINE"),
    ("chest", {"body_part_examined": "CHEST"}, False, "body_part", "BodyPartExamined is CHEST"),
    ("extremity", {"body_part_examined": "EXTREMITY"}, False, "body_part",
     "BodyPartExamined is EXTREMITY"),
    ("lower case knee", {"body_part_examined": "knee"}, False, "body_part",
     "BodyPartExamined is KNEE"),
    ("left hand", {"body_part_examined": "LEFT HAND"}, False, "body_part",
     "BodyPartExamined contains HAND"),
    ("ribs (plural)", {"series_description": "RIBS LEFT"}, False, "body_part",
     "SeriesDescription contains RIB"),
    ("series l-spine", {"series_description": "L-SPINE LAT"}, True, "body_part",
     "SeriesDescription contains SPINE"),
    ("spine wins within a field", {"series_description": "LSPINE AND PELVIS"}, True,
     "body_part", "SeriesDescription contains LSPINE"),
    ("body part before descriptions", {"body_part_examined": "CHEST",
                                       "series_description": "T-SPINE"},
     False, "body_part", "BodyPartExamined is CHEST"),
    ("series before study", {"study_description": "SPINE SERIES",
                             "series_description": "CHEST PA"},
     False, "body_part", "SeriesDescription contains CHEST"),
    ("study thorax", {"study_description": "THORAX"}, False, "body_part",
     "StudyDescription is THORAX"),
    ("thoracic is spine", {"study_description": "THORACIC"}, True, "body_part",
     "StudyDescription is THORACIC"),
    ("protocol name", {"protocol_name": "Skull AP"}, False, "body_part",
     "ProtocolName contains SKULL"),
    ("whole words only", {"study_description": "COLLEGE STUDY"}, True,
     "body_part_not_stated", "no body part stated"),
    ("tibia in free text", {"study_description": "Non-ossifying fibroma of distal tibia"},
     False, "body_part", "StudyDescription contains TIBIA"),
    ("spine code", {"anatomic_codes": (("SCT", "122496007"),)}, True, "body_part",
     "AnatomicRegionSequence is SCT 122496007 (Lumbar spine)"),
    ("chest code wins over text", {"anatomic_codes": (("SCT", "816094009"),),
                                   "body_part_examined": "LSPINE"},
     False, "body_part", "AnatomicRegionSequence is SCT 816094009 (Chest)"),
    ("unknown code: text decides", {"anatomic_codes": (("SCT", "1"),),
                                    "body_part_examined": "LSPINE"},
     True, "body_part", "BodyPartExamined is LSPINE"),
    ("nothing stated", {}, True, "body_part_not_stated", "no body part stated"),
    ("no modality (VinDr)", {"modality": None, "body_part_examined": "SPINE"}, True,
     "body_part", "BodyPartExamined is SPINE"),
    ("no sop class", {"sop_class_uid": None, "body_part_examined": "SPINE"}, True,
     "body_part", "BodyPartExamined is SPINE"),
    ("secondary capture", {"sop_class_uid": SECONDARY_CAPTURE, "modality": "OT",
                           "body_part_examined": "LSPINE"},
     False, "sop_class", "SOP Class is Secondary Capture Image Storage, accepted only with "
     "secondary_capture: true in INPUT_SELECTION_RULES"),
    ("ct", {"sop_class_uid": CT, "body_part_examined": "LSPINE"}, False, "sop_class",
     "SOP Class is CT Image Storage, not a radiograph class"),
    ("mammography", {"sop_class_uid": MAMMOGRAPHY}, False, "sop_class",
     "SOP Class is Digital Mammography X-Ray Image Storage - For Presentation, "
     "not a radiograph class"),
    ("garbage sop class", {"sop_class_uid": "<script>"}, False, "sop_class",
     "SOP Class is not a valid UID, not a radiograph class"),
    ("modality mr", {"modality": "MR", "body_part_examined": "LSPINE"}, False, "modality",
     "Modality is MR, not one of CR, DX, RF, OT"),
    ("modality garbage", {"modality": "Jane <Doe>"}, False, "modality",
     "the Modality value, not one of CR, DX, RF, OT"),
    ("16 x 16", {"rows": 16, "columns": 16, "body_part_examined": "LSPINE"}, False,
     "image_size", "the image is 16x16 pixels, smaller than the 128x128 minimum of a "
     "radiograph"),
    ("128 x 128 is enough", {"rows": 128, "columns": 128, "body_part_examined": "LSPINE"},
     True, "body_part", "BodyPartExamined is LSPINE"),
]


@pytest.mark.parametrize(
    ("changes", "accepted", "rule", "reason"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_select_decides_on_the_header(
    changes: dict[str, object], accepted: bool, rule: str, reason: str
) -> None:
    selection = select(replace(BASE, **changes), default_rules())
    assert (selection.accepted, selection.rule, selection.reason) == (accepted, rule, reason)
    if not accepted:
        assert selection.message.startswith(f"not a spine radiograph: {reason} ")
        assert f"rule: {rule}" in selection.message


def test_no_body_part_warns_and_the_warning_can_be_silenced_or_refused(tmp_path: Path) -> None:
    assert select(BASE, default_rules()).warnings == (WARN_BODY_PART_NOT_STATED,)
    assert WARN_BODY_PART_NOT_STATED.lower().startswith("body part not stated")
    for mode, accepted, warnings in (("accept", True, ()), ("refuse", False, ())):
        path = tmp_path / f"{mode}.yaml"
        path.write_text(f"body_part:\n  when_not_stated: {mode}\n")
        selection = select(BASE, load_rules(path))
        assert (selection.accepted, selection.warnings) == (accepted, warnings)
        assert selection.rule == "body_part_not_stated"


def test_descriptions_are_never_quoted() -> None:
    secret = "Jane Doe 1970-01-01 fell off her bike; CHEST"
    for field in ("study_description", "series_description", "protocol_name"):
        selection = select(replace(BASE, **{field: secret}), default_rules())
        assert not selection.accepted
        assert "Jane" not in selection.message and "bike" not in selection.message


def test_a_custom_file_merges_over_the_default(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "sop_classes:\n  secondary_capture: true\n"
        "view_positions: [AP, LL]\n"
        "min_rows: 16\nmin_columns: 16\n"
    )
    rules = load_rules(path)
    assert rules.body_part == default_rules().body_part  # untouched keys keep the default
    assert rules.sop_classes.accept == default_rules().sop_classes.accept
    capture = replace(BASE, sop_class_uid=SECONDARY_CAPTURE, modality="OT",
                      body_part_examined="LSPINE")
    assert select(capture, rules).accepted
    assert select(replace(capture, rows=16, columns=16), rules).accepted
    oblique = select(replace(capture, view_position="RAO"), rules)
    assert (oblique.accepted, oblique.rule) == (False, "view_position")
    assert oblique.reason == "ViewPosition is RAO, not one of AP, LL"
    assert select(replace(capture, view_position=None), rules).accepted  # absent: not refused


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("min_rows: 0\n", "min_rows"),
        ("body_part:\n  fields: [PatientName]\n", "fields"),
        ("modalitys: [DX]\n", "modalitys"),
        ("- a list\n", "mapping"),
        ("body_part: {when_not_stated: maybe}\n", "when_not_stated"),
        ("key: [unclosed\n", "cannot read"),
    ],
)
def test_a_bad_rules_file_is_refused_by_name(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InvalidRulesError, match=problem) as caught:
        load_rules(path)
    assert str(path) in str(caught.value)


def _header(name: str):
    return read_header(parse_dicom(Path(get_testdata_file(name)).read_bytes()))


def test_the_real_chest_and_tibia_from_pydicom_data_are_refused() -> None:
    chest = select(_header("RG1_J2KR.dcm"), default_rules())
    tibia = select(_header("RG3_UNCR.dcm"), default_rules())
    assert (chest.accepted, chest.reason) == (False, "BodyPartExamined is CHEST")
    assert (tibia.accepted, tibia.reason) == (False, "BodyPartExamined is EXTREMITY")


def test_the_header_reads_what_selection_needs() -> None:
    exam = _header("RG1_J2KR.dcm").examination
    assert exam.sop_class_uid == CR_IMAGE_STORAGE and exam.modality == "CR"
    assert (exam.body_part_examined, exam.study_description) == ("CHEST", "THORAX")
    assert (exam.view_position, exam.rows, exam.columns) == ("PA", 1955, 1841)
    from pydicom.dataset import Dataset

    from shared.dicom.examination import read_examination

    ds = Dataset()
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "122496007", "SCT", "x"
    ds.AnatomicRegionSequence = [item]
    assert read_examination(ds).anatomic_codes == (("SCT", "122496007"),)
    assert select(ds, default_rules()).reason.startswith("AnatomicRegionSequence is SCT")


def test_decode_refuses_before_decoding_and_reports_the_rule() -> None:
    chest = Path(get_testdata_file("RG1_J2KR.dcm")).read_bytes()
    with pytest.raises(NotSelectedError) as caught:
        decode_dicom(chest, selection=default_rules())
    assert caught.value.status_code == 422 and caught.value.rule == "body_part"
    assert caught.value.message.startswith("not a spine radiograph: BodyPartExamined is CHEST")
    image, _ = decode_dicom(chest)  # no rules (training, evaluation): decoded as before
    assert image.selection is None

    spine = make_dicom(radiograph_pixels(300, 200))
    image, _ = decode_dicom(spine, selection=default_rules())
    assert image.selection is not None and image.selection.reason == "BodyPartExamined is LSPINE"
    assert WARN_BODY_PART_NOT_STATED not in image.warnings
    unstated = make_dicom(radiograph_pixels(300, 200), body_part=None)
    image, _ = decode_dicom(unstated, selection=default_rules())
    assert image.selection.rule == "body_part_not_stated"
    assert WARN_BODY_PART_NOT_STATED in image.warnings
    with pytest.raises(NotSelectedError, match="16x16"):
        decode_dicom(make_dicom(np.full((16, 16), 100, np.uint16)), selection=default_rules())
