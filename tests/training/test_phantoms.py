"""Phantom generator: deterministic, tight boxes, VinDr layout, DICOMs that decode to the render."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from training.datasets import CLASS_NAMES, load_vindr
from training.phantoms import (
    AP,
    LATERAL,
    LATERAL_ONLY,
    MAX_VALUE,
    compose,
    generate_phantoms,
    phantom_item,
    rasterize,
    render_phantom,
    render_spec,
    sample_phantom,
)

SEED = 7  # its first 6 images mix all three transfer syntaxes, MONOCHROME1/2, windowed or not
COUNT = 6
CASES = [(LATERAL, kind) for kind in CLASS_NAMES] + [
    (AP, kind) for kind in CLASS_NAMES if kind not in LATERAL_ONLY
]


def test_render_is_pure_and_deterministic() -> None:
    a_img, a_boxes = render_phantom(np.random.default_rng(123))
    b_img, b_boxes = render_phantom(np.random.default_rng(123))
    assert a_img.dtype == np.uint16 and a_img.max() <= MAX_VALUE
    assert np.array_equal(a_img, b_img) and a_boxes == b_boxes
    c_img, _ = render_phantom(np.random.default_rng(124))
    assert a_img.shape != c_img.shape or not np.array_equal(a_img, c_img)


@pytest.mark.parametrize(("view", "kind"), CASES)
def test_box_holds_exactly_what_the_lesion_drew(view: str, kind: str) -> None:
    """Render with and without the lesion: the changed pixels fill the box and stay inside it."""
    rng = np.random.default_rng([2024, CLASS_NAMES.index(kind), view == AP])
    spec = sample_phantom(rng, lesion_types=[kind], view=view)
    image, boxes = render_spec(spec)
    (box,) = boxes
    assert box.lesion_type == kind
    plain = compose(spec, rasterize(spec, ()))
    changed = np.abs(image.astype(np.int32) - plain) > 0.04 * (spec.high - spec.low)
    ys, xs = np.nonzero(changed)
    assert xs.size > 0, "lesion invisible"
    margin = math.ceil(3 * spec.blur_sigma) + 1  # the detector's blur spreads edges
    assert xs.min() >= box.xmin - margin and xs.max() < box.xmax + margin
    assert ys.min() >= box.ymin - margin and ys.max() < box.ymax + margin
    seen = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    inter = max(0, min(seen[2], box.xmax) - max(seen[0], box.xmin)) * max(
        0, min(seen[3], box.ymax) - max(seen[1], box.ymin)
    )
    union = (
        (seen[2] - seen[0]) * (seen[3] - seen[1])
        + (box.xmax - box.xmin) * (box.ymax - box.ymin)
        - inter
    )
    assert inter / union > 0.9, "box not tight around the drawn lesion"
    long_side = max(spec.rows, spec.cols)
    assert min(box.xmax - box.xmin, box.ymax - box.ymin) >= 0.04 * long_side
    assert 0 <= box.xmin < box.xmax <= spec.cols and 0 <= box.ymin < box.ymax <= spec.rows


def test_several_lesions_keep_their_own_boxes() -> None:
    spec = sample_phantom(
        np.random.default_rng(5),
        lesion_types=["Osteophytes", "Vertebral collapse", "Other lesions"],
        view=LATERAL,
    )
    image, boxes = render_spec(spec)
    for k, box in enumerate(boxes):
        without = compose(spec, rasterize(spec, spec.without_lesion(k).lesions))
        ys, xs = np.nonzero(np.abs(image.astype(np.int32) - without) > 0.04 * spec.high)
        margin = math.ceil(3 * spec.blur_sigma) + 1
        assert xs.min() >= box.xmin - margin and xs.max() < box.xmax + margin
        assert ys.min() >= box.ymin - margin and ys.max() < box.ymax + margin


def test_population_matches_the_task() -> None:
    specs = [sample_phantom(np.random.default_rng([99, i])) for i in range(600)]
    abnormal = [s for s in specs if s.lesions]
    assert 0.42 < len(abnormal) / len(specs) < 0.58
    assert all(1 <= len(s.lesions) <= 3 for s in abnormal)
    kinds = Counter(les.kind for s in specs for les in s.lesions)
    assert set(kinds) == set(CLASS_NAMES) and min(kinds.values()) >= 40
    assert not any(les.kind in LATERAL_ONLY for s in specs if s.view == AP for les in s.lesions)
    assert {s.view for s in specs} == {LATERAL, AP}
    rows = [s.rows for s in specs]
    cols = [s.cols for s in specs]
    assert min(rows) >= 1600 and max(rows) <= 2400
    assert min(cols) >= 1200 and max(cols) <= 1800


def test_forced_lesions_are_validated() -> None:
    with pytest.raises(ValueError):
        sample_phantom(np.random.default_rng(0), lesion_types=["Fracture"])
    with pytest.raises(ValueError):
        sample_phantom(np.random.default_rng(0), lesion_types=["Spondylolisthesis"], view=AP)


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_phantoms(
        tmp_path_factory.mktemp("phantoms"), COUNT, seed=SEED, split="test", progress=False
    )


def test_set_has_vindr_layout(phantom_set: Path) -> None:
    records = load_vindr(phantom_set, "test")
    assert len(records) == COUNT
    assert sorted(p.name for p in (phantom_set / "test_images").iterdir()) == sorted(
        f"{r.image_id}.dicom" for r in records
    )
    for i, rec in enumerate(records):
        item = phantom_item(SEED, "test", i)
        assert rec.image_id == item.image_id and rec.study_id == item.study_id
        assert rec.is_abnormal == bool(item.spec.lesions)
        assert [b.lesion_type for b in rec.boxes] == [les.kind for les in item.spec.lesions]
        assert rec.rad_ids == (item.rad_id,)
    assert any(r.is_abnormal for r in records) and not all(r.is_abnormal for r in records)


def test_dicoms_decode_to_the_rendered_image(phantom_set: Path) -> None:
    syntaxes, photometrics, windowed = set(), set(), set()
    for i, rec in enumerate(load_vindr(phantom_set, "test")):
        ds = pydicom.dcmread(rec.path)
        item = phantom_item(SEED, "test", i)
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (
            16,
            12,
            11,
            0,
        )
        assert ds.Modality == "DX" and ds.SamplesPerPixel == 1
        assert ds.PatientID.startswith("PHANTOM-") and "SYNTHETIC" in str(ds.PatientName)
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        stored = ds.pixel_array
        assert stored.dtype == np.uint16 and stored.max() <= MAX_VALUE
        display, _ = render_spec(item.spec)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            stored = MAX_VALUE - stored  # what a viewer shows after inversion
        np.testing.assert_array_equal(stored, display)  # lossless, same anatomy either way
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
        photometrics.add(ds.PhotometricInterpretation)
        windowed.add("WindowCenter" in ds)
    assert syntaxes == {ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless}
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}
    assert windowed == {True, False}


def test_generation_is_byte_identical_and_prefix_stable(phantom_set: Path, tmp_path: Path) -> None:
    # Two worker processes this time (the fixture ran inline): same bytes regardless.
    again = generate_phantoms(
        tmp_path / "again", 3, seed=SEED, split="test", progress=False, workers=2
    )
    first = load_vindr(again, "test")
    assert len(first) == 3
    for rec in first:
        assert rec.path.read_bytes() == (phantom_set / "test_images" / rec.path.name).read_bytes()
    csv_small = (again / "annotations" / "test.csv").read_text().splitlines()
    csv_full = (phantom_set / "annotations" / "test.csv").read_text().splitlines()
    assert csv_small == csv_full[: len(csv_small)]
    other = phantom_item(SEED + 1, "test", 0)
    assert other.image_id != first[0].image_id


def test_restricted_encodings_keep_the_pixels(phantom_set: Path, tmp_path: Path) -> None:
    fast = generate_phantoms(
        tmp_path / "fast", COUNT, seed=SEED, split="test", progress=False,
        encodings=("explicit", "rle"),
    )
    for rec in load_vindr(fast, "test"):
        ds = pydicom.dcmread(rec.path)
        assert ds.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, RLELossless)
        full = pydicom.dcmread(phantom_set / "test_images" / rec.path.name)
        np.testing.assert_array_equal(ds.pixel_array, full.pixel_array)
    assert (fast / "annotations" / "test.csv").read_bytes() == (
        phantom_set / "annotations" / "test.csv"
    ).read_bytes()
    with pytest.raises(ValueError, match="encodings"):
        generate_phantoms(tmp_path / "bad", 1, seed=SEED, encodings=("jpeg-xl",))
