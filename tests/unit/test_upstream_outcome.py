"""Each way an attempt can end, as one value (gateway.upstream.outcome)."""

from __future__ import annotations

import httpx
import pytest

from gateway.upstream import outcome
from gateway.upstream.breaker import Verdict
from gateway.upstream.errors import (
    UpstreamBadGatewayError,
    UpstreamInvalidAnswerError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)

REQUEST = httpx.Request("POST", "http://replica/v2/models/m/infer")


def test_a_refused_connection_ejects_at_once_marks_facts_stale_and_is_retried() -> None:
    ended = outcome.transport_failed(
        "detector", httpx.ConnectError("refused", request=REQUEST), 5.0, own_timeout=True
    )
    assert (ended.label, ended.verdict, ended.retry, ended.stale) == (
        "unreachable", Verdict.DOWN, True, True
    )
    assert isinstance(ended.error, UpstreamUnavailableError)
    assert ended.error.problem == "detector service: cannot reach a replica (ConnectError)"


def test_a_connect_timeout_is_unreachable_not_a_timeout() -> None:
    ended = outcome.transport_failed(
        "detector", httpx.ConnectTimeout("slow", request=REQUEST), 5.0, own_timeout=False
    )
    assert (ended.label, ended.verdict, ended.retry) == ("unreachable", Verdict.DOWN, True)
    assert "did not accept the connection in time" in str(ended.error)


@pytest.mark.parametrize(("own", "verdict"), [(True, Verdict.FAILURE), (False, Verdict.NONE)])
def test_a_read_timeout_at_the_attempts_own_bound_is_retried_and_counts_against_the_replica(
    own: bool, verdict: Verdict
) -> None:
    """Its own bound: the replica is slow or gone, another may answer in the time left;
    the request's deadline: the caller's time is spent, nobody is to blame."""
    ended = outcome.transport_failed(
        "classifier", httpx.ReadTimeout("slow", request=REQUEST), 2.5, own_timeout=own
    )
    assert (ended.label, ended.verdict, ended.retry, ended.stale) == ("timeout", verdict, own, False)
    assert isinstance(ended.error, UpstreamTimeoutError) and ended.error.status_code == 504
    assert ended.error.problem == "classifier service: no answer within 2.5 s"


@pytest.mark.parametrize(("header", "pause"), [("2", 2.0), ("600", 10.0), ("soon", 10.0), (None, 10.0)])
def test_a_503_pauses_for_its_retry_after_capped_and_is_retried(
    header: str | None, pause: float
) -> None:
    headers = {"Retry-After": header} if header else {}
    ended = outcome.refused("classifier", httpx.Response(503, headers=headers), 10.0)
    assert (ended.label, ended.verdict, ended.retry, ended.stale, ended.rest_s) == (
        "unavailable", Verdict.BUSY, True, True, pause
    )
    assert ended.error is not None and ended.error.retry_after_s == 1  # ask again soon


def test_a_5xx_is_retried_and_what_the_replica_said_goes_to_the_log_only() -> None:
    response = httpx.Response(500, json={"error": "Traceback: /srv/secret.pth"})
    ended = outcome.refused("classifier", response, 10.0)
    assert (ended.label, ended.verdict, ended.retry) == ("error", Verdict.FAILURE, True)
    assert ended.said == "answered HTTP 500: Traceback: /srv/secret.pth"
    assert isinstance(ended.error, UpstreamBadGatewayError)
    assert "secret" not in ended.error.message and "HTTP 500" in ended.error.message


def test_a_4xx_is_ours_to_blame_not_retried_and_no_verdict() -> None:
    ended = outcome.refused("classifier", httpx.Response(400, text="bad tensor"), 10.0)
    assert (ended.label, ended.verdict, ended.retry) == ("error", Verdict.NONE, False)
    assert ended.error is not None and ended.error.status_code == 502


def test_a_504_counts_against_the_replica_and_is_not_retried() -> None:
    ended = outcome.refused("detector", httpx.Response(504), 10.0)
    assert (ended.label, ended.verdict, ended.retry) == ("timeout", Verdict.FAILURE, False)
    assert isinstance(ended.error, UpstreamTimeoutError)


def test_an_invalid_answer_is_retried_and_nothing_of_it_is_used() -> None:
    ended = outcome.invalid_answer("classifier", ValueError("abnormal_probability is NaN"))
    assert (ended.label, ended.verdict, ended.retry) == ("malformed", Verdict.FAILURE, True)
    assert isinstance(ended.error, UpstreamInvalidAnswerError) and "NaN" not in str(ended.error)
    assert ended.said == "invalid answer: abnormal_probability is NaN"


def test_a_changed_bundle_says_nothing_about_the_replicas_health() -> None:
    ended = outcome.bundle_changed("classifier")
    assert (ended.label, ended.verdict, ended.retry) == ("unavailable", Verdict.NONE, True)
    assert "bundle changed" in str(ended.error)


def test_every_outcome_but_an_answer_carries_its_error() -> None:
    assert outcome.ANSWERED.error is None and outcome.ANSWERED.verdict is Verdict.SUCCESS
    assert outcome.deadline_passed("classifier").label == "timeout"
    ejected = outcome.nobody_to_ask(UpstreamUnavailableError("detector", "every replica ..."))
    assert ejected.label == "ejected" and ejected.verdict is Verdict.NONE
