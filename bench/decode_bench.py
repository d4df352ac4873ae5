"""DICOM -> canonical image: the plain pydicom path vs shared.dicom.decode_dicom.

    python -m bench.decode_bench [--repeat 7] [--long-side 1024]

Generates (nothing committed) a 5-megapixel 12-bit DX phantom, uncompressed
and as JPEG 2000 lossless (pylibjpeg-openjpeg's encoder), then times, in one
run, per file:

* baseline: what most open inference services do: ``dcmread``,
  ``pixel_array``, ``apply_modality_lut``, ``apply_voi_lut`` (float64),
  min-max in float, ``cv2.resize(INTER_AREA)``;
* ours: ``decode_dicom`` (exact: the default);
* for JPEG 2000 also ``decode_dicom(reduced_j2k=True)`` (reduced-resolution
  decode), with its deviation from the full-resolution rendering.

It prints the best-of-N time of each, the ratio, and the largest grey-level
difference between the baseline's and our canonical image. Timings are
wall-clock on whatever machine runs it; only the ratios travel.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import JPEG2000Lossless, generate_uid

from shared.dicom import decode_dicom
from training.dicom_writer import xray_dataset


def phantom(rows: int = 2560, columns: int = 2048, bits: int = 12, seed: int = 3) -> np.ndarray:
    """A DX-like 12-bit image: body gradient, bright vertebrae, collimation, metal, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    img = 0.2 + 0.5 * np.exp(-(((x - columns / 2) / (columns * 0.3)) ** 2)) + 0.05 * y / rows
    for k in range(9):
        cy = rows * (0.08 + 0.1 * k)
        img += 0.2 * ((np.abs(y - cy) < rows * 0.035) & (np.abs(x - columns / 2) < columns * 0.08))
    img[(np.abs(x - columns * 0.6) < 6) & (y > rows * 0.3) & (y < rows * 0.6)] = 0.97
    img[:, : columns // 20] = 0.02
    img += rng.normal(0, 0.008, img.shape).astype(np.float32)
    top = (1 << bits) - 1
    return np.clip(np.rint(img * top), 0, top).astype(np.uint16)


def dx_dataset(pixels: np.ndarray) -> Dataset:
    return xray_dataset(
        pixels,
        sop_instance_uid=generate_uid(),
        attributes={
            "Modality": "DX",
            "RescaleSlope": 1,
            "RescaleIntercept": 0,
            "RescaleType": "US",
            "WindowCenter": 2000,
            "WindowWidth": 3000,
        },
    )


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def baseline(data: bytes, long_side: int) -> np.ndarray:
    """The plain pydicom path, as a typical inference service writes it."""
    ds = pydicom.dcmread(io.BytesIO(data))
    arr = ds.pixel_array
    arr = apply_modality_lut(arr, ds)
    arr = apply_voi_lut(arr, ds)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = arr.max() - arr
    arr = arr.astype(np.float64)
    arr = (arr - arr.min()) / (arr.max() - arr.min())
    image = (arr * 255).astype(np.uint8)
    h, w = image.shape
    s = min(1.0, long_side / max(h, w))
    return cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)


def best_of(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(best, median) seconds over `repeat` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def diff_stats(a: np.ndarray, b: np.ndarray) -> str:
    """Largest grey-level difference, mean difference, share of pixels off by more than 1."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return f"{int(d.max()):>5} {d.mean():>6.2f} {100 * (d > 1).mean():>6.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--long-side", type=int, default=1024)
    args = parser.parse_args()
    n, long_side = args.repeat, args.long_side

    pixels = phantom()
    ds = dx_dataset(pixels)
    files = {"uncompressed": to_bytes(ds)}
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    files["jpeg2000"] = to_bytes(ds)

    print(
        f"decode_bench: {pixels.shape[1]}x{pixels.shape[0]} 12-bit DX "
        f"({pixels.size / 1e6:.1f} MP), long side {long_side}, best of {n}"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}, pydicom {pydicom.__version__}, cv2 {cv2.__version__}"
    )
    print(
        f"{'file':<14}{'path':<22}{'best ms':>9}{'median ms':>11}{'speed-up':>10}"
        "   diff to baseline: max   mean  >1 level"
    )
    for name, data in files.items():
        ref = baseline(data, long_side)
        base_best, base_med = best_of(lambda d=data: baseline(d, long_side), n)
        print(
            f"{name:<14}{'pydicom baseline':<22}{base_best * 1e3:>9.1f}{base_med * 1e3:>11.1f}"
            f"{'1.0x':>10}"
        )
        variants: list[tuple[str, dict[str, bool]]] = [("decode_dicom", {})]
        if name == "jpeg2000":
            variants.append(("decode_dicom reduced", {"reduced_j2k": True}))
        for label, kwargs in variants:
            ours = decode_dicom(data, long_side, **kwargs)[0].pixels
            best, med = best_of(lambda d=data, k=kwargs: decode_dicom(d, long_side, **k), n)
            print(
                f"{name:<14}{label:<22}{best * 1e3:>9.1f}{med * 1e3:>11.1f}"
                f"{base_best / best:>9.1f}x{'':>18}{diff_stats(ours, ref)}"
            )


if __name__ == "__main__":
    main()
