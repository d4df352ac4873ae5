"""Phantom sets on disk: DX DICOMs in the archive's mix of encodings plus the VinDr CSV.

Everything about the index-th file is a function of (seed, split, index), so a
set is byte-identical across runs and worker counts and can be built in parallel.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import FileDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from training.datasets import ImageRecord, write_annotations_csv
from training.dicom_writer import DX_FOR_PRESENTATION, xray_dataset
from training.phantoms.image import render_spec
from training.phantoms.spec import LATERAL, MAX_VALUE, PhantomSpec, sample_phantom

ENCODINGS = ("explicit", "jpeg2000", "rle")
_TRANSFER_SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "jpeg2000": JPEG2000Lossless,
    "rle": RLELossless,
}


@dataclass(frozen=True)
class PhantomItem:
    """Identity and encoding choices of the index-th phantom of a (seed, split) set."""

    index: int
    image_id: str
    study_id: str
    series_id: str
    rad_id: str
    spec: PhantomSpec
    encoding: str  # one of ENCODINGS
    monochrome1: bool
    windowed: bool


def _hex_id(seed: int, split: str, index: int, what: str) -> str:
    return hashlib.sha256(f"spine-phantom/{seed}/{split}/{index}/{what}".encode()).hexdigest()[:32]


def phantom_item(seed: int, split: str, index: int) -> PhantomItem:
    """Everything about one phantom, from (seed, split, index) alone (order-independent)."""
    key = zlib.crc32(split.encode())
    rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, key, index]))
    spec = sample_phantom(rng)
    return PhantomItem(
        index=index,
        image_id=_hex_id(seed, split, index, "image"),
        study_id=_hex_id(seed, split, index, "study"),
        series_id=_hex_id(seed, split, index, "series"),
        rad_id=f"rad{int(rng.integers(1, 4))}",
        spec=spec,
        encoding=ENCODINGS[int(rng.choice(3, p=[0.34, 0.33, 0.33]))],
        monochrome1=bool(rng.random() < 0.4),
        windowed=bool(rng.random() < 0.5),
    )


def _uid(item: PhantomItem, seed: int, split: str, what: str) -> str:
    return str(generate_uid(entropy_srcs=[f"spine-phantom/{seed}/{split}/{item.index}/{what}"]))


def phantom_dataset(
    item: PhantomItem, display: NDArray[np.uint16], seed: int, split: str
) -> FileDataset:
    """A DX DICOM dataset for one phantom (pixel data encoded as item.encoding says).

    MONOCHROME1 files store 4095 - display, so that a viewer's inversion shows
    the same anatomy; their window centre is mirrored the same way.
    """
    stored = (MAX_VALUE - display).astype(np.uint16) if item.monochrome1 else display
    lateral = item.spec.view == LATERAL
    attributes: dict[str, object] = {
        "SpecificCharacterSet": "ISO_IR 100",
        "ImageType": ["DERIVED", "SECONDARY"],
        "StudyInstanceUID": _uid(item, seed, split, "study"),
        "SeriesInstanceUID": _uid(item, seed, split, "series"),
        **dict.fromkeys(("StudyDate", "SeriesDate", "ContentDate"), "20200101"),
        **dict.fromkeys(("StudyTime", "SeriesTime", "ContentTime"), "120000"),
        "AccessionNumber": "",
        "Modality": "DX",
        "PresentationIntentType": "FOR PRESENTATION",
        "Manufacturer": "spine-lesion-service synthetic phantom",
        "StudyDescription": "SYNTHETIC PHANTOM - NOT A PATIENT",
        "SeriesDescription": f"L-SPINE {'LAT' if lateral else 'AP'} (synthetic)",
        "PatientName": "PHANTOM^SYNTHETIC",
        "PatientID": f"PHANTOM-{item.study_id[:12].upper()}",
        "PatientBirthDate": "",
        "PatientSex": "O",
        "BodyPartExamined": "LSPINE",
        "ViewPosition": "LL" if lateral else "AP",
        "StudyID": "1",
        "SeriesNumber": 1,
        "InstanceNumber": 1,
        "BurnedInAnnotation": "NO",
        "ImagerPixelSpacing": [0.15, 0.15],
        "PixelSpacing": [0.15, 0.15],
        "LossyImageCompression": "00",
    }
    if item.windowed:
        lo, hi = (float(q) for q in np.percentile(display[::8, ::8], [0.5, 99.5]))
        center = (lo + hi) / 2
        attributes["WindowCenter"] = round(MAX_VALUE - center if item.monochrome1 else center, 1)
        attributes["WindowWidth"] = round(max(hi - lo, 64.0) * 1.1, 1)
        attributes["VOILUTFunction"] = "LINEAR"
    return xray_dataset(
        stored,
        sop_instance_uid=_uid(item, seed, split, "sop"),
        attributes=attributes,
        photometric="MONOCHROME1" if item.monochrome1 else "MONOCHROME2",
        bits_stored=12,
        transfer_syntax=_TRANSFER_SYNTAXES[item.encoding],
        sop_class_uid=DX_FOR_PRESENTATION,
    )


def _write_one(args: tuple[Path, int, str, int, tuple[str, ...]]) -> ImageRecord:
    images_dir, seed, split, index, encodings = args
    item = phantom_item(seed, split, index)
    if item.encoding not in encodings:  # same pixels, another lossless syntax
        item = replace(item, encoding=encodings[index % len(encodings)])
    display, boxes = render_spec(item.spec)
    path = images_dir / f"{item.image_id}.dicom"
    phantom_dataset(item, display, seed, split).save_as(path, enforce_file_format=True)
    return ImageRecord(
        image_id=item.image_id,
        path=path,
        boxes=[replace(b, rad_id=item.rad_id) for b in boxes],
        study_id=item.study_id,
        series_id=item.series_id,
        rad_ids=(item.rad_id,),
    )


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already


def generate_phantoms(
    out_dir: Path,
    count: int,
    seed: int,
    split: str = "train",
    progress: bool = True,
    workers: int | None = None,
    encodings: tuple[str, ...] = ENCODINGS,
) -> Path:
    """Write `count` phantoms as `out_dir/<split>_images/<id>.dicom` + `annotations/<split>.csv`.

    Output is a function of (seed, split, index) only, so it is byte-identical
    across runs and worker counts, and a smaller count is a prefix of a larger
    one.  workers defaults to the CPU count (processes; small sets run inline).
    encodings restricts the transfer syntaxes (all lossless, so the pixels are the
    same): training sets skip JPEG 2000, whose encode and decode cost most of the time.
    """
    from tqdm import tqdm

    if count < 0:
        raise ValueError("count must be >= 0")
    if not encodings or set(encodings) - set(ENCODINGS):
        raise ValueError(f"encodings must be a non-empty subset of {ENCODINGS}")
    out_dir = Path(out_dir)
    images_dir = out_dir / f"{split}_images"
    images_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(images_dir, seed, split, i, tuple(encodings)) for i in range(count)]
    # Spawning costs ~1 s per process: small sets run inline unless workers is given.
    n_workers = min(workers, count) if workers else min(os.cpu_count() or 1, max(1, count // 4))
    bar = tqdm(total=count, desc=f"phantoms {split}", unit="img", disable=not progress)
    records: list[ImageRecord] = []
    try:
        if n_workers <= 1:
            for job in jobs:
                records.append(_write_one(job))
                bar.update()
        else:
            ctx = get_context("spawn")
            with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker) as pool:
                for rec in pool.map(_write_one, jobs, chunksize=2):
                    records.append(rec)
                    bar.update()
    finally:
        bar.close()
    write_annotations_csv(out_dir / "annotations" / f"{split}.csv", records)
    return out_dir
