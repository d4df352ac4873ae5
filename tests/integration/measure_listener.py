"""End-to-end time of the DICOM listener with a real Orthanc (docs/INTEGRATION.md quotes it).

From Orthanc's C-STORE to our listener (``POST /modalities/SPINE/store``, started after
the images are in Orthanc) to the last SR of the study being in Orthanc (polled every
0.1 s through its REST API), for a study of 1 and of 4 spine phantoms; results by
C-STORE back to Orthanc. For scale, the gateway's own share: one ``POST /upload/dicom``
of the same image, straight to the gateway. The real stack on the tiny test bundle.

    PYTHONPATH=$PWD python -m tests.integration.measure_listener --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.factories import write_tiny_bundle
from tests.integration.listener import start_listener
from tests.integration.stack import start_stack
from tests.integration.test_dicom_listener import (
    MODALITY,
    _phantom,
    _send_through_orthanc,
    study_of,
    wait_for_results,
)
from tests.peers.orthanc import start_orthanc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ.setdefault("YOLO_CONFIG_DIR", str(tmp / "yolo"))
        stack = start_stack(write_tiny_bundle(tmp / "bundle"), tmp / "stack")
        orthanc = start_orthanc(tmp / "orthanc")
        listener = start_listener(tmp / "listener", stack.gateway,
                                  RESULTS_STORE_AE=orthanc.store_ae)
        try:
            orthanc.add_modality(MODALITY, listener.ae_title, "127.0.0.1", listener.port)
            phantoms = [_phantom(n) for n in range(4)]
            alone = []
            for _ in range(args.runs + 1):  # the gateway's share: one POST /upload/dicom
                _, (data,), _ = study_of(phantoms[0])
                started = time.monotonic()
                response = httpx.post(f"{stack.gateway}/upload/dicom", timeout=120,
                                      files={"file": ("x.dcm", data, "application/dicom")})
                assert response.status_code == 200, response.text
                alone.append(time.monotonic() - started)
            print(f"gateway alone, POST /upload/dicom of 1 image: median "
                  f"{statistics.median(alone[1:]):.2f} s, min {min(alone[1:]):.2f}, "
                  f"max {max(alone[1:]):.2f}", flush=True)
            for images in (1, 4):
                times = []
                for _ in range(args.runs + 1):  # the first run warms up, not counted
                    study, files, _ = study_of(*phantoms[:images])
                    started = _send_through_orthanc(orthanc, files)
                    wait_for_results(orthanc, study, images)
                    times.append(time.monotonic() - started)
                counted = times[1:]
                print(f"{images} image(s): median {statistics.median(counted):.2f} s, "
                      f"min {min(counted):.2f}, max {max(counted):.2f} "
                      f"(runs: {', '.join(f'{t:.2f}' for t in counted)}; "
                      f"load average {os.getloadavg()[0]:.1f})", flush=True)
        finally:
            listener.stop()
            orthanc.stop()
            stack.stop()


if __name__ == "__main__":
    main()
