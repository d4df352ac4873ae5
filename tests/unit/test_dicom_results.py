"""The DICOM result writers without services: SourceImage, window, labels, PHI, parts."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest

from gateway.dicomweb import outputs as dicom_out
from shared.dicom import decode_dicom
from shared.dicom.render import RenderSpec, Window, display_window, render
from shared.dicom.results import (
    AnalysisResult,
    ResultBox,
    ResultKind,
    ResultWriteError,
    write_results,
)
from shared.dicom.results.common import reference_dataset
from shared.settings import GatewaySettings, ResultPatientMode
from tests.factories import make_dicom, radiograph_pixels


def result(kind: str = "user", diagnosis: str = "Abnormal") -> AnalysisResult:
    return AnalysisResult(
        diagnosis=diagnosis, abnormal_probability=0.8, threshold=0.449,
        members={"a": 0.7, "b": 0.9},
        boxes=(ResultBox("Disc space narrowing", 0.57, (10.0, 20.5, 30.0, 40.0)),),
        bundle_name="b", bundle_kind=kind, checkpoints={"m.pth": "0" * 64}, fusion_mode="paper",
    )


@pytest.fixture(scope="module")
def source():
    _, metadata = decode_dicom(make_dicom(radiograph_pixels(300, 200, bits=12, seed=1)))
    return metadata.source


def text_items(sr: bytes) -> str:
    ds = pydicom.dcmread(io.BytesIO(sr))
    return "\n".join(i.TextValue for i in ds.ContentSequence if i.ValueType == "TEXT")


@pytest.mark.parametrize(("kind", "label"), [("demo", "DEMO"), ("untrained", "UNTRAINED")])
def test_demo_and_untrained_bundles_are_labelled_in_both_objects(source, kind, label) -> None:
    written = write_results(source, result(kind))
    assert label in text_items(written.sr) and "Not for diagnostic use" in text_items(written.sr)
    for data in (written.sr, written.gsps):
        assert label in pydicom.dcmread(io.BytesIO(data)).SeriesDescription
    assert "DEMO" not in text_items(write_results(source, result("user")).sr)


def test_roi_and_rectangle_are_the_json_box(source) -> None:
    written = write_results(source, result())
    sr = hd.sr.srread(io.BytesIO(written.sr))
    (group,) = sr.content.get_planar_roi_measurement_groups()
    points = group.roi.value
    assert points.tolist() == [[10, 20.5], [30, 20.5], [30, 40], [10, 40], [10, 20.5]]
    gsps = pydicom.dcmread(io.BytesIO(written.gsps))
    graphic = gsps.GraphicAnnotationSequence[0].GraphicObjectSequence[0]
    assert [float(v) for v in graphic.GraphicData] == points.ravel().tolist()


def test_source_keeps_phi_out_of_repr_and_drops_invalid_values() -> None:
    data = make_dicom(radiograph_pixels(64, 64, bits=12, seed=2), patient_id="PID-SENTINEL-1")
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PatientBirthDate = "not-a-date"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    _, metadata = decode_dicom(buffer.getvalue())
    assert "PID-SENTINEL-1" not in repr(metadata.source)
    attributes = metadata.source.attributes()
    assert attributes["PatientID"] == "PID-SENTINEL-1" and "PatientBirthDate" not in attributes


def test_an_image_without_uids_gets_a_clear_refusal(source) -> None:
    from dataclasses import replace

    with pytest.raises(ResultWriteError, match="SOP Instance UID"):
        reference_dataset(replace(source, sop_instance_uid=None))


def test_pseudonymised_results_keep_the_study(source) -> None:
    settings = GatewaySettings(dicom_result_patient=ResultPatientMode.PSEUDONYMIZE, pseudonym_secret="s")
    hidden = dicom_out.result_source(source, settings)
    attributes = hidden.attributes()
    assert attributes["PatientID"].startswith("anon-")
    assert attributes["PatientName"] == attributes["PatientID"] + "^"
    assert "PatientBirthDate" not in attributes
    assert attributes["StudyDate"] == source.attributes()["StudyDate"]
    sr = pydicom.dcmread(io.BytesIO(write_results(hidden, result()).sr))
    assert sr.PatientID == attributes["PatientID"]
    assert sr.StudyInstanceUID == source.study_instance_uid
    assert dicom_out.result_source(source, GatewaySettings()) is source  # copy is the default


@pytest.mark.parametrize(
    "window", [None, Window(center=2000.0, width=1500.0), Window(center=9000.0, width=10.0)]
)
def test_display_window_reproduces_the_rendering(window) -> None:
    """Windowing the modality values with it gives what render() gave (within 1 grey)."""
    pixels = radiograph_pixels(120, 80, bits=12, seed=4).astype(np.uint16)
    spec = RenderSpec(bits_stored=12, signed=False, slope=1.0, intercept=-100.0, window=window)
    rendered = render(pixels, spec)
    found, exact = display_window(rendered.modality_range, spec)
    assert exact and found is not None
    again = np.floor(255 * found.apply(pixels * 1.0 - 100.0)).astype(np.uint8)
    assert np.abs(again.astype(int) - rendered.pixels.astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("accept", "parts", "bare"),
    [
        ("application/dicom", "sr", True),
        ("application/dicom", "sc", True),
        ("application/dicom", "all", False),
        ("application/dicom", "sr,gsps", False),
        (None, "sr", False),
        ("*/*", "gsps", False),
        ('multipart/related; type="application/dicom"', "sr", False),
    ],
)
def test_bare_object_only_when_asked_for(accept, parts, bare) -> None:
    kinds = dicom_out.requested_kinds(parts, GatewaySettings())
    assert dicom_out.wants_bare_object(accept, kinds) is bare


def test_parts_all_follows_results_objects_and_a_bad_part_is_refused() -> None:
    assert dicom_out.requested_kinds("all", GatewaySettings()) == (ResultKind.SR, ResultKind.GSPS)
    chosen = GatewaySettings(results_objects="sc,sr")
    assert dicom_out.requested_kinds("all", chosen) == (ResultKind.SR, ResultKind.SC)
    assert dicom_out.requested_kinds("gsps, SC", chosen) == (ResultKind.GSPS, ResultKind.SC)
    for bad in ("pdf", "", "sr,ko"):
        with pytest.raises(dicom_out.BadParts, match="parts"):
            dicom_out.requested_kinds(bad, GatewaySettings())


@pytest.mark.parametrize(
    "bbox", [(199.0, 0.0, 200.0, 5.0), (200.0, 300.0, 200.0, 300.0), (0.0, 0.0, 0.0, 0.0)]
)
def test_labels_of_boxes_flat_against_an_edge_stay_inside(source, bbox) -> None:
    """A clipped, zero-area box (in-process evaluation keeps those) still gets its label."""
    from dataclasses import replace

    from shared.dicom.results.gsps import _label_box

    left, top, right, bottom = _label_box(bbox, source.rows, source.columns)
    assert 0 <= left < right <= source.columns and 0 <= top < bottom <= source.rows
    boxed = replace(result(), boxes=(ResultBox("Osteophytes", 0.3, bbox),))
    assert write_results(source, boxed).gsps


def test_the_key_object_selection_flags_the_analysed_image(source) -> None:
    written = write_results(source, result("demo"), (ResultKind.KOS,))
    assert list(written.objects) == [ResultKind.KOS]
    kos = pydicom.dcmread(io.BytesIO(written.objects[ResultKind.KOS]))
    assert kos.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59" and kos.Modality == "KO"
    assert kos.StudyInstanceUID == source.study_instance_uid
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113000"  # Of Interest
    (image,) = [i for i in kos.ContentSequence if i.ValueType == "IMAGE"]
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.sop_instance_uid
    (text,) = [i for i in kos.ContentSequence if i.RelationshipType == "CONTAINS" and i.ValueType == "TEXT"]
    assert "Abnormal" in text.TextValue and "DEMO" in text.TextValue
    assert kos.SeriesInstanceUID == written.uids[ResultKind.KOS].series
