"""Build the DICOM test corpus from real files and real tools (nothing is committed).

Sources: pydicom's own test files and ``pydicom-data`` (real CR radiographs
RG1/RG3, MONOCHROME1; a signed CT with Pixel Padding), plus a synthetic 12-bit
DX phantom. Encodings come from the tools hospitals' systems use:
DCMTK (dcmconv, dcmcrle, dcmcjpeg, dcmcjpls), GDCM (gdcmconv) and OpenJPH
(ojph_compress, for HTJ2K). Reference decodes use *other* decoders than the
service (DCMTK for JPEG/JPEG-LS/RLE, GDCM for JPEG 2000, OpenJPH for HTJ2K)
so a decoder bug cannot hide in both sides of a comparison.

Also used by ``tests/dicom/make_corpus.py`` (write the corpus to a folder,
regenerate ``shared/dicom/probes.py``).
"""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    HTJ2K,
    UID,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    generate_uid,
)

# Synthetic PHI planted in every file we make: must never show up in messages or logs.
SENTINEL_NAME = "Sentinel^Zyxwvut"
SENTINEL_ID = "PHI-SENTINEL-4711"
SENTINEL_BIRTH = "19010203"
SENTINELS = (SENTINEL_NAME, "Zyxwvut", SENTINEL_ID, SENTINEL_BIRTH)

TOOLS = (
    "dcmconv",
    "dcmcrle",
    "dcmcjpeg",
    "dcmcjpls",
    "dcmdjpeg",
    "dcmdjpls",
    "dcmdrle",
    "gdcmconv",
)


@dataclass(frozen=True)
class Encoding:
    """One transfer syntax and how to make (and independently decode) it."""

    key: str
    uid: str
    lossless: bool
    tools: tuple[str, ...]  # needed to encode and to reference-decode


ENCODINGS: dict[str, Encoding] = {
    e.key: e
    for e in (
        Encoding("explicit_le", "1.2.840.10008.1.2.1", True, ()),
        Encoding("implicit_le", "1.2.840.10008.1.2", True, ("dcmconv",)),
        Encoding("explicit_be", "1.2.840.10008.1.2.2", True, ("dcmconv",)),
        Encoding("deflated", "1.2.840.10008.1.2.1.99", True, ("dcmconv",)),
        Encoding("rle", "1.2.840.10008.1.2.5", True, ("dcmcrle", "dcmdrle")),
        Encoding("jpeg_baseline", "1.2.840.10008.1.2.4.50", False, ("dcmcjpeg", "dcmdjpeg")),
        Encoding("jpeg_extended", "1.2.840.10008.1.2.4.51", False, ("dcmcjpeg", "dcmdjpeg")),
        Encoding("jpeg_lossless_p14", "1.2.840.10008.1.2.4.57", True, ("dcmcjpeg", "dcmdjpeg")),
        Encoding("jpeg_lossless_sv1", "1.2.840.10008.1.2.4.70", True, ("dcmcjpeg", "dcmdjpeg")),
        Encoding("jpegls_lossless", "1.2.840.10008.1.2.4.80", True, ("dcmcjpls", "dcmdjpls")),
        Encoding("jpegls_near", "1.2.840.10008.1.2.4.81", False, ("dcmcjpls", "dcmdjpls")),
        Encoding("j2k_lossless", "1.2.840.10008.1.2.4.90", True, ("gdcmconv",)),
        Encoding("j2k_lossy", "1.2.840.10008.1.2.4.91", False, ("gdcmconv",)),
        Encoding(
            "htj2k_lossless", "1.2.840.10008.1.2.4.201", True, ("ojph_compress", "ojph_expand")
        ),
        Encoding("htj2k_lossy", "1.2.840.10008.1.2.4.203", False, ("ojph_compress", "ojph_expand")),
    )
}


def run(cmd: list[str], timeout: float = 120) -> None:
    """Run a converter; raise with its stderr (tool output never holds our sentinels' use)."""
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-500:]}"
        )


# ------------------------------------------------------------------ sources


def pydicom_data_file(name: str) -> Path:
    """A file from pydicom's test data or the pydicom-data package."""
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(name)
    return Path(str(path))


