"""``POST /upload/dicom`` through the real gateway, checked by tools we did not write.

Two stacks on copies of the tiny bundle: one whose threshold (0) makes every image
Abnormal, one (a ``demo``-kind bundle, threshold 1) that makes every image Normal, so
that the boxes the paper fusion rule keeps on a Normal image can be checked. The
detector of the tiny bundle always fires. ``dciodvfy`` (dicom3tools) validates both
objects against their IODs, DCMTK's ``dsrdump`` renders the SR, highdicom reads it back.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest
import yaml

from tests.integration.stack import Stack, start_stack
from tests.tools import require_tools

pytestmark = pytest.mark.timeout(600)


def _bundle_copy(tiny: Path, out: Path, *, threshold: float, kind: str) -> Path:
    shutil.copytree(tiny, out)
    manifest = yaml.safe_load((out / "manifest.yaml").read_text())
    manifest["classifier"]["threshold"] = threshold
    manifest["kind"] = kind
    (out / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return out


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from training.samples import write_samples

    out = tmp_path_factory.mktemp("samples")
    return {s.name: (out / s.file).read_bytes() for s in write_samples(out)}


@pytest.fixture(scope="module")
def abnormal_stack(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("abnormal")
    bundle = _bundle_copy(tiny_bundle, tmp / "bundle", threshold=0.0, kind="user")
    stack = start_stack(bundle, tmp / "stack")
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def normal_demo_stack(
    tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("normal")
    bundle = _bundle_copy(tiny_bundle, tmp / "bundle", threshold=1.0, kind="demo")
    stack = start_stack(bundle, tmp / "stack")
    yield stack
    stack.stop()


def upload_dicom(url: str, data: bytes, **params: str) -> httpx.Response:
    return httpx.post(
        f"{url}/upload/dicom", files={"file": ("x.dcm", data, "application/dicom")},
        params=params, timeout=120,
    )


def split_parts(response: httpx.Response) -> dict[str, tuple[str, bytes]]:
    """multipart/related -> {Content-ID: (content type, body)}, with the stdlib parser."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        head + response.content
    )
    assert message.is_multipart()
    return {
        part["Content-ID"].strip("<>"): (part.get_content_type(), part.get_payload(decode=True))
        for part in message.iter_parts()
    }


def dciodvfy(path: Path) -> str:
    """dciodvfy's report (it prints to stderr); no line may be an error."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    report = run.stdout + run.stderr
    print(f"\n[dciodvfy {path.name}]\n{report}")
    assert not [line for line in report.splitlines() if line.startswith("Error")], report
    return report


def roi_boxes(sr: hd.sr.ComprehensiveSR) -> list[tuple[str, float, list[float]]]:
    """(finding meaning, confidence, [x1, y1, x2, y2]) of each planar ROI group."""
    boxes = []
    for group in sr.content.get_planar_roi_measurement_groups():
        points = group.roi.value  # (5, 2) closed polyline
        assert (points[0] == points[-1]).all()
        xs, ys = points[:, 0], points[:, 1]
        (measurement,) = group.get_measurements()
        assert measurement.unit.value == "%"  # percent: OHIF writes 2 decimals
        assert measurement.name.meaning == f"{group.finding_type.meaning}, confidence"
        boxes.append(
            (group.finding_type.meaning, float(measurement.value) / 100,
             [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())])
        )
    return boxes


def image_finding(sr: hd.sr.ComprehensiveSR, source: pydicom.Dataset) -> str:
    """The image group's Finding; its first NUM names the same call, and every NUM is
    INFERRED FROM the whole image's outline (OHIF draws a group only with coordinates)."""
    (group,) = sr.content.get_image_measurement_groups()
    finding = group.finding_type.meaning
    measurements = group.get_measurements()
    assert measurements[0].name.meaning == f"{finding}, P(abnormal)"
    for measurement in measurements:
        (region,) = measurement.referenced_coordinates
        assert (region.RelationshipType, region.GraphicType) == ("INFERRED FROM", "POLYLINE")
        xs, ys = region.GraphicData[0::2], region.GraphicData[1::2]
        assert [min(xs), min(ys), max(xs), max(ys)] == [0, 0, source.Columns, source.Rows]
    return finding


