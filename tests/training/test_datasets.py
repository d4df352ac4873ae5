"""VinDr-SpineXR layout: the loader, the CSV round-trip and the stratified split."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.datasets import (
    CLASS_NAMES,
    NO_FINDING,
    Box,
    ImageRecord,
    canonical_lesion_type,
    choose_split,
    load_vindr,
    read_annotations_csv,
    split_train_val,
    write_annotations_csv,
)

# Rows as the real CSV has them: its own column order, one image read by two radiologists
# (one of whom saw nothing), the dataset's own "Spondylolysthesis" spelling, float boxes.
REAL_STYLE_TRAIN = """image_id,study_id,series_id,rad_id,lesion_type,xmin,ymin,xmax,ymax
img_a,st_1,se_1,rad1,Osteophytes,712.6,961.3,786.5,1011.7
img_a,st_1,se_1,rad1,Disc space narrowing,700,1000,900,1060
img_a,st_1,se_1,rad3,Osteophytes,715,958,790,1015
img_b,st_1,se_2,rad2,No finding,,,,
img_c,st_2,se_3,rad1,Spondylolysthesis,100,200,400,500
img_d,st_3,se_4,rad2,No finding,,,,
img_d,st_3,se_4,rad3,No finding,,,,
img_e,st_4,se_5,rad2,No finding,,,,
img_e,st_4,se_5,rad1,Surgical implant,10,20,30,40
"""


def _vindr_tree(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "train.csv").write_text(REAL_STYLE_TRAIN)
    (root / "annotations" / "test.csv").write_text(
        "study_id,series_id,image_id,rad_id,lesion_type,xmin,ymin,xmax,ymax\n"
        "st_9,se_9,img_t,rad2,No finding,,,,\n"
    )
    for split, ids in (("train", "abcde"), ("test", "t")):
        (root / f"{split}_images").mkdir()
        for i in ids:
            (root / f"{split}_images" / f"img_{i}.dicom").write_bytes(b"")
    return root


def test_load_vindr_reads_real_layout(tmp_path: Path) -> None:
    root = _vindr_tree(tmp_path / "vindr")
    records = load_vindr(root, "train")
    by_id = {r.image_id: r for r in records}
    assert [r.image_id for r in records] == ["img_a", "img_b", "img_c", "img_d", "img_e"]
    a = by_id["img_a"]
    assert a.is_abnormal and len(a.boxes) == 3 and a.rad_ids == ("rad1", "rad3")
    assert a.boxes[0] == Box("Osteophytes", 712.6, 961.3, 786.5, 1011.7, rad_id="rad1")
    assert a.path == root / "train_images" / "img_a.dicom"
    assert (a.study_id, a.series_id) == ("st_1", "se_1")
    assert not by_id["img_b"].is_abnormal and by_id["img_b"].boxes == []
    assert by_id["img_c"].boxes[0].lesion_type == "Spondylolisthesis"
    assert by_id["img_c"].boxes[0].class_id == CLASS_NAMES.index("Spondylolisthesis")
    assert by_id["img_d"].rad_ids == ("rad2", "rad3") and not by_id["img_d"].is_abnormal
    # One reader saw an implant, another nothing: abnormal (any lesion row).
    assert by_id["img_e"].is_abnormal
    test = load_vindr(root, "test")
    assert [r.image_id for r in test] == ["img_t"]
    assert test[0].path == root / "test_images" / "img_t.dicom"


def test_load_vindr_missing_files_fail_loudly(tmp_path: Path) -> None:
    root = _vindr_tree(tmp_path / "vindr")
    (root / "train_images" / "img_c.dicom").unlink()
    with pytest.raises(FileNotFoundError, match="img_c"):
        load_vindr(root, "train")
    assert len(load_vindr(root, "train", check_files=False)) == 5
    with pytest.raises(FileNotFoundError):
        load_vindr(root, "val")


def test_lesion_without_box_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("image_id,lesion_type,xmin,ymin,xmax,ymax\nx,Osteophytes,1,2,,\n")
    with pytest.raises(ValueError, match="without a box"):
        read_annotations_csv(path, tmp_path)


def test_csv_round_trip(tmp_path: Path) -> None:
    images = tmp_path / "train_images"
    records = [
        ImageRecord(
            "i1",
            images / "i1.dicom",
            [
                Box("Osteophytes", 1.5, 2.25, 100.125, 200.0, "rad1"),
                Box("Other lesions", 0.0, 0.0, 5.0, 6.0, "rad2"),
            ],
            "s1",
            "se1",
            ("rad1", "rad2", "rad3"),
        ),
        ImageRecord("i2", images / "i2.dicom", [], "s1", "se2", ("rad2",)),
        ImageRecord(
            "i3",
            images / "i3.dicom",
            [Box("Surgical implant", 10, 20, 30, 40, "rad1")],
            "s2",
            "se3",
            ("rad1",),
        ),
    ]
    path = write_annotations_csv(tmp_path / "annotations" / "train.csv", records)
    text = path.read_text().splitlines()
    assert text[0] == "study_id,series_id,image_id,rad_id,lesion_type,xmin,ymin,xmax,ymax"
    assert "s1,se2,i2,rad2,No finding,,,," in text
    assert "s1,se1,i1,rad3,No finding,,,," in text  # a reader who drew nothing keeps a row
    back = read_annotations_csv(path, images)
    assert back == records
    write_annotations_csv(tmp_path / "again.csv", back)
    assert (tmp_path / "again.csv").read_text() == path.read_text()


def test_canonical_names() -> None:
    assert canonical_lesion_type(" disc  SPACE narrowing ") == "Disc space narrowing"
    assert canonical_lesion_type("Spondylolysthesis") == "Spondylolisthesis"
    assert canonical_lesion_type("Fracture") == "Other lesions"
    assert canonical_lesion_type("no finding") == NO_FINDING
    assert canonical_lesion_type("Something new") == "Something new"


def _records(n: int) -> list[ImageRecord]:
    out = []
    for i in range(n):
        boxes = [Box("Osteophytes", 0, 0, 1, 1)] if i % 3 == 0 else []
        out.append(ImageRecord(f"im{i}", Path(f"{i}.dicom"), boxes, study_id=f"st{i // 2}"))
    return out


def test_split_is_stratified_grouped_and_seeded() -> None:
    records = _records(300)
    train, val = split_train_val(records, 0.2, seed=5)
    assert len(train) + len(val) == 300
    assert {r.image_id for r in train}.isdisjoint(r.image_id for r in val)
    assert abs(len(val) - 60) <= 2
    rate = sum(r.is_abnormal for r in records) / len(records)
    assert sum(r.is_abnormal for r in val) / len(val) == pytest.approx(rate, abs=0.05)
    assert {r.study_id for r in train}.isdisjoint(r.study_id for r in val)
    assert split_train_val(records, 0.2, seed=5) == (train, val)
    assert split_train_val(records, 0.2, seed=6) != (train, val)
    assert split_train_val(records, 0.0, seed=5) == (records, [])
    with pytest.raises(ValueError):
        split_train_val(records, 1.0, seed=5)


def test_evaluate_uses_the_only_split_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`spine phantoms --out X` (train) then `spine evaluate --data X`: no --split needed."""
    import training.evaluate as evaluation

    root = _vindr_tree(tmp_path / "vindr")
    (root / "annotations" / "test.csv").unlink()
    seen: list[list[str]] = []

    async def fake_predict(records: list, *_args: object) -> list:
        seen.append([r.image_id for r in records])
        raise KeyboardInterrupt  # stop before any report: the split is what is tested

    monkeypatch.setattr(evaluation, "_predict_via_gateway", fake_predict)
    with pytest.raises(KeyboardInterrupt):
        evaluation.evaluate(root, tmp_path / "out", gateway="http://127.0.0.1:9")
    assert seen == [["img_a", "img_b", "img_c", "img_d", "img_e"]]
    assert choose_split(root) == "train"
    with pytest.raises(FileNotFoundError, match=r"test\.csv \(splits present: train\)"):
        load_vindr(root, "test")


def test_evaluate_names_the_splits_when_it_cannot_choose(tmp_path: Path) -> None:
    from training.evaluate import evaluate

    root = _vindr_tree(tmp_path / "vindr")
    assert choose_split(root) == "test"  # test present: the default, as before
    (root / "annotations" / "test.csv").rename(root / "annotations" / "val.csv")
    with pytest.raises(FileNotFoundError, match=r"several splits \(train, val\).*--split"):
        evaluate(root, tmp_path / "out", gateway="http://127.0.0.1:9")
    assert choose_split(root, "val") == "val"
