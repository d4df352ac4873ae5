"""The OHIF Viewer and Orthanc's DICOMweb on one origin: a small ASGI app.

Why not Orthanc's ServeFolders plugin (Debian ``orthanc`` ships it): OHIF is a
single-page app whose deep links (``/viewer?StudyInstanceUIDs=...``) must be answered
with ``index.html``; ServeFolders serves only files that exist, and answers a file
without an extension as ``application/octet-stream`` (the browser downloads it). So this
app serves OHIF's prebuilt ``dist/`` (npm ``@ohif/app``, installed by
scripts/setup-reading-room.sh) with that fallback, an ``app-config.js`` of ours that points
OHIF at ``/dicom-web`` on the same origin (no CORS to open on Orthanc), and passes
``/dicom-web/*`` through to Orthanc, credentials and all (Orthanc decides who reads).

One correction on the way, for the viewer's sake only: cornerstone3D's image loader
(``@cornerstonejs/dicom-image-loader`` ``createImage``, bundled in OHIF 3.13.2) reads
VOI LUT Function as ``voiLUTFunction[0]``: OHIF hands it the single value as a string,
so ``"LINEAR"`` becomes ``"L"`` and ``toLowHighRange`` throws "Invalid VOI LUT function"
(a black viewport). LINEAR is the value the standard assumes when the attribute is
absent (PS3.3 C.11.2.1.2), so dropping a top-level ``LINEAR`` from the WADO-RS metadata
this app passes on changes nothing a viewer should see; the files in Orthanc keep it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

VOI_LUT_FUNCTION = "00281056"
# Headers that describe one hop, not the message (RFC 9110 7.6.1), and the ones this
# app sets itself.
HOP_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade", "content-length", "content-encoding",
    "accept-encoding",
})
DICOMWEB = "/dicom-web"

APP_CONFIG = """/** OHIF configuration written by `spine viewer`: the DICOMweb of this origin. */
window.config = {
  routerBasename: '/',
  showStudyList: true,
  extensions: [],
  modes: [],
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: %(name)s,
        name: 'orthanc',
        wadoUriRoot: '%(root)s',
        qidoRoot: '%(root)s',
        wadoRoot: '%(root)s',
        qidoSupportsIncludeField: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""


def app_config(name: str = "Spine reading room (Orthanc)") -> str:
    """OHIF's ``app-config.js``: one DICOMweb data source, this origin's ``/dicom-web``."""
    return APP_CONFIG % {"name": json.dumps(name), "root": DICOMWEB}


def without_linear_voi_function(instances: Any) -> Any:
    """WADO-RS metadata (a list of DICOM JSON datasets) less a top-level VOI LUT
    Function of ``LINEAR`` (the default when absent), which OHIF 3.13.2 misreads."""
    if not isinstance(instances, list):
        return instances
    for dataset in instances:
        if not isinstance(dataset, dict):
            continue
        element = dataset.get(VOI_LUT_FUNCTION)
        if isinstance(element, dict) and element.get("Value") == ["LINEAR"]:
            del dataset[VOI_LUT_FUNCTION]
    return instances


def _forwarded_headers(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}


def _answer_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() not in HOP_HEADERS}


class DicomwebPass:
    """``/dicom-web/*`` to Orthanc, as is, except the metadata correction above."""

    def __init__(self, orthanc_url: str, timeout_s: float = 120.0) -> None:
        self.client = httpx.AsyncClient(
            base_url=orthanc_url.rstrip("/"), timeout=httpx.Timeout(timeout_s, connect=5.0)
        )

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        upstream = await self.client.request(
            request.method, path, params=request.query_params,
            headers={**_forwarded_headers(request), "accept-encoding": "identity"},
            content=await request.body(),
        )
        body = upstream.content
        headers = _answer_headers(upstream)
        if path.endswith("/metadata") and upstream.status_code == 200:
            with contextlib.suppress(ValueError):  # not JSON (XML asked for): as it is
                body = json.dumps(without_linear_voi_function(json.loads(body))).encode()
        return Response(body, status_code=upstream.status_code, headers=headers)

    async def close(self) -> None:
        await self.client.aclose()


class SinglePageApp:
    """Files of OHIF's ``dist/``; any other GET path is the app's ``index.html``."""

    def __init__(self, dist: Path) -> None:
        self.dist = dist.resolve()
        self.index = self.dist / "index.html"

    async def __call__(self, request: Request) -> Response:
        relative = request.path_params.get("path", "")
        candidate = (self.dist / relative).resolve()
        if candidate.is_relative_to(self.dist) and candidate.is_file():
            return FileResponse(candidate)
        if "." in relative.rsplit("/", 1)[-1]:
            return PlainTextResponse("not found", status_code=404)  # a missing asset
        return FileResponse(self.index, headers={"cache-control": "no-cache"})


def create_app(dist: Path, orthanc_url: str) -> Starlette:
    """The viewer app: OHIF from ``dist``, DICOMweb from the Orthanc at ``orthanc_url``."""
    if not (dist / "index.html").is_file():
        raise FileNotFoundError(f"no OHIF build in {dist} (run scripts/setup-reading-room.sh)")
    dicomweb = DicomwebPass(orthanc_url)
    spa = SinglePageApp(dist)
    config = app_config()

    async def config_js(_: Request) -> Response:
        return Response(config, media_type="application/javascript",
                        headers={"cache-control": "no-cache"})

    methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]
    return Starlette(
        routes=[
            Route("/app-config.js", config_js),
            Route(DICOMWEB + "/{rest:path}", dicomweb.__call__, methods=methods),
            Route("/{path:path}", spa.__call__, methods=["GET", "HEAD"]),
        ],
        lifespan=_closing(dicomweb),
    )


def _closing(dicomweb: DicomwebPass):  # type: ignore[no-untyped-def]
    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await dicomweb.close()

    return lifespan
