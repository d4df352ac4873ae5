"""What a model call that failed looks like to the rest of the gateway.

Each error is a :class:`shared.errors.ServiceError` with the status a route answers and
the retry advice for the gateway's own client. ``problem`` says what went wrong
("detector service: ..."), for logs and for the warning of a response that goes on
without the detector; ``message`` is the answer to a request that ends here. Neither
quotes what a replica said: that goes to the log only.
"""

from __future__ import annotations

from shared.errors import ServiceError

# Retry advice for the gateway's client when no replica could answer: a replica that
# answered 503 (loading or overloaded) is worth asking again soon; an unreachable one is not.
RETRY_AFTER_BUSY_S = 1
RETRY_AFTER_UNREACHABLE_S = 5


class UpstreamError(ServiceError):
    """A model service could not answer (503, retry in 5 s unless said otherwise).

    Without the classifier no diagnosis is made, which the message says.
    """

    status_code = 503
    retry_after_s: float | None = RETRY_AFTER_UNREACHABLE_S

    def __init__(self, service: str, problem: str, *, retry_after_s: float | None = None) -> None:
        self.service = service
        self.problem = f"{service} service: {problem}"
        super().__init__(f"{self.problem}; no diagnosis was made", retry_after_s=retry_after_s)


class UpstreamUnavailableError(UpstreamError):
    """No replica of the service could take the call (503 with the client's retry advice)."""


class UpstreamTimeoutError(UpstreamError):
    """The service did not answer in time (504; asking again at once would not help)."""

    status_code = 504
    retry_after_s = None


class UpstreamBadGatewayError(UpstreamError):
    """The service failed the call (5xx other than 503/504, or refused it): 502."""

    status_code = 502
    retry_after_s = None


class UpstreamInvalidAnswerError(UpstreamBadGatewayError):
    """The service answered something the contract forbids (502): nothing of it is used."""

    def __init__(self, service: str) -> None:
        super().__init__(service, "its answer failed validation")
