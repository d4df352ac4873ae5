"""The listener's small HTTP status server: ``/health``, ``/metrics``, ``/studies``.

On its own port (``LISTENER_STATUS_PORT``, loopback by default: ``/studies`` names
study UIDs), served by uvicorn inside the listener's event loop. Bound beyond loopback
(``LISTENER_STATUS_HOST``), ``/metrics`` and ``/studies`` need an operator key
(``OPERATOR_KEYS_SHA256``, as ``X-API-Key`` or ``Authorization: Bearer``; a Prometheus
scrape job sends it as its ``authorization`` credentials) and ``/health`` says only
``status`` without one (a probe needs no secret; the gateway's ``/health`` does the same),
and the listener refuses to start with no operator key configured. The listener handles
SIGTERM itself, so uvicorn is kept from installing its signal handlers.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.apikeys import ApiKeys
from shared.lockdown import is_loopback


class StatusConfigError(ValueError):
    """A status server that must not start as configured (names the variable)."""


Handler = Callable[[Request], Awaitable[Response]]
KEY_REQUIRED = "an operator key is required (X-API-Key or Authorization: Bearer)"


def status_keys(host: str, operator_keys: ApiKeys) -> ApiKeys | None:
    """The keys status details need: none on loopback, the operator keys beyond it."""
    if is_loopback(host):
        return None
    if not operator_keys.enabled:
        raise StatusConfigError(
            f"the listener's status server binds {host}, beyond loopback, and would show "
            "study UIDs to anyone: set OPERATOR_KEYS_SHA256 (its callers send the key), "
            "or bind LISTENER_STATUS_HOST=127.0.0.1"
        )
    return operator_keys


def status_app(
    health: Callable[[], dict[str, Any]], studies: Callable[[], list[dict[str, Any]]],
    registry: CollectorRegistry, keys: ApiKeys | None = None,
) -> Starlette:
    """The routes; with ``keys``, a call without one of them gets a 401 (``/health``: its
    ``status`` only)."""

    def operator(request: Request) -> bool:
        return keys is None or keys.identify(request.headers.raw) is not None

    def guarded(handler: Handler) -> Handler:
        async def checked(request: Request) -> Response:
            if operator(request):
                return await handler(request)
            return JSONResponse({"status": "error", "message": KEY_REQUIRED}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        return checked

    async def get_health(request: Request) -> JSONResponse:
        report = health()
        return JSONResponse(report if operator(request) else {"status": report["status"]})

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
        Route("/health", get_health), Route("/metrics", guarded(get_metrics)),
        Route("/studies", guarded(get_studies)), Route("/studies/{uid}", guarded(get_study)),
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
