"""One replica's circuit breaker (gateway.upstream.breaker), on a clock the test holds."""

from __future__ import annotations

from gateway.upstream.breaker import Breaker, BreakerPolicy, Change, Verdict

POLICY = BreakerPolicy(failures=3, cooldown_s=10.0)


def test_failures_in_a_row_eject_after_the_policys_count_and_success_resets_it() -> None:
    breaker = Breaker(POLICY)
    assert breaker.record(Verdict.FAILURE, 0.0) is Change.COUNTED
    assert breaker.record(Verdict.SUCCESS, 0.0) is Change.NONE  # not in a row any more
    assert breaker.failures == 0
    changes = [breaker.record(Verdict.FAILURE, 1.0) for _ in range(3)]
    assert changes == [Change.COUNTED, Change.COUNTED, Change.EJECTED]
    assert breaker.state(1.0) == "open" and not breaker.available(10.9)
    assert breaker.available(11.0) and breaker.state(11.0) == "half-open"


def test_an_unreachable_replica_is_ejected_at_once() -> None:
    breaker = Breaker(POLICY)
    assert breaker.record(Verdict.DOWN, 5.0) is Change.EJECTED
    assert breaker.open_until == 15.0 and breaker.tripped


def test_the_trial_call_decides_and_nobody_else_is_sent_meanwhile() -> None:
    breaker = Breaker(POLICY)
    breaker.record(Verdict.DOWN, 0.0)
    assert breaker.start_call()  # the first call after the rest is the trial
    assert not breaker.available(20.0)  # half-open: one call at a time
    assert breaker.record(Verdict.FAILURE, 20.0) is Change.EJECTED  # one failure is enough
    assert breaker.open_until == 30.0 and breaker.available(30.0)
    assert breaker.start_call()
    assert breaker.record(Verdict.SUCCESS, 30.0) is Change.RECOVERED
    assert breaker.state(30.0) == "closed" and not breaker.start_call()


def test_a_trial_without_a_verdict_is_released_for_the_next_call() -> None:
    breaker = Breaker(POLICY)
    breaker.record(Verdict.DOWN, 0.0)
    breaker.start_call()
    assert breaker.record(Verdict.NONE, 10.0) is Change.NONE  # e.g. the request's deadline
    breaker.release()
    assert breaker.available(10.0) and breaker.tripped  # still on probation: next is a trial


def test_a_503_pauses_for_its_retry_after_without_ejecting() -> None:
    breaker = Breaker(POLICY)
    assert breaker.record(Verdict.BUSY, 0.0, rest_s=2.0) is Change.PAUSED
    assert not breaker.available(1.9) and breaker.available(2.0) and not breaker.tripped
    assert breaker.record(Verdict.BUSY, 0.0, rest_s=1.0) is Change.PAUSED
    assert breaker.open_until == 2.0  # a shorter pause never shortens a longer one
    assert breaker.record(Verdict.BUSY, 3.0, rest_s=2.0) is Change.EJECTED  # third in a row
    assert breaker.open_until == 13.0


def test_only_a_tripped_breaker_resting_counts_as_ejected() -> None:
    breaker = Breaker(POLICY)
    breaker.record(Verdict.BUSY, 0.0, rest_s=2.0)
    assert not breaker.available(1.0) and not breaker.ejected(1.0)  # a 503's pause
    breaker.record(Verdict.DOWN, 5.0)
    assert breaker.ejected(14.9) and not breaker.ejected(15.0)  # rested: on trial, not out
    assert breaker.tripped


def test_each_change_is_worded_for_the_log() -> None:
    breaker = Breaker(BreakerPolicy(failures=2, cooldown_s=6.0))
    change = breaker.record(Verdict.FAILURE, 0.0)
    assert breaker.describe(change, "answered 500") == ": answered 500 (1 in a row)"
    change = breaker.record(Verdict.FAILURE, 0.0)
    assert breaker.describe(change, "answered 500") == (
        " ejected for 6 s after 2 failed call(s) in a row (answered 500)"
    )
    assert breaker.describe(Change.PAUSED, "answered 503", 1.5) == ": answered 503; paused for 1.5 s"
    assert breaker.describe(Change.NONE, "") is None
