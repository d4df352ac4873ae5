"""Triton's model repository extension over HTTP: index, load, unload.

``POST /v2/repository/index``, ``POST /v2/repository/models/{name}/load`` with
``{"parameters": {"model_dir": "<folder>"}}`` (no ``model_dir``: reload the folder
serving now) and ``POST /v2/repository/models/{name}/unload``, in Triton's shapes: the
index is a JSON list of ``{name, version, state, reason}``, a load or unload answers 200
with an empty body, a failed one ``{"error": ...}`` (400). What the repository does is
:mod:`model_server.repository`.

A load runs code paths on files, so the API is off unless the operator names the folder
bundles may come from (``MODEL_REPOSITORY_ROOT``) and sets ``INTERNAL_TOKEN`` (every call
then needs it: :class:`~model_server.app.InternalTokenMiddleware`); otherwise, and for a
folder outside the root (symbolic links resolved), the answer is 403 saying why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from model_server.errors import RepositoryForbiddenError, RepositoryRequestError
from model_server.served import served_of
from shared.bodies import BodyRefusedError, read_capped
from shared.settings import ModelServerSettings

# A repository request is a small JSON object.
MAX_REQUEST_BYTES = 64 * 1024
ROOT_SETTING = "MODEL_REPOSITORY_ROOT"

router = APIRouter(tags=["repository"])


@dataclass(frozen=True)
class RepositoryAccess:
    """Who may use the repository API, and for which folders."""

    root: Path | None
    token_set: bool
    body_idle_timeout_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: ModelServerSettings) -> RepositoryAccess:
        return cls(settings.model_repository_root, settings.internal_token is not None,
                   settings.http_body_idle_timeout_s)

    def check(self) -> Path:
        """The root, or 403 saying how to turn the API on."""
        if self.root is None:
            raise RepositoryForbiddenError(
                f"the model repository API is off: set {ROOT_SETTING} to the folder whose "
                "bundles may be loaded, and INTERNAL_TOKEN"
            )
        if not self.token_set:
            raise RepositoryForbiddenError(
                f"the model repository API needs INTERNAL_TOKEN (with {ROOT_SETTING}): "
                "set it to turn the API on"
            )
        return self.root

    def folder(self, model_dir: str) -> Path:
        """``model_dir`` (absolute, or relative to the root) resolved; 403 outside the root."""
        root = self.check().expanduser().resolve()
        given = Path(model_dir).expanduser()
        folder = (given if given.is_absolute() else root / given).resolve()
        if not folder.is_relative_to(root):
            raise RepositoryForbiddenError(
                f"model_dir {model_dir!r} is not under {ROOT_SETTING}: only bundles under "
                "it may be loaded"
            )
        if not folder.is_dir():
            raise RepositoryRequestError(
                f"model_dir {model_dir!r} is not a folder under {ROOT_SETTING}"
            )
        return folder


def access_of(request: Request) -> RepositoryAccess:
    access: RepositoryAccess = request.app.state.repository_access
    return access


async def _request_object(request: Request, access: RepositoryAccess) -> dict[str, Any]:
    """The JSON object of the body (an empty body is ``{}``); 400 otherwise."""
    try:
        body = await read_capped(
            request.stream(), request.headers.get("content-length"),
            limit=MAX_REQUEST_BYTES, setting="a repository request's limit",
            idle_timeout_s=access.body_idle_timeout_s, total_timeout_s=30.0,
        )
    except BodyRefusedError as exc:
        raise RepositoryRequestError(exc.message, status_code=exc.status_code) from exc
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise RepositoryRequestError("the request body is not JSON") from exc
    if not isinstance(value, dict):
        raise RepositoryRequestError("the request body must be a JSON object")
    return value


def _parameters(value: dict[str, Any]) -> dict[str, Any]:
    parameters = value.get("parameters", {})
    if not isinstance(parameters, dict):
        raise RepositoryRequestError('"parameters" must be a JSON object')
    return parameters


@router.post("/v2/repository/index")
async def repository_index(request: Request) -> Response:
    access = access_of(request)
    access.check()
    ready = (await _request_object(request, access)).get("ready", False)
    if not isinstance(ready, bool):
        raise RepositoryRequestError('"ready" must be true or false')
    return JSONResponse(served_of(request).repository.index(ready_only=ready))


@router.post("/v2/repository/models/{name}/load")
async def repository_load(name: str, request: Request) -> Response:
    """Load the bundle ``parameters.model_dir`` beside the one serving and switch to it."""
    served, access = served_of(request), access_of(request)
    access.check()
    served.check_name(name)
    model_dir = _parameters(await _request_object(request, access)).get("model_dir")
    if model_dir is None:
        current = served.repository.model_dir
        if current is None:
            raise RepositoryRequestError(
                'no bundle to reload: give "parameters": {"model_dir": ...}'
            )
        model_dir = str(current)
    if not isinstance(model_dir, str) or not model_dir:
        raise RepositoryRequestError('"model_dir" must be a folder name')
    await served.repository.load(access.folder(model_dir))
    return Response(status_code=200)


@router.post("/v2/repository/models/{name}/unload")
async def repository_unload(name: str, request: Request) -> Response:
    """Stop serving the model; requests in flight finish first."""
    served, access = served_of(request), access_of(request)
    access.check()
    served.check_name(name)
    await _request_object(request, access)  # Triton's parameters: none apply to one model
    await served.repository.unload()
    return Response(status_code=200)