def report_text(sr: pydicom.Dataset) -> str:
    return "\n".join(
        item.TextValue for item in sr.ContentSequence if item.ValueType == "TEXT"
    )


def test_abnormal_phantom_gives_a_valid_sr_and_gsps(
    abnormal_stack: Stack, samples: dict[str, bytes], tmp_path: Path
) -> None:
    require_tools("dciodvfy", "dsrdump")
    source = pydicom.dcmread(io.BytesIO(samples["abnormal-1"]))
    response = upload_dicom(abnormal_stack.gateway, samples["abnormal-1"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    parts = split_parts(response)
    assert [kind for kind, _ in parts.values()] == [
        "application/dicom", "application/dicom", "application/json"
    ]
    body = json.loads(parts["analysis"][1])
    assert body["diagnosis"] == "Abnormal" and body["detections"], body

    (tmp_path / "sr.dcm").write_bytes(parts["sr"][1])
    (tmp_path / "gsps.dcm").write_bytes(parts["gsps"][1])
    dciodvfy(tmp_path / "sr.dcm")
    dciodvfy(tmp_path / "gsps.dcm")
    dump = subprocess.run(
        ["dsrdump", str(tmp_path / "sr.dcm")], capture_output=True, text=True, timeout=60
    )
    assert dump.returncode == 0, dump.stderr
    assert "Imaging Measurement Report" in dump.stdout and "Abnormal" in dump.stdout

    sr_ds = pydicom.dcmread(io.BytesIO(parts["sr"][1]))
    sr = hd.sr.srread(io.BytesIO(parts["sr"][1]))
    assert sr_ds.StudyInstanceUID == source.StudyInstanceUID
    assert sr_ds.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr_ds.SOPInstanceUID != source.SOPInstanceUID
    assert sr_ds.PatientID == source.PatientID  # DICOM_RESULT_PATIENT=copy (default)
    assert sr_ds.VerificationFlag == "UNVERIFIED"
    assert "Not for diagnostic use" in report_text(sr_ds)
    assert "DEMO" not in report_text(sr_ds)
    assert image_finding(sr, source) == "Abnormal"
    # every ROI references the source image and equals the JSON box within 0.5 px
    for group in sr.content.get_planar_roi_measurement_groups():
        (image,) = group.roi.ContentSequence  # SELECTED FROM the source image
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    boxes = roi_boxes(sr)
    assert len(boxes) == len(body["detections"])
    for (meaning, confidence, bbox), detection in zip(boxes, body["detections"], strict=True):
        assert meaning == detection["class"]
        assert confidence == pytest.approx(detection["confidence"], abs=1e-6)
        assert bbox == pytest.approx(detection["bbox"], abs=0.5)
    # the algorithm is named with its checkpoints
    text = dump.stdout
    assert body["model_bundle"]["name"] in text and "Algorithm Name" in text

    gsps = pydicom.dcmread(io.BytesIO(parts["gsps"][1]))
    assert gsps.Modality == "PR" and gsps.StudyInstanceUID == source.StudyInstanceUID
    referenced = gsps.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    (annotation,) = gsps.GraphicAnnotationSequence
    assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    rectangles = [g for g in annotation.GraphicObjectSequence if g.GraphicType == "POLYLINE"]
    assert len(rectangles) == len(body["detections"])
    for graphic, detection in zip(rectangles, body["detections"], strict=True):
        xs, ys = graphic.GraphicData[0::2], graphic.GraphicData[1::2]
        assert [min(xs), min(ys), max(xs), max(ys)] == pytest.approx(detection["bbox"], abs=0.5)
    assert len(annotation.TextObjectSequence) == len(body["detections"]) + 1
    assert gsps.SoftcopyVOILUTSequence[0].WindowWidth > 0


def test_one_part_and_a_bare_object(abnormal_stack: Stack, samples: dict[str, bytes]) -> None:
    parts = split_parts(upload_dicom(abnormal_stack.gateway, samples["abnormal-2"], parts="gsps"))
    assert list(parts) == ["gsps", "analysis"]
    bare = httpx.post(
        f"{abnormal_stack.gateway}/upload/dicom", params={"parts": "sr"},
        files={"file": ("x.dcm", samples["abnormal-2"])},
        headers={"Accept": "application/dicom"}, timeout=120,
    )
    assert bare.status_code == 200 and bare.headers["content-type"] == "application/dicom"
    assert "attachment" in bare.headers["content-disposition"]
    assert pydicom.dcmread(io.BytesIO(bare.content)).Modality == "SR"


def test_normal_image_keeps_only_the_fused_boxes_and_says_demo(
    normal_demo_stack: Stack, samples: dict[str, bytes], tmp_path: Path
) -> None:
    require_tools("dciodvfy")
    response = upload_dicom(normal_demo_stack.gateway, samples["normal-1"])
    assert response.status_code == 200, response.text
    parts = split_parts(response)
    body = json.loads(parts["analysis"][1])
    assert body["diagnosis"] == "Normal" and body["demo"] is True
    kept = body["detections"]
    assert all(d["confidence"] >= body["fusion"]["normal_min_confidence"] for d in kept)
    (tmp_path / "sr.dcm").write_bytes(parts["sr"][1])
    dciodvfy(tmp_path / "sr.dcm")
    sr = hd.sr.srread(io.BytesIO(parts["sr"][1]))
    source = pydicom.dcmread(io.BytesIO(samples["normal-1"]))
    assert image_finding(sr, source) == "Normal"
    boxes = roi_boxes(sr)
    assert len(boxes) == len(kept) and body["fusion"]["boxes_suppressed"] >= 0
    for (_, _, bbox), detection in zip(boxes, kept, strict=True):
        assert bbox == pytest.approx(detection["bbox"], abs=0.5)
    sr_ds = pydicom.dcmread(io.BytesIO(parts["sr"][1]))
    assert "DEMO model bundle" in report_text(sr_ds)
    assert "DEMO" in sr_ds.SeriesDescription


SERVER_TIMING = re.compile(r"dicom;dur=(\d+(?:\.\d+)?)")


def writing_ms(response: httpx.Response) -> float:
    """The writer's own time from ``Server-Timing: dicom;dur=<ms>`` (asserted well-formed)."""
    match = SERVER_TIMING.fullmatch(response.headers.get("server-timing", ""))
    assert match, f"no parseable Server-Timing: {response.headers.get('server-timing')!r}"
    return float(match.group(1))


def test_every_choice_of_parts_answers_those_objects_and_their_writing_time(
    abnormal_stack: Stack, samples: dict[str, bytes]
) -> None:
    """Each ``parts`` gives exactly those objects, in order, and a positive, well-formed
    ``Server-Timing: dicom;dur=``. The medians (and /upload vs /upload/dicom wall time)
    are printed with -s, never asserted: ``python -m bench.result_objects`` measures what
    each object adds, as ratios."""
    data = samples["abnormal-1"]
    plain, dicom, boxes = [], [], 0
    written: dict[str, list[float]] = {"sr": [], "gsps": [], "sc": [], "kos": [], "sr,gsps": []}
    for _ in range(3):
        started = time.perf_counter()
        assert httpx.post(
            f"{abnormal_stack.gateway}/upload", params={"annotate": "false"},
            files={"file": ("x.dcm", data)}, timeout=120,
        ).status_code == 200
        plain.append(time.perf_counter() - started)
        started = time.perf_counter()
        response = upload_dicom(abnormal_stack.gateway, data)
        dicom.append(time.perf_counter() - started)
        assert response.status_code == 200 and writing_ms(response) > 0
        boxes = len(json.loads(split_parts(response)["analysis"][1])["detections"])
        for parts, times in written.items():
            response = upload_dicom(abnormal_stack.gateway, data, parts=parts)
            assert response.status_code == 200
            assert list(split_parts(response))[:-1] == parts.split(",")
            times.append(writing_ms(response))
            assert times[-1] > 0
    each = ", ".join(f"{k} {statistics.median(v):.1f} ms" for k, v in written.items())
    print(
        f"\n[dicom results] /upload median {1000 * statistics.median(plain):.1f} ms, "
        f"/upload/dicom median {1000 * statistics.median(dicom):.1f} ms; writing, median "
        f"of 3 ({boxes} boxes, {len(data)} bytes image): {each}"
    )


def test_the_burned_in_secondary_capture(
    abnormal_stack: Stack, samples: dict[str, bytes], tmp_path: Path
) -> None:
    """parts=sc: a valid SC of the canonical image, boxes drawn where the JSON says,
    the warning in the header; a part this service does not write is refused (422)."""
    require_tools("dciodvfy")
    source = pydicom.dcmread(io.BytesIO(samples["abnormal-1"]))
    parts = split_parts(upload_dicom(abnormal_stack.gateway, samples["abnormal-1"], parts="sc"))
    assert list(parts) == ["sc", "analysis"]
    body = json.loads(parts["analysis"][1])
    (tmp_path / "sc.dcm").write_bytes(parts["sc"][1])
    dciodvfy(tmp_path / "sc.dcm")
    sc = pydicom.dcmread(tmp_path / "sc.dcm")
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.BurnedInAnnotation == "YES"
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert "NOT FOR DIAGNOSTIC USE" in sc.SeriesDescription
    assert "Not for diagnostic use" in sc.ImageComments
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    pixels = sc.pixel_array  # RGB, the canonical size (long side 1024)
    scale = max(pixels.shape[:2]) / max(source.Rows, source.Columns)
    assert max(pixels.shape[:2]) == 1024 and pixels.shape[2] == 3
    amber = (pixels[..., 0] > 200) & (pixels[..., 1] > 150) & (pixels[..., 2] < 80)
    # Each box's left edge is amber, except where a text strip drawn after it (the warning
    # banner, another box's label: black, a line of text high) lies across it.
    edges = []
    for detection in body["detections"]:
        x1, y1, x2, y2 = (round(v * scale) for v in detection["bbox"])
        left = amber[max(0, y1 + 2):y2 - 1, max(0, x1 - 2):x1 + 3].any(axis=1)
        assert left.size and left.mean() > 0.5, detection
        edges.append(left)
    assert np.concatenate(edges).mean() > 0.8
    bad = upload_dicom(abnormal_stack.gateway, samples["abnormal-1"], parts="sr,pdf")
    assert bad.status_code == 422 and "pdf" in bad.json()["message"]


def test_the_key_object_selection_is_valid_and_flags_the_image(
    abnormal_stack: Stack, samples: dict[str, bytes], tmp_path: Path
) -> None:
    require_tools("dciodvfy")
    source = pydicom.dcmread(io.BytesIO(samples["abnormal-2"]))
    parts = split_parts(upload_dicom(abnormal_stack.gateway, samples["abnormal-2"], parts="kos"))
    assert list(parts) == ["kos", "analysis"]
    (tmp_path / "kos.dcm").write_bytes(parts["kos"][1])
    dciodvfy(tmp_path / "kos.dcm")
    kos = pydicom.dcmread(tmp_path / "kos.dcm")
    assert kos.Modality == "KO" and kos.StudyInstanceUID == source.StudyInstanceUID
    (image,) = [i for i in kos.ContentSequence if i.ValueType == "IMAGE"]
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


@pytest.mark.parametrize("mode", ["gateway", "in-process"])
def test_evaluate_writes_both_objects_for_every_image(
    mode: str, abnormal_stack: Stack, tiny_bundle: Path, tmp_path: Path
) -> None:
    """``spine evaluate --dicom-out``: through /upload/dicom, or the shared writer in-process."""
    require_tools("dciodvfy")
    from shared.settings import ModelServerSettings
    from training.evaluate import evaluate
    from training.phantoms import generate_phantoms

    data = generate_phantoms(tmp_path / "data", 3, seed=5, split="test", progress=False)
    out = tmp_path / "dicom"
    source = (
        {"gateway": abnormal_stack.gateway} if mode == "gateway"
        else {"model_dir": tiny_bundle, "model_settings": ModelServerSettings()}
    )
    evaluate(data, tmp_path / "report", split="test", progress=False, dicom_out=out, **source)
    images = sorted((data / "test_images").glob("*.dicom"))
    assert len(images) == 3
    for image in images:
        for kind in ("sr", "gsps"):
            assert (out / f"{image.stem}.{kind}.dcm").is_file(), sorted(out.iterdir())
    first = out / f"{images[0].stem}.sr.dcm"
    dciodvfy(first)
    dciodvfy(out / f"{images[0].stem}.gsps.dcm")
    sr = hd.sr.srread(first)
    assert image_finding(sr, pydicom.dcmread(images[0])) in ("Normal", "Abnormal")
    assert pydicom.dcmread(first).StudyInstanceUID == pydicom.dcmread(images[0]).StudyInstanceUID
