"""One infer call on the wire: the HTTP pool's limits, the POST, the OIP answer's tensors.

Every call is bounded by the time it is given (the service's timeout or what is left of
the request's deadline, whichever comes first); connecting gets at most
``CONNECT_TIMEOUT_S`` of it. A connection that breaks before any answer (a stale
keep-alive, a restarted server) is asked once more on a new connection: that says nothing
about the replica.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import httpx
import numpy as np

from shared import oip

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2.0
# One pool for every model call of a gateway: far above what admission lets in at once
# (MAX_INFLIGHT_UPLOADS=32 uploads x 2 services, plus one retry each), so the pool never
# queues an admitted upload; idle keep-alive connections beyond 50 are closed.
MAX_CONNECTIONS = 200
MAX_KEEPALIVE_CONNECTIONS = 50
# An idle connection is dropped by the gateway after this, well before uvicorn's 5 s
# keep-alive timeout on the model services: reusing a connection the server is closing at
# that very moment fails with no answer (a ReadError or RemoteProtocolError).
KEEPALIVE_EXPIRY_S = 2.0
# Errors of a connection that broke before an answer (a stale keep-alive, a restarted
# server): the same replica is asked once more on a new connection before it counts as down.
STALE_CONNECTION_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
# Less time than this left: a broken connection is not asked again.
MIN_RETRY_BUDGET_S = 0.05


async def post_infer(
    http: httpx.AsyncClient, url: str, body: bytes, headers: Mapping[str, str],
    timeout_s: float, *, who: str,
) -> httpx.Response:
    """POST ``body`` to ``url`` within ``timeout_s``; httpx's errors are the caller's.
    ``who`` names the replica in the log ("classifier replica http://...")."""
    deadline = time.monotonic() + timeout_s
    for attempt in range(2):
        budget = deadline - time.monotonic()
        try:
            return await http.post(
                url, content=body, headers=dict(headers),
                timeout=httpx.Timeout(budget, connect=min(CONNECT_TIMEOUT_S, budget)),
            )
        except STALE_CONNECTION_ERRORS as exc:
            if attempt or deadline - time.monotonic() < MIN_RETRY_BUDGET_S:
                raise
            log.info("%s: connection broke without an answer (%s); asking once more",
                     who, type(exc).__name__)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def decode_answer(
    response: httpx.Response, outputs: Sequence[str]
) -> tuple[str | None, dict[str, np.ndarray]]:
    """The answer's model version and its tensors, every asked-for one present; or OipError."""
    header_length = response.headers.get(oip.HEADER_LENGTH)
    try:
        length = int(header_length) if header_length else None
    except ValueError as exc:
        raise oip.OipError(f"{oip.HEADER_LENGTH} is not a number") from exc
    decoded, tensors = oip.decode_response(response.content, length)
    missing = [name for name in outputs if name not in tensors]
    if missing:
        raise oip.OipError(f"outputs {missing} missing from the answer")
    return decoded.model_version, tensors


def error_text(response: httpx.Response) -> str:
    """What a replica said (for the log only), cut short."""
    try:
        return str(response.json().get("error", response.text))[:300]
    except (ValueError, AttributeError):
        return response.text[:300]
