#!/usr/bin/env python
"""Write the DICOM test corpus to a folder, or regenerate shared/dicom/probes.py.

    python -m tests.dicom.make_corpus corpus-out/      # every source x encoding
    python -m tests.dicom.make_corpus --probes         # rewrite shared/dicom/probes.py

The corpus is what tests/dicom builds in its fixtures (nothing binary is
committed); writing it out is for looking at files by hand or feeding other
tools. The probes are tiny (32x32) codestreams, one per compressed transfer
syntax, that ``shared.dicom.decodable_transfer_syntaxes`` decodes at start-up
to prove each codec works. Needs DCMTK, GDCM and OpenJPH on PATH:
``apt-get install dcmtk libgdcm-tools openjph-tools``.
"""

from __future__ import annotations

import argparse
import base64
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import generate_frames

from shared.dicom.probes import PROBE_SIZE, gradient
from tests.dicom.corpus import ENCODINGS, Corpus, base_dataset, convert

ROOT = Path(__file__).resolve().parents[2]

# encoding key -> (bits stored of the probe image, tolerance in stored units)
_PROBE_PLAN: dict[str, tuple[int, int]] = {
    "rle": (12, 0),
    "jpeg_baseline": (8, 12),
    "jpeg_extended": (12, 200),
    "jpeg_lossless_p14": (12, 0),
    "jpeg_lossless_sv1": (12, 0),
    "jpegls_lossless": (12, 0),
    "jpegls_near": (12, 4),
    "j2k_lossless": (12, 0),
    "j2k_lossy": (12, 200),
    "htj2k_lossless": (12, 0),
    "htj2k_lossy": (12, 200),
}


def write_corpus(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(out)
    for name in ("dx12", "dx12_mono1", "rg3", "rg1", "ct693"):
        for key in ENCODINGS:
            try:
                path = corpus.get(name, key)
            except Exception as exc:  # a tool that cannot encode this source
                print(f"skip {name} {key}: {str(exc).splitlines()[0][:120]}")
                continue
            print(path)


def make_probes() -> str:
    entries: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for key, (bits, tolerance) in _PROBE_PLAN.items():
            pixels = gradient(bits)
            dtype = np.uint8 if bits == 8 else np.uint16
            src = work / f"probe-{key}.src.dcm"
            base_dataset(pixels.astype(dtype), bits_stored=bits).save_as(
                src, enforce_file_format=True
            )
            dst = convert(src, work / f"probe-{key}.dcm", key)
            ds = pydicom.dcmread(dst)
            frame = next(generate_frames(ds.PixelData, number_of_frames=1))
            uid = str(ds.file_meta.TransferSyntaxUID)
            assert uid == ENCODINGS[key].uid, (key, uid)
            b64 = base64.b64encode(frame).decode("ascii")
            wrapped = "\n".join(f'            "{line}"' for line in textwrap.wrap(b64, 80))
            entries.append(
                f'    "{uid}": Probe(  # {key}\n'
                f"        bits_allocated={int(ds.BitsAllocated)},\n"
                f"        bits_stored={bits},\n"
                f"        tolerance={tolerance},\n"
                f"        frame_b64=(\n{wrapped}\n        ),\n"
                f"    ),"
            )
    return "\n".join(entries)


def write_probes() -> None:
    target = ROOT / "shared" / "dicom" / "probes.py"
    text = target.read_text()
    start = text.index("PROBES: dict[str, Probe] = {") + len("PROBES: dict[str, Probe] = {")
    end = text.index("\n}\n", start)
    target.write_text(text[:start] + "\n" + make_probes() + text[end:])
    print(f"rewrote {target.relative_to(ROOT)} ({PROBE_SIZE}x{PROBE_SIZE} probes)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", nargs="?", type=Path, help="folder to write the corpus into")
    parser.add_argument("--probes", action="store_true", help="regenerate shared/dicom/probes.py")
    args = parser.parse_args()
    if args.probes:
        write_probes()
    if args.out:
        write_corpus(args.out)
    if not args.probes and not args.out:
        parser.error("give an output folder and/or --probes")


if __name__ == "__main__":
    main()
