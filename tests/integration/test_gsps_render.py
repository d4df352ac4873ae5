"""Our presentation state through a renderer we did not write: DCMTK's ``dcmp2pgm``.

``dcmp2pgm -p pr.dcm image.dcm`` renders the image through the presentation state's
grayscale pipeline (Modality LUT, the Softcopy VOI LUT we wrote, Presentation LUT
Shape) and, with ``-v``, dumps the graphic layer as DCMTK parsed it. It does not burn
the graphic or text annotations into the bitmap (DCMTK leaves drawing them to a viewer;
neither does any other GSPS renderer Debian, PyPI or npm offers without a desktop GUI:
docs/INTEGRATION.md, "The presentation state"), so the test checks what each part can:

- pixels: the bitmap DCMTK rendered, shrunk as the gateway shrinks, is the canonical
  image the models saw (``/upload?canonical_image=true``), grey for grey within 2;
- drawing: in DCMTK's reading of the PR, one closed pixel-unit polyline per box of the
  JSON answer, at its bbox within 0.5 px, and one "<class> <confidence>%" text whose
  bounding box sits on that box's top edge, plus the call's line at the top.
"""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from tests.tools import require_tools

pytestmark = pytest.mark.timeout(300)

GRAPHIC = re.compile(r"graphic \d+: points=(\d+) type=(\w+) filled=no units=(\w+)\s*\n"
                     r"\s*I:\s+coordinates: ([^\n]+)")
TEXT = re.compile(r'text \d+: "([^"]*)"\s*\n(?:\s*I:\s+anchor point: none\s*\n)?'
                  r"\s*I:\s+bounding box: TLHC=([\d.]+)\\([\d.]+) BRHC=([\d.]+)\\([\d.]+) "
                  r"units=(\w+)")


def _phantom(tmp: Path) -> Path:
    """An uncompressed spine phantom with a VOI window (DCMTK reads it natively)."""
    from training.phantoms.files import phantom_dataset, phantom_item
    from training.phantoms.image import render_spec

    item = phantom_item(seed=11, split="test", index=0)
    display, _ = render_spec(item.spec)
    ds = phantom_dataset(item, display, 11, "test")
    assert "WindowCenter" in ds and ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    path = tmp / "image.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _pgm(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.dtype == np.uint8, path
    return image


def test_dcmtk_renders_our_presentation_state_as_the_models_saw_it(
    stack, tmp_path: Path
) -> None:
    require_tools("dcmp2pgm")
    image = _phantom(tmp_path)
    data = image.read_bytes()
    answer = httpx.post(
        f"{stack.gateway}/upload", params={"annotate": "false", "canonical_image": "true"},
        files={"file": ("x.dcm", data)}, timeout=120,
    ).json()
    canonical = cv2.imdecode(
        np.frombuffer(base64.b64decode(answer["canonical_image"].split(",", 1)[1]), np.uint8),
        cv2.IMREAD_GRAYSCALE,
    )
    response = httpx.post(
        f"{stack.gateway}/upload/dicom", params={"parts": "gsps"},
        files={"file": ("x.dcm", data)}, headers={"Accept": "application/dicom"}, timeout=120,
    )
    assert response.status_code == 200, response.text
    (tmp_path / "pr.dcm").write_bytes(response.content)
    run = subprocess.run(
        ["dcmp2pgm", "-v", "-p", str(tmp_path / "pr.dcm"), str(image), str(tmp_path / "r.pgm")],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    dump = run.stdout + run.stderr

    rendered = _pgm(tmp_path / "r.pgm")  # original size, through our PR
    height, width = canonical.shape
    shrunk = cv2.resize(rendered, (width, height), interpolation=cv2.INTER_AREA)
    difference = np.abs(shrunk.astype(int) - canonical.astype(int))
    assert np.percentile(difference, 99.9) <= 2 and difference.mean() < 0.6, (
        difference.mean(), difference.max()
    )

    detections = answer["detections"]
    assert detections, "the tiny bundle's detector always fires"
    graphics = GRAPHIC.findall(dump)
    assert len(graphics) == len(detections)
    texts = TEXT.findall(dump)
    assert len(texts) == len(detections) + 1
    for (points, kind, units, coordinates), detection in zip(graphics, detections, strict=True):
        assert (points, kind, units) == ("5", "polyline", "pixel")
        pairs = [tuple(map(float, p.split("\\"))) for p in coordinates.strip(" ,").split(", ")]
        assert pairs[0] == pairs[-1]  # closed
        xs, ys = [x for x, _ in pairs], [y for _, y in pairs]
        assert [min(xs), min(ys), max(xs), max(ys)] == pytest.approx(detection["bbox"], abs=0.5)
    for (text, left, top, _, bottom, units), detection in zip(texts[:-1], detections, strict=True):
        assert units == "pixel"
        assert text == f"{detection['class']} {100 * detection['confidence']:.0f}%"
        x1, y1 = detection["bbox"][:2]
        assert float(left) == pytest.approx(max(0.0, x1), abs=1.0)
        assert float(bottom) == pytest.approx(y1, abs=0.5) or float(top) == pytest.approx(y1)
    summary = texts[-1][0]
    assert answer["diagnosis"] in summary and "NOT FOR DIAGNOSTIC USE" in summary
