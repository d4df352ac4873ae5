"""The OIP (KServe v2 REST) routes of a model server, and the one refusal handler."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from model_server.errors import ServingError
from model_server.infer import caller_timeout_s, infer_images, read_images, requested_outputs
from model_server.served import served_of
from shared import oip

router = APIRouter()


@router.get("/v2", tags=["server"])
async def server_metadata(request: Request) -> dict[str, Any]:
    return {
        "name": served_of(request).title, "version": "1",
        "extensions": ["binary_tensor_data", "model_configuration", "model_repository"],
    }


@router.get("/v2/health/live", tags=["health"])
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready", tags=["health"])
async def ready(request: Request) -> Response:
    repository = served_of(request).repository
    if repository.ready:
        return JSONResponse({"ready": True})
    return JSONResponse({"ready": False, "error": repository.load_error}, status_code=503)


@router.get("/v2/models/{name}", tags=["model"])
@router.get("/v2/models/{name}/versions/{version}", tags=["model"], include_in_schema=False)
async def model_metadata(name: str, request: Request, version: str | None = None) -> Response:
    served = served_of(request)
    served.check_name(name)
    return JSONResponse(served.repository.current().metadata().model_dump())


@router.get("/v2/models/{name}/config", tags=["model"])
@router.get("/v2/models/{name}/versions/{version}/config", tags=["model"], include_in_schema=False)
async def model_config(name: str, request: Request, version: str | None = None) -> Response:
    """Triton's model-configuration extension; 503 until the model has loaded."""
    served = served_of(request)
    served.check_name(name)
    return JSONResponse(served.model_config())


@router.get("/v2/models/{name}/ready", tags=["model"])
@router.get("/v2/models/{name}/versions/{version}/ready", tags=["model"], include_in_schema=False)
async def model_ready(name: str, request: Request, version: str | None = None) -> Response:
    served = served_of(request)
    served.check_name(name)
    is_ready = served.repository.ready
    return JSONResponse({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)


@router.post("/v2/models/{name}/infer", tags=["model"])
@router.post("/v2/models/{name}/versions/{version}/infer", tags=["model"], include_in_schema=False)
async def infer(name: str, request: Request, version: str | None = None) -> Response:
    served = served_of(request)
    served.check_name(name)
    with served.repository.lease() as model:  # this request's bundle, to its answer
        served.admit()
        started = time.perf_counter()
        infer_request, images = read_images(request.headers, await served.read_body(request))
        served.admit_images(len(images))
        budget = served.request_timeout_s
        if (caller_s := caller_timeout_s(infer_request.parameters)) is not None:
            budget = min(budget, caller_s)
        served.metrics.set_queue_depth(served.batcher.queue_depth)
        results = await infer_images(served, model, images, started + budget, request.receive)
        outputs = requested_outputs(model.merge_outputs(results), infer_request)
        version = model.model_version()
    elapsed = time.perf_counter() - started
    payload, headers = oip.encode_response(
        name,
        outputs,
        request_id=infer_request.id,
        binary={key for key in outputs if oip.wants_binary(infer_request, key)},
        parameters={"server_ms": round(elapsed * 1000, 3)},
        model_version=version,
    )
    served.metrics.observe_request(elapsed)
    return Response(content=payload, headers=headers, media_type=headers["Content-Type"])


@router.get("/metrics", tags=["metrics"], include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    served = served_of(request)
    return Response(
        served.metrics.exposition(served.batcher.queue_depth), media_type=CONTENT_TYPE_LATEST
    )


async def refuse(request: Request, exc: Exception) -> Response:
    """Every refusal: its status, ``{"error": message}``, Retry-After if advised, counted."""
    assert isinstance(exc, ServingError)
    if exc.reason is not None:
        served_of(request).metrics.fail(exc.reason)
    headers = None if exc.retry_after_s is None else {"Retry-After": f"{exc.retry_after_s:g}"}
    return JSONResponse(status_code=exc.status_code, content={"error": exc.message},
                        headers=headers)
