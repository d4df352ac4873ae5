"""The time one model call has, and one attempt's share (gateway.upstream.budget)."""

from __future__ import annotations

import math

from gateway.upstream.budget import CallBudget


def test_an_attempt_is_bounded_while_another_replica_could_still_answer() -> None:
    budget = CallBudget.start(100.0, timeout_s=60.0, attempt_s=5.0, deadline=190.0)
    assert budget.attempt(100.0, last=False) == (5.0, True)  # its own bound
    assert budget.attempt(105.0, last=True) == (55.0, True)  # the service's timeout: own too


def test_the_requests_deadline_cuts_an_attempt_short_and_is_nobodys_fault() -> None:
    budget = CallBudget.start(100.0, timeout_s=60.0, attempt_s=5.0, deadline=103.0)
    assert budget.attempt(100.0, last=False) == (3.0, False)
    assert budget.attempt(101.0, last=True) == (2.0, False)
    assert math.isclose(budget.left(102.5), 0.5)


def test_without_a_deadline_only_the_service_timeout_bounds_the_call() -> None:
    budget = CallBudget.start(0.0, timeout_s=10.0, attempt_s=4.0, deadline=None)
    assert budget.attempt(0.0, last=False) == (4.0, True)
    assert budget.attempt(8.0, last=False) == (2.0, True)  # less left than one bound
    assert budget.left(10.0) == 0.0
