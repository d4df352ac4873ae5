"""Decode a dataset's DICOMs once into canonical images, with the gateway's own code.

Train/serve parity by construction: the images a model is trained on come from
``shared.dicom.decode_dicom``, the same function that makes what it sees in service.
Results are cached as PNG (lossless) next to a JSON of their geometry, so several
members and the detector share one decoding pass.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from training.datasets import ImageRecord


@dataclass(frozen=True)
class CanonicalEntry:
    image_id: str
    png: str
    width: int
    height: int
    original_width: int
    original_height: int
    scale_x: float
    scale_y: float

    def load(self) -> np.ndarray:
        image = cv2.imread(self.png, cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise FileNotFoundError(self.png)
        return image


def _decode_one(args: tuple[str, str, str, int]) -> CanonicalEntry:
    image_id, dicom_path, cache_dir, long_side = args
    from shared.dicom import decode_dicom

    cv2.setNumThreads(1)
    canonical, _ = decode_dicom(Path(dicom_path).read_bytes(), long_side)
    png = str(Path(cache_dir) / f"{image_id}.png")
    cv2.imwrite(png, canonical.pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    height, width = canonical.pixels.shape
    return CanonicalEntry(
        image_id,
        png,
        width,
        height,
        canonical.original_columns,
        canonical.original_rows,
        canonical.scale_x,
        canonical.scale_y,
    )


def canonical_images(
    records: list[ImageRecord], cache_dir: Path, long_side: int = 1024, progress: bool = True
) -> dict[str, CanonicalEntry]:
    """``image_id -> CanonicalEntry`` for every record, decoding only what is not cached."""
    from tqdm import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    index_path = cache_dir / f"index-{long_side}.json"
    known: dict[str, CanonicalEntry] = {}
    if index_path.is_file():
        known = {
            key: CanonicalEntry(**value)
            for key, value in json.loads(index_path.read_text()).items()
        }
    todo = [
        (r.image_id, str(r.path), str(cache_dir), long_side)
        for r in records
        if r.image_id not in known or not Path(known[r.image_id].png).is_file()
    ]
    if todo:
        workers = min(os.cpu_count() or 1, max(1, len(todo) // 8))
        bar = tqdm(total=len(todo), desc="canonical images", unit="img", disable=not progress)
        if workers <= 1:
            for job in todo:
                entry = _decode_one(job)
                known[entry.image_id] = entry
                bar.update()
        else:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                for entry in pool.map(_decode_one, todo, chunksize=4):
                    known[entry.image_id] = entry
                    bar.update()
        bar.close()
        index_path.write_text(json.dumps({k: asdict(v) for k, v in known.items()}))
    return {r.image_id: known[r.image_id] for r in records}


@dataclass(frozen=True)
class LabelledImages:
    """Canonical images with their image labels and lesion boxes, ready for training.

    ``boxes[i]`` is a ``[k, 4]`` array of ``x1, y1, x2, y2`` in canonical pixels: the
    classifier uses them as an auxiliary lesion map (see ``training.train_classifier``).
    """

    entries: list[CanonicalEntry]
    labels: np.ndarray
    boxes: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.entries)


def labelled_images(
    records: list[ImageRecord], entries: dict[str, CanonicalEntry]
) -> LabelledImages:
    """Pair each record with its canonical image; boxes scaled into that image."""
    chosen = [entries[r.image_id] for r in records]
    boxes = [
        np.array(
            [
                (b.xmin * e.scale_x, b.ymin * e.scale_y, b.xmax * e.scale_x, b.ymax * e.scale_y)
                for b in r.boxes
            ],
            dtype=np.float64,
        ).reshape(-1, 4)
        for r, e in zip(records, chosen, strict=True)
    ]
    labels = np.array([r.is_abnormal for r in records], dtype=np.float64)
    return LabelledImages(chosen, labels, boxes)
