"""The listener's small HTTP status server: ``/health``, ``/metrics``, ``/studies``.

On its own port (``LISTENER_STATUS_PORT``, loopback by default: ``/studies`` names
study UIDs), served by uvicorn inside the listener's event loop. The listener handles
SIGTERM itself, so uvicorn is kept from installing its signal handlers.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Generator
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def status_app(
    health: Callable[[], dict[str, Any]], studies: Callable[[], list[dict[str, Any]]],
    registry: CollectorRegistry,
) -> Starlette:
    async def get_health(_request: Request) -> JSONResponse:
        return JSONResponse(health())

    async def get_metrics(_request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def get_studies(_request: Request) -> JSONResponse:
        return JSONResponse({"studies": studies()})

    async def get_study(request: Request) -> JSONResponse:
        uid = request.path_params["uid"]
        for study in studies():
            if study["study_instance_uid"] == uid:
                return JSONResponse(study)
        return JSONResponse({"status": "error", "message": "no such study"}, status_code=404)

    return Starlette(routes=[
        Route("/health", get_health), Route("/metrics", get_metrics),
        Route("/studies", get_studies), Route("/studies/{uid}", get_study),
    ])


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the listener's own handlers stay in place


class StatusServer:
    """uvicorn on a socket bound at construction (so port 0 gives a known port)."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.port = int(self.socket.getsockname()[1])
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
        self.server = _Server(config)

    async def serve(self) -> None:
        await self.server.serve(sockets=[self.socket])

    def stop(self) -> None:
        self.server.should_exit = True
