"""The model server's refusals, each carrying its HTTP status and its metric reason.

All subclass :class:`shared.errors.ServiceError`, so the app maps every one with one
rule (``status_code``, ``message``, ``retry_after_s``) and counts it under ``reason``
in ``nv_inference_request_failure`` (``None``: not counted, as for an unknown model).
"""

from __future__ import annotations

from shared.errors import ServiceError


class ServingError(ServiceError):
    """A request the model server answers with an error status."""

    reason: str | None = None


class UnknownModelError(ServingError):
    """The path names a model this server does not serve."""

    status_code = 404


class InputError(ServingError):
    """The request's tensors do not fit the model's input contract."""

    status_code = 400
    reason = "bad_request"


class RequestTooLargeError(ServingError):
    """The body or its batch dimension is over the server's limit (413), or too slow (408)."""

    status_code = 413
    reason = "too_large"


class ModelNotReadyError(ServingError):
    """The model is still loading (or failed to): come back later."""

    status_code = 503
    retry_after_s = 5
    reason = "not_ready"


class QueueFullError(ServingError):
    """The batcher's queue is at capacity; retry later."""

    status_code = 503
    retry_after_s = 1
    reason = "queue_full"


class DeadlineExceededError(ServingError):
    """The item waited in the queue past its deadline and was not computed."""

    status_code = 504
    reason = "deadline"


class ClientGoneError(ServingError):
    """The caller closed the connection; its queued images were dropped."""

    status_code = 499
    reason = "cancelled"


class ModelFailedError(ServingError):
    """The model itself raised: a real server error."""

    status_code = 500
    reason = "model_error"


class RepositoryForbiddenError(ServingError):
    """The model repository API is off, or the folder is outside MODEL_REPOSITORY_ROOT."""

    status_code = 403


class RepositoryRequestError(ServingError):
    """A repository request that cannot be done as asked (Triton answers 400)."""

    status_code = 400


class LoadFailedError(RepositoryRequestError):
    """A bundle did not load; the one loaded before still serves."""
