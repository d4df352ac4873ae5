"""What each DICOM result object adds to one image's analysis, as ratios.

    python -m bench.result_objects [--repeat 7] [--boxes 3]

Generates (nothing committed) the 5-megapixel 12-bit DX phantom of
:mod:`bench.decode_bench` with its study UIDs, decodes it once as the gateway does
(``decode_dicom``, long side 1024), and times, in one process, the writer of
``/upload/dicom`` (:func:`shared.dicom.results.write_results`) for each result object
alone (sr, gsps, sc, kos) and for the default pair (sr,gsps), over a fixed analysis with
``--boxes`` boxes. It prints the best-of-N and median milliseconds of each, the size of
the Part 10 file, and the ratio of its writing to the decode of the same image: the
ratio is what travels between machines, the milliseconds are this machine's.
(``/upload/dicom`` reports its own writing time per request in ``Server-Timing: dicom``.)
"""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import dataclass

from pydicom.uid import generate_uid

from bench.decode_bench import best_of, phantom, to_bytes
from shared.dicom import decode_dicom
from shared.dicom.decode import CanonicalImage
from shared.dicom.results import AnalysisResult, ResultBox, ResultKind, write_results
from shared.dicom.source import SourceImage
from training.dicom_writer import xray_dataset

CHOICES: tuple[tuple[ResultKind, ...], ...] = (
    *((kind,) for kind in ResultKind),
    (ResultKind.SR, ResultKind.GSPS),  # RESULTS_OBJECTS' default
)
CLASSES = ("Osteophytes", "Disc space narrowing", "Spondylolisthesis", "Surgical implant")


@dataclass(frozen=True)
class Timed:
    """One choice of objects: its name, best and median milliseconds, bytes written."""

    name: str
    best_ms: float
    median_ms: float
    size: int


def image_bytes(rows: int, columns: int) -> bytes:
    """The decode bench's DX phantom, with the UIDs a result must reference."""
    ds = xray_dataset(
        phantom(rows, columns), sop_instance_uid=generate_uid(),
        attributes={
            "Modality": "DX", "StudyInstanceUID": generate_uid(),
            "SeriesInstanceUID": generate_uid(), "PatientID": "BENCH", "PatientName": "Bench^",
            "RescaleSlope": 1, "RescaleIntercept": 0, "RescaleType": "US",
            "WindowCenter": 2000, "WindowWidth": 3000,
        },
    )
    return to_bytes(ds)


def analysis(rows: int, columns: int, boxes: int) -> AnalysisResult:
    """A fixed Abnormal answer with ``boxes`` boxes down the middle of the image."""
    step = rows / (boxes + 1)
    return AnalysisResult(
        diagnosis="Abnormal", abnormal_probability=0.734, threshold=0.5,
        members={"densenet121": 0.71, "resnet50": 0.75, "efficientnetv2": 0.74},
        boxes=tuple(
            ResultBox(CLASSES[i % len(CLASSES)], 0.4 + 0.1 * (i % 5),
                      (columns * 0.35, step * (i + 0.6), columns * 0.65, step * (i + 1.4)))
            for i in range(boxes)
        ),
        bundle_name="bench", bundle_kind="demo",
        checkpoints={"classifier/densenet121.pt": "0" * 64}, fusion_mode="paper",
    )


def measure(repeat: int, boxes: int, rows: int = 2560, columns: int = 2048) -> tuple[
    Timed, list[Timed]
]:
    """(the decode, then each choice of objects), timed in this process."""
    data = image_bytes(rows, columns)
    canonical, metadata = decode_dicom(data, 1024)
    source = metadata.source
    assert source is not None, "the phantom carries its UIDs"
    result = analysis(rows, columns, boxes)
    best, median = best_of(lambda: decode_dicom(data, 1024), repeat)
    decoded = Timed("decode_dicom", best * 1e3, median * 1e3, len(data))
    return decoded, [_write(kinds, source, result, canonical, repeat) for kinds in CHOICES]


def _write(
    kinds: tuple[ResultKind, ...], source: SourceImage, result: AnalysisResult,
    canonical: CanonicalImage, repeat: int,
) -> Timed:
    written = write_results(source, result, kinds, image=canonical)
    best, median = best_of(lambda: write_results(source, result, kinds, image=canonical), repeat)
    name = ",".join(kind.value for kind in kinds)
    return Timed(name, best * 1e3, median * 1e3, sum(map(len, written.objects.values())))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--boxes", type=int, default=3)
    args = parser.parse_args()
    decoded, written = measure(args.repeat, args.boxes)
    print(f"result_objects: 2048x2560 12-bit DX phantom, {args.boxes} boxes, best of "
          f"{args.repeat}; machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, python {platform.python_version()}")
    print(f"{'objects':<14}{'best ms':>9}{'median ms':>11}{'bytes':>10}{'/ decode':>10}")
    for row in (decoded, *written):
        print(f"{row.name:<14}{row.best_ms:>9.1f}{row.median_ms:>11.1f}{row.size:>10}"
              f"{row.median_ms / decoded.median_ms:>9.2f}x")


if __name__ == "__main__":
    main()
