"""VinDr-SpineXR folder layout: read and write the annotation CSV, list images, split.

The same code reads the real credentialed dataset and the phantom sets that
`training.phantoms` writes, so training and evaluation never care which one
they were given.  Layout::

    root/train_images/<image_id>.dicom     root/annotations/train.csv
    root/test_images/<image_id>.dicom      root/annotations/test.csv

One CSV row per box and radiologist; a normal image has one "No finding" row
with empty box cells.  Only the standard library and numpy are used here.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: The seven detection classes of VinDr-SpineXR, in the id order the detector uses.
CLASS_NAMES: tuple[str, ...] = (
    "Osteophytes",
    "Surgical implant",
    "Disc space narrowing",
    "Spondylolisthesis",
    "Foraminal stenosis",
    "Vertebral collapse",
    "Other lesions",
)
NO_FINDING = "No finding"
CSV_COLUMNS: tuple[str, ...] = (
    "study_id",
    "series_id",
    "image_id",
    "rad_id",
    "lesion_type",
    "xmin",
    "ymin",
    "xmax",
    "ymax",
)

# The published CSV spells one class "Spondylolysthesis"; the paper folds the rarer
# findings of its 13-type labelling into "Other lesions".
_ALIASES: dict[str, str] = {
    "spondylolysthesis": "Spondylolisthesis",
    "ankylosis": "Other lesions",
    "enthesophytes": "Other lesions",
    "fracture": "Other lesions",
    "sclerotic lesion": "Other lesions",
    "subchondral sclerosis": "Other lesions",
    "foreign body": "Other lesions",
}
_CANONICAL: dict[str, str] = {name.lower(): name for name in (*CLASS_NAMES, NO_FINDING)}


def canonical_lesion_type(name: str) -> str:
    """Map a CSV lesion name onto our spelling (case, known aliases); unknown names pass."""
    key = " ".join(name.strip().split()).lower()
    return _CANONICAL.get(key) or _ALIASES.get(key) or name.strip()


@dataclass(frozen=True)
class Box:
    """One annotated lesion in original pixel coordinates (x to the right, y down)."""

    lesion_type: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    rad_id: str = ""

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.xmin, self.ymin, self.xmax, self.ymax)

    @property
    def class_id(self) -> int:
        """Index into CLASS_NAMES (ValueError for a name outside the seven classes)."""
        return CLASS_NAMES.index(self.lesion_type)


@dataclass
class ImageRecord:
    """Everything training and evaluation need to know about one image."""

    image_id: str
    path: Path
    boxes: list[Box] = field(default_factory=list)
    study_id: str = ""
    series_id: str = ""
    rad_ids: tuple[str, ...] = ()

    @property
    def is_abnormal(self) -> bool:
        """Abnormal iff any reader drew a lesion box (the paper's image-level label)."""
        return bool(self.boxes)


# --------------------------------------------------------------------------- CSV


def _fmt(value: float) -> str:
    """Coordinates are written with at most 3 decimals; integers stay integers."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def annotation_rows(records: Iterable[ImageRecord]) -> list[dict[str, str]]:
    """CSV rows: one per box, plus a "No finding" row for each reader who drew none."""
    rows: list[dict[str, str]] = []
    for rec in records:
        ids = {"study_id": rec.study_id, "series_id": rec.series_id, "image_id": rec.image_id}
        for box in rec.boxes:
            rows.append(
                {
                    **ids,
                    "rad_id": box.rad_id,
                    "lesion_type": box.lesion_type,
                    "xmin": _fmt(box.xmin),
                    "ymin": _fmt(box.ymin),
                    "xmax": _fmt(box.xmax),
                    "ymax": _fmt(box.ymax),
                }
            )
        boxed = {box.rad_id for box in rec.boxes}
        readers = rec.rad_ids or (() if rec.boxes else ("",))
        for rad in readers:
            if rad not in boxed:
                rows.append(
                    {**ids, "rad_id": rad, "lesion_type": NO_FINDING}
                    | {k: "" for k in ("xmin", "ymin", "xmax", "ymax")}
                )
    return rows


def write_annotations_csv(path: Path, records: Iterable[ImageRecord]) -> Path:
    """Write records in the VinDr-SpineXR annotation format (creates parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(annotation_rows(records))
    return path


def _coord(row: dict[str, str], key: str) -> float | None:
    text = (row.get(key) or "").strip()
    if text == "" or text.lower() == "nan":
        return None
    return float(text)


def read_annotations_csv(path: Path, images_dir: Path, suffix: str = ".dicom") -> list[ImageRecord]:
    """Group CSV rows by image (file order kept); boxes from every reader are kept.

    Columns are found by header name, so the column order of the real CSV does
    not matter.  A row with a lesion name but no coordinates is rejected: it
    would silently turn an abnormal image into a box-less one.
    """
    path = Path(path)
    records: dict[str, ImageRecord] = {}
    rads: dict[str, list[str]] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = {"image_id", "lesion_type"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            image_id = (row.get("image_id") or "").strip()
            if not image_id:
                raise ValueError(f"{path}:{line}: empty image_id")
            rec = records.get(image_id)
            if rec is None:
                rec = records[image_id] = ImageRecord(
                    image_id=image_id,
                    path=Path(images_dir) / f"{image_id}{suffix}",
                    study_id=(row.get("study_id") or "").strip(),
                    series_id=(row.get("series_id") or "").strip(),
                )
                rads[image_id] = []
            rad = (row.get("rad_id") or "").strip()
            if rad not in rads[image_id]:
                rads[image_id].append(rad)
            lesion = canonical_lesion_type(row.get("lesion_type") or "")
            if lesion == NO_FINDING:
                continue
            coords = [_coord(row, k) for k in ("xmin", "ymin", "xmax", "ymax")]
            if any(c is None for c in coords):
                raise ValueError(f"{path}:{line}: lesion {lesion!r} without a box")
            x0, y0, x1, y1 = (float(c) for c in coords)  # type: ignore[arg-type]
            rec.boxes.append(
                Box(lesion, min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1), rad_id=rad)
            )
    for image_id, rec in records.items():
        rec.rad_ids = tuple(rads[image_id])
    return list(records.values())


DEFAULT_EVAL_SPLIT = "test"


def available_splits(root: Path) -> list[str]:
    """The splits with an annotation CSV: ``root/annotations/<split>.csv``, sorted."""
    return sorted(p.stem for p in (Path(root) / "annotations").glob("*.csv"))


def choose_split(root: Path, split: str | None = None) -> str:
    """``split`` if given; else ``test`` if present, else the only split there is.

    ``spine phantoms`` writes ``train`` by default, so a folder made by it has one split
    and evaluating it needs no ``--split``; where several exist and none is ``test``,
    the error names them instead of guessing.
    """
    if split is not None:
        return split
    present = available_splits(root)
    if DEFAULT_EVAL_SPLIT in present or not present:
        return DEFAULT_EVAL_SPLIT  # none at all: load_vindr says what is missing
    if len(present) == 1:
        return present[0]
    raise FileNotFoundError(
        f"{Path(root) / 'annotations'} has several splits ({', '.join(present)}) and no "
        f"{DEFAULT_EVAL_SPLIT}.csv; choose one with --split"
    )


def load_vindr(root: Path, split: str, check_files: bool = True) -> list[ImageRecord]:
    """Read `root/annotations/<split>.csv` and point each record at `<split>_images/<id>.dicom`.

    With check_files, a missing image is an error naming the first few: a
    half-downloaded dataset should fail loudly, not evaluate on a subset.
    """
    root = Path(root)
    csv_path = root / "annotations" / f"{split}.csv"
    if not csv_path.is_file():
        present = available_splits(root)
        there = f"splits present: {', '.join(present)}" if present else "no split present"
        raise FileNotFoundError(f"no annotation file {csv_path} ({there})")
    records = read_annotations_csv(csv_path, root / f"{split}_images")
    if check_files:
        missing = [r.path for r in records if not r.path.is_file()]
        if missing:
            head = ", ".join(str(p) for p in missing[:3])
            raise FileNotFoundError(
                f"{len(missing)} image file(s) listed in {csv_path} missing: {head}"
            )
    return records


# ------------------------------------------------------------------------- split


def split_train_val(
    records: Sequence[ImageRecord], val_fraction: float, seed: int
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Seeded split stratified by the abnormal label, keeping each study on one side.

    Grouping by study_id stops the AP and lateral views of one patient from
    landing on both sides (leakage that inflates validation scores); records
    without a study_id are their own group.  Input order is kept on both sides.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    groups: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        groups.setdefault(rec.study_id or f"\0{rec.image_id}", []).append(i)
    strata: dict[bool, list[str]] = {False: [], True: []}
    for key, idx in groups.items():
        strata[any(records[i].is_abnormal for i in idx)].append(key)
    rng = random.Random(seed)
    val_idx: set[int] = set()
    for label in (False, True):
        keys = sorted(strata[label])
        rng.shuffle(keys)
        n_images = sum(len(groups[k]) for k in keys)
        target = round(n_images * val_fraction)
        taken = 0
        for key in keys:
            if taken >= target:
                break
            val_idx.update(groups[key])
            taken += len(groups[key])
    train = [r for i, r in enumerate(records) if i not in val_idx]
    val = [r for i, r in enumerate(records) if i in val_idx]
    return train, val
