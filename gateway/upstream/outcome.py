"""How one attempt at one replica ended, as a value: the client applies it in one place.

Each way an attempt can end is one :class:`Outcome`, built here from what happened (a
transport error, an HTTP status, an answer that failed the checks): the metric's label,
the breaker's :class:`~gateway.upstream.breaker.Verdict`, whether the replica's facts go
stale, the error for the caller and whether another replica may be asked.
:meth:`gateway.upstream.client.ModelClient._record` applies it; nothing else counts,
ejects or retries.

The rules: a refused connection, a 503, a 5xx or an attempt that got no answer within
its own bound is retried once on another replica (infer is idempotent), an answer from a
bundle swapped under the call once on any replica; a timeout at the request's deadline is
not (the caller's time is spent). A replica's own timeout counts against it, the
request's deadline does not. A 4xx is ours to blame: another
replica would refuse it too. A replica that cannot be reached or answers 503 may have
restarted, perhaps on another bundle: its facts are read again before its next use.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from gateway.upstream.breaker import Verdict
from gateway.upstream.errors import (
    RETRY_AFTER_BUSY_S,
    UpstreamBadGatewayError,
    UpstreamError,
    UpstreamInvalidAnswerError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.upstream.transport import error_text


@dataclass(frozen=True)
class Outcome:
    """One attempt's end. Labels (the ``outcome`` of ``spine_upstream_requests_total``):
    ok, timeout, unreachable, unavailable (503), error (other status), malformed (failed
    the checks), ejected (every replica out of rotation: not attempted)."""

    label: str
    verdict: Verdict = Verdict.NONE
    reason: str = ""  # why, for the breaker's log line
    error: UpstreamError | None = None  # None: the answer is used
    retry: bool = False  # another replica may answer
    stale: bool = False  # the replica may have restarted: read its facts again
    rest_s: float | None = None  # a 503's asked-for pause
    said: str | None = None  # what the replica said or did wrong (the log only)
    again: bool = False  # the same replica may be asked again (its bundle was swapped)


ANSWERED = Outcome("ok", Verdict.SUCCESS)


def transport_failed(
    service: str, exc: httpx.TransportError, budget_s: float, *, own_timeout: bool
) -> Outcome:
    """No answer came: not accepted, timed out, or the connection failed. ``own_timeout``:
    the attempt's own bound ran out (its per-attempt or the service's timeout), not the
    request's deadline: the replica is slow or gone, so it counts against it and another
    replica may answer in the time left."""
    if isinstance(exc, httpx.ConnectTimeout):
        problem = "a replica did not accept the connection in time"
        return Outcome("unreachable", Verdict.DOWN, "connect timeout",
                       UpstreamUnavailableError(service, problem), retry=True, stale=True)
    if isinstance(exc, httpx.TimeoutException):
        why = f"no answer within {budget_s:.3g} s"
        verdict = Verdict.FAILURE if own_timeout else Verdict.NONE
        return Outcome("timeout", verdict, why, UpstreamTimeoutError(service, why),
                       retry=own_timeout)
    name = type(exc).__name__
    return Outcome("unreachable", Verdict.DOWN, f"unreachable ({name})",
                   UpstreamUnavailableError(service, f"cannot reach a replica ({name})"),
                   retry=True, stale=True)


def refused(service: str, response: httpx.Response, cooldown_s: float) -> Outcome:
    """An answer other than 200."""
    status = response.status_code
    if status == 503:  # loading (restarted?) or overloaded
        pause = retry_after(response.headers.get("Retry-After"), cooldown_s)
        error = UpstreamUnavailableError(
            service, "not ready or overloaded", retry_after_s=RETRY_AFTER_BUSY_S
        )
        return Outcome("unavailable", Verdict.BUSY, "answered 503", error,
                       retry=True, stale=True, rest_s=pause)
    if status == 504:
        return Outcome("timeout", Verdict.FAILURE, "answered 504",
                       UpstreamTimeoutError(service, "timed out"))
    failed = UpstreamBadGatewayError(service, f"a replica failed (HTTP {status})")
    said = f"answered HTTP {status}: {error_text(response)}"
    if status < 500:  # it refused our call: another replica would too
        return Outcome("error", error=failed, said=said)
    return Outcome("error", Verdict.FAILURE, f"answered {status}", failed, retry=True, said=said)


def invalid_answer(service: str, problem: Exception) -> Outcome:
    """The answer failed decoding or the contract's checks: nothing of it is used."""
    return Outcome("malformed", Verdict.FAILURE, "invalid answer",
                   UpstreamInvalidAnswerError(service), retry=True,
                   said=f"invalid answer: {problem}")


def bundle_changed(service: str) -> Outcome:
    """The answer came from a bundle the replica's (re-read) facts do not describe: a
    call that was in flight while its bundle was swapped. Another call, to this replica
    (its facts are current now) or another, is read with the facts of its own answer."""
    problem = "a replica's bundle changed; its answer was not used"
    return Outcome("unavailable", error=UpstreamUnavailableError(service, problem),
                   retry=True, again=True)


def deadline_passed(service: str) -> Outcome:
    """Not attempted: the request's deadline has (all but) passed."""
    problem = "the request's deadline has passed"
    return Outcome("timeout", error=UpstreamTimeoutError(service, problem))


def nobody_to_ask(error: UpstreamError) -> Outcome:
    """Not attempted: every replica rests, is on trial or is out of rotation."""
    return Outcome("ejected", error=error)


def retry_after(value: str | None, ceiling: float) -> float:
    """Seconds from a Retry-After header (delta form only), capped at ``ceiling``."""
    try:
        return max(0.0, min(float(value), ceiling)) if value else ceiling
    except ValueError:
        return ceiling