def synthetic_dx(rows: int = 720, columns: int = 560, bits: int = 12, seed: int = 7) -> np.ndarray:
    """A deterministic spine-radiograph-like phantom: soft tissue, vertebrae, edges, noise.

    Real radiographs have large flat collimated areas, smooth gradients and
    sharp metal edges; all three stress different parts of decode and render.
    """
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float64)
    body = np.exp(-(((x - columns / 2) / (columns * 0.28)) ** 2))
    img = 0.15 + 0.45 * body + 0.05 * (y / rows)
    for k in range(7):  # vertebral bodies
        cy = rows * (0.12 + 0.12 * k)
        block = (np.abs(y - cy) < rows * 0.045) & (np.abs(x - columns / 2) < columns * 0.09)
        img += 0.25 * block
    implant = (np.abs(x - columns * 0.58) < 4) & (y > rows * 0.3) & (y < rows * 0.7)
    img[implant] = 0.98  # sharp bright metal
    img[:, : columns // 16] = 0.01  # collimator edge
    img += rng.normal(0, 0.01, img.shape)
    return np.clip(np.rint(img * top), 0, top).astype(np.uint16)


def base_dataset(
    pixels: np.ndarray,
    *,
    bits_stored: int,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    modality: str = "DX",
) -> Dataset:
    """A minimal but valid single-frame greyscale image with PHI sentinels planted."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(
        "1.2.840.10008.5.1.4.1.1.1.1"
    )  # Digital X-Ray For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = SENTINEL_NAME
    ds.PatientID = SENTINEL_ID
    ds.PatientBirthDate = SENTINEL_BIRTH
    ds.StudyDate = "20240102"
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits_allocated = 8 if pixels.dtype.itemsize == 1 else 16
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def plant_sentinels(ds: Dataset) -> Dataset:
    ds.PatientName = SENTINEL_NAME
    ds.PatientID = SENTINEL_ID
    ds.PatientBirthDate = SENTINEL_BIRTH
    return ds


def to_bytes(ds: Dataset, *, file_format: bool = True) -> bytes:
    buffer = io.BytesIO()
    if file_format:
        ds.save_as(buffer, enforce_file_format=True)
    else:
        ds.save_as(buffer, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


# ---------------------------------------------------------------- converting


def _write_pgm(path: Path, pixels: np.ndarray, maxval: int) -> None:
    header = b"P5\n%d %d\n%d\n" % (pixels.shape[1], pixels.shape[0], maxval)
    dtype = ">u1" if maxval < 256 else ">u2"
    path.write_bytes(header + pixels.astype(dtype).tobytes())


def _read_pgm(path: Path) -> np.ndarray:
    data = path.read_bytes()
    parts = data.split(maxsplit=4)  # P5 w h maxval pixels
    width, height, maxval = int(parts[1]), int(parts[2]), int(parts[3])
    # header ends after the single whitespace that follows maxval
    offset = len(data) - width * height * (1 if maxval < 256 else 2)
    dtype = ">u1" if maxval < 256 else ">u2"
    return np.frombuffer(data[offset:], dtype=dtype).reshape(height, width).astype(np.int64)


def _htj2k(src: Path, dst: Path, lossless: bool) -> None:
    """Encode with OpenJPH and wrap the codestream as an encapsulated DICOM."""
    ds = pydicom.dcmread(src)
    pixels = ds.pixel_array
    if int(ds.PixelRepresentation) != 0:
        raise ValueError("the HTJ2K corpus path handles unsigned data only")
    pgm, j2c = dst.with_suffix(".pgm"), dst.with_suffix(".j2c")
    _write_pgm(pgm, pixels, (1 << int(ds.BitsStored)) - 1)
    args = ["-reversible", "true"] if lossless else ["-qstep", "0.002"]
    if min(pixels.shape) < 256:  # OpenJPH's default 5 levels garble tiny lossy images
        args += ["-num_decomps", "2"]
    run(["ojph_compress", "-i", str(pgm), "-o", str(j2c), *args])
    ds.PixelData = encapsulate([j2c.read_bytes()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless if lossless else HTJ2K
    if not lossless:
        ds.LossyImageCompression = "01"
    ds.save_as(dst, enforce_file_format=True)
    pgm.unlink()
    j2c.unlink()


def convert(src: Path, dst: Path, key: str) -> Path:
    """Transcode `src` into encoding `key` with the real tool."""
    commands: dict[str, list[str]] = {
        "implicit_le": ["dcmconv", "+ti"],
        "explicit_be": ["dcmconv", "+tb"],
        "deflated": ["dcmconv", "+td"],
        "rle": ["dcmcrle"],
        "jpeg_baseline": ["dcmcjpeg", "+eb"],
        "jpeg_extended": ["dcmcjpeg", "+ee"],
        "jpeg_lossless_p14": ["dcmcjpeg", "+el"],
        "jpeg_lossless_sv1": ["dcmcjpeg", "+e1"],
        "jpegls_lossless": ["dcmcjpls", "+el"],
        "jpegls_near": ["dcmcjpls", "+en"],
        "j2k_lossless": ["gdcmconv", "--j2k"],
        "j2k_lossy": ["gdcmconv", "--j2k", "--lossy", "-r", "10"],
    }
    if key == "explicit_le":
        shutil.copyfile(src, dst)
    elif key in ("htj2k_lossless", "htj2k_lossy"):
        _htj2k(src, dst, key == "htj2k_lossless")
    else:
        run([*commands[key], str(src), str(dst)])
    return dst


def reference_pixels(path: Path, key: str, work: Path) -> np.ndarray:
    """Decode `path` with a decoder independent of the service's (int64 stored values)."""
    native = work / (path.stem + ".refraw.dcm")
    if key in ("explicit_le", "implicit_le", "explicit_be", "deflated"):
        return np.asarray(pydicom.dcmread(path).pixel_array, dtype=np.int64)
    if key == "rle":
        run(["dcmdrle", str(path), str(native)])
    elif key.startswith("jpegls"):
        run(["dcmdjpls", str(path), str(native)])
    elif key.startswith("jpeg"):
        run(["dcmdjpeg", str(path), str(native)])
    elif key.startswith("j2k"):
        run(["gdcmconv", "--raw", str(path), str(native)])
    elif key.startswith("htj2k"):
        ds = pydicom.dcmread(path)
        j2c, pgm = work / (path.stem + ".ref.j2c"), work / (path.stem + ".ref.pgm")
        j2c.write_bytes(next(generate_frames(ds.PixelData, number_of_frames=1)))
        run(["ojph_expand", "-i", str(j2c), "-o", str(pgm)])
        return _read_pgm(pgm)
    else:
        raise KeyError(key)
    return np.asarray(pydicom.dcmread(native).pixel_array, dtype=np.int64)


class Corpus:
    """Lazily built, cached corpus files in one temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[tuple[str, str], Path] = {}
        self._sources: dict[str, Callable[[], Dataset | Path]] = {
            "rg1": lambda: pydicom_data_file("RG1_UNCR.dcm"),
            "rg3": lambda: pydicom_data_file("RG3_UNCR.dcm"),
            "ct693": lambda: pydicom_data_file("693_UNCR.dcm"),
            "dx12": lambda: base_dataset(synthetic_dx(), bits_stored=12),
            "dx12_mono1": lambda: self._mono1(),
        }

    def _mono1(self) -> Dataset:
        ds = base_dataset(4095 - synthetic_dx(seed=11), bits_stored=12, photometric="MONOCHROME1")
        ds.WindowCenter, ds.WindowWidth = 2200, 3000
        return ds

    def source(self, name: str) -> Path:
        """The uncompressed source file (Explicit VR Little Endian) with sentinels planted."""
        key = (name, "explicit_le")
        if key not in self._cache:
            made = self._sources[name]()
            ds = pydicom.dcmread(made) if isinstance(made, Path) else made
            plant_sentinels(ds)
            path = self.root / f"{name}.explicit_le.dcm"
            ds.save_as(path, enforce_file_format=True)
            self._cache[key] = path
        return self._cache[key]

    def get(self, name: str, key: str) -> Path:
        """`name` transcoded into encoding `key` (cached)."""
        if key == "explicit_le":
            return self.source(name)
        if (name, key) not in self._cache:
            src = self.source(name)
            self._cache[(name, key)] = convert(src, self.root / f"{name}.{key}.dcm", key)
        return self._cache[(name, key)]
