"""The benchmark's uploads: DX radiographs like VinDr-SpineXR's, made at run time.

A smooth synthetic radiograph with noise, 12 bits stored, DX storage class, written by
the project's one DICOM writer (``training.dicom_writer``). The tests' ``tests/factories``
builds its DICOMs from the same pixel generator. Nothing binary is committed.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from training.dicom_writer import DX_FOR_PRESENTATION, file_bytes, xray_dataset


@dataclass(frozen=True)
class Upload:
    """One file the load generator sends."""

    name: str
    data: bytes


def radiograph_pixels(rows: int, cols: int, bits: int = 12, seed: int = 0) -> np.ndarray:
    """A smooth synthetic radiograph (gradient + bright column + noise), unsigned ints."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    image = 0.25 + 0.35 * (y / rows) + 0.3 * np.exp(-(((x - cols / 2) / (cols / 8)) ** 2))
    image += 0.04 * rng.standard_normal((rows, cols)).astype(np.float32)
    top = (1 << bits) - 1
    return np.clip(image * top, 0, top).astype(np.uint16)


def make_dx_dicom(
    pixels: np.ndarray, *, photometric: str = "MONOCHROME2", compress: bool = True,
    bits_stored: int = 12, seed: int = 0,
) -> bytes:
    """A single-frame DX DICOM file (JPEG 2000 lossless or explicit VR little endian)."""
    return file_bytes(xray_dataset(
        pixels,
        sop_instance_uid=generate_uid(entropy_srcs=[f"bench-{seed}-{compress}"]),
        attributes={
            "StudyInstanceUID": generate_uid(entropy_srcs=[f"bench-study-{seed}"]),
            "SeriesInstanceUID": generate_uid(entropy_srcs=[f"bench-series-{seed}"]),
            "PatientID": f"BENCH-{seed:04d}",
            "StudyDate": datetime.date(2026, 1, 28).strftime("%Y%m%d"),
            "Modality": "DX",
        },
        photometric=photometric,
        bits_stored=bits_stored,
        transfer_syntax=JPEG2000Lossless if compress else ExplicitVRLittleEndian,
        sop_class_uid=DX_FOR_PRESENTATION,
    ))


def bench_uploads(
    rows: int = 2455, cols: int = 1606, kinds: tuple[str, ...] = ("j2k", "raw")
) -> list[Upload]:
    """VinDr-sized DX files: ``j2k`` = JPEG 2000 lossless MONOCHROME2 and MONOCHROME1
    (two files), ``raw`` = uncompressed MONOCHROME2 (one file)."""
    uploads: list[Upload] = []
    if "j2k" in kinds:
        for seed, photometric in ((1, "MONOCHROME2"), (2, "MONOCHROME1")):
            pixels = radiograph_pixels(rows, cols, seed=seed)
            if photometric == "MONOCHROME1":
                pixels = 4095 - pixels
            uploads.append(Upload(
                f"j2k-{photometric.lower()}-{cols}x{rows}",
                make_dx_dicom(pixels, photometric=photometric, compress=True, seed=seed),
            ))
    if "raw" in kinds:
        pixels = radiograph_pixels(rows, cols, seed=3)
        uploads.append(Upload(f"raw-{cols}x{rows}", make_dx_dicom(pixels, compress=False, seed=3)))
    if not uploads:
        raise ValueError(f"no upload kinds among {kinds}; use j2k and/or raw")
    return uploads
