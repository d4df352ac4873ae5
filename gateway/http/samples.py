"""``GET /samples``: a few synthetic sample DICOMs, so the API and the web page can be
tried without a spine radiograph at hand.

The samples are the held-apart phantoms of :mod:`training.samples` (the same files as
``spine samples``), labelled synthetic everywhere. They are generated on the first
request for one (about 2 s, in a worker thread), once per cache root
(``<SPINE_CACHE_DIR>/samples/``), then served from memory. The generator needs numpy,
OpenCV and pydicom only, never torch; where the training package is not installed (the
gateway's container image), the listing is empty and says why.
"""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field

from gateway.http.routes import gateway_of
from gateway.schemas import ErrorResponse
from shared.paths import cache_root

router = APIRouter(tags=["samples"])

UNAVAILABLE = (
    "samples need the phantom generator (the training package), which this installation "
    "lacks; run `spine samples --out samples/` where it is installed"
)


class SampleInfo(BaseModel):
    name: str = Field(description="use it as GET /samples/{name}")
    label: str = Field(description="the image's truth: normal or abnormal")
    synthetic: bool = Field(True, description="always true: a phantom, not a patient image")
    url: str


class SampleList(BaseModel):
    synthetic: bool = Field(True, description="every sample is a synthetic phantom")
    note: str
    samples: list[SampleInfo]


class _Store:
    """The sample DICOMs of each cache root, generated or read once under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[Path, dict[str, bytes]] = {}

    def files(self, root: Path) -> dict[str, bytes]:
        with self._lock:
            if root not in self._files:
                from training.samples import SAMPLE_SEED, read_samples, write_samples

                folder = root / "samples" / f"seed{SAMPLE_SEED}"
                samples = read_samples(folder) or write_samples(folder)
                self._files[root] = {s.name: (folder / s.file).read_bytes() for s in samples}
            return self._files[root]


_store = _Store()


@router.get("/samples", response_model=SampleList, summary="Synthetic sample DICOMs to try")
async def list_samples() -> SampleList:
    try:
        from training.samples import SAMPLE_NAMES, SYNTHETIC_NOTE, sample_label
    except ImportError:
        return SampleList(note=UNAVAILABLE, samples=[])
    return SampleList(
        note=SYNTHETIC_NOTE,
        samples=[
            SampleInfo(name=name, label=sample_label(name), url=f"/samples/{name}")
            for name in SAMPLE_NAMES
        ],
    )


@router.get(
    "/samples/{name}",
    summary="One synthetic sample DICOM (application/dicom)",
    response_class=Response,
    responses={
        200: {"content": {"application/dicom": {}}, "description": "The DICOM file"},
        404: {"model": ErrorResponse, "description": "No sample of that name"},
        503: {"model": ErrorResponse, "description": "The phantom generator is not installed"},
    },
)
async def get_sample(name: str, request: Request) -> Response:
    try:
        from training.samples import SAMPLE_NAMES
    except ImportError as exc:
        raise HTTPException(503, UNAVAILABLE) from exc
    if name not in SAMPLE_NAMES:
        raise HTTPException(404, f"no sample {name!r}; GET /samples lists them")
    files = await run_in_threadpool(_store.files, cache_root(gateway_of(request).settings))
    return Response(
        files[name],
        media_type="application/dicom",
        headers={"Content-Disposition": f'attachment; filename="synthetic-{name}.dcm"'},
    )
