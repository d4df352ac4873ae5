"""Write single-frame grey X-ray DICOM files (DX, CR, or secondary capture) from a numpy array.

The one writer behind every DICOM the project makes itself: the training phantoms,
the benchmark's uploads and the tests' inputs. It owns what a file needs to be
valid (file meta, SOP identity, image pixel module, encoded pixel data); callers
pass every other attribute by keyword. UIDs are never invented here, so a caller
that derives them from a seed gets byte-identical files. Write a file with
``xray_dataset(...).save_as(path, enforce_file_format=True)`` or `file_bytes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from io import BytesIO

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.pixels import get_encoder
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Storage, For Presentation
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
SECONDARY_CAPTURE = str(SecondaryCaptureImageStorage)

#: Attributes the writer sets itself; callers may not pass them in ``attributes``.
_OWNED = frozenset(
    {
        "SOPClassUID",
        "SOPInstanceUID",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "PixelData",
    }
)


def xray_dataset(
    pixels: NDArray[np.integer],
    *,
    sop_instance_uid: str,
    attributes: Mapping[str, object] | None = None,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    transfer_syntax: str = ExplicitVRLittleEndian,
    sop_class_uid: str = DX_FOR_PRESENTATION,
) -> FileDataset:
    """A Part 10 dataset holding ``pixels`` (rows x cols, unsigned) as stored values.

    ``attributes`` maps DICOM keywords to values (patient, study, window, ...).
    ``transfer_syntax`` is explicit VR little endian (native) or any syntax pydicom
    can encode; JPEG 2000 and RLE use the pylibjpeg plugins (RLE falls back to
    pydicom's own encoder, which writes the same bytes more slowly).
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected one grey frame (rows x cols), got shape {pixels.shape}")
    clash = _OWNED & set(attributes or {})
    if clash:
        raise ValueError(f"the writer sets {sorted(clash)} itself")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    for keyword, value in (attributes or {}).items():
        setattr(ds, keyword, value)
    stored = pixels.astype(np.uint16 if bits_stored > 8 else np.uint8)
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if bits_stored > 8 else 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    _encode(ds, stored, transfer_syntax)
    return ds


def file_bytes(ds: Dataset) -> bytes:
    """A dataset written as a Part 10 file, in memory."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _encode(ds: FileDataset, stored: NDArray[np.integer], transfer_syntax: str) -> None:
    """Set PixelData in ``transfer_syntax``; the SOP Instance UID is kept as given."""
    if transfer_syntax == ExplicitVRLittleEndian:
        ds.PixelData = np.ascontiguousarray(stored).tobytes()
        return
    ds.compress(
        transfer_syntax,
        stored,
        encoding_plugin=_plugin(transfer_syntax),
        generate_instance_uid=False,
    )


def _plugin(transfer_syntax: str) -> str:
    """pylibjpeg for JPEG 2000 (the only encoder) and RLE (~10x faster); else pydicom's choice."""
    if transfer_syntax == JPEG2000Lossless:
        return "pylibjpeg"
    if transfer_syntax == RLELossless:
        plugins = get_encoder(RLELossless).available_plugins
        return "pylibjpeg" if "pylibjpeg" in plugins else "pydicom"
    return ""
