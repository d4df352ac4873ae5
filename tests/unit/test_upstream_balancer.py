"""Least-outstanding balancing (gateway.upstream.balancer)."""

from __future__ import annotations

from gateway.upstream.balancer import Balancer
from gateway.upstream.breaker import Breaker, Verdict
from gateway.upstream.facts import ReadFacts, ReplicaFacts
from gateway.upstream.replica import Replica
from shared.bundle import BundleKind
from shared.contract import DetectorFacts

FACTS = DetectorFacts(
    name="tiny", kind=BundleKind.USER, class_names={0: "Osteophytes"}, conf=0.25, iou=0.5,
    max_det=20, image_size=640, backend="torch", checkpoints={"best.pt": "ef" * 32}, device="cpu",
)


def usable(url: str) -> Replica[DetectorFacts]:
    bundle: ReplicaFacts[DetectorFacts] = ReplicaFacts()
    bundle.learned(ReadFacts(FACTS, frozenset({"v1"})))
    return Replica(url, Breaker(), bundle)


def test_the_least_busy_replica_is_picked_and_calls_in_flight_are_counted() -> None:
    balancer: Balancer[DetectorFacts] = Balancer("detector")
    a, b = usable("http://a"), usable("http://b")
    with balancer.sending(a):
        assert balancer.outstanding["http://a"] == 1
        assert balancer.pick([a, b], 0.0) is b
        with balancer.sending(b), balancer.sending(b):
            assert balancer.pick([a, b], 0.0) is a
    assert not balancer.outstanding  # every call ended
    assert balancer.pick([a, b], 0.0) is a  # a tie: the first


def test_excluded_resting_and_unusable_replicas_are_not_picked() -> None:
    balancer: Balancer[DetectorFacts] = Balancer("detector")
    tried, resting, unread = usable("http://a"), usable("http://b"), usable("http://c")
    resting.breaker.record(Verdict.DOWN, 0.0)
    unread.bundle.mark_stale()
    assert balancer.pick([tried, resting, unread], 1.0, exclude={"http://a"}) is None
    assert balancer.pick([tried, resting, unread], 1.0) is tried


def test_a_replica_whose_rest_is_over_goes_first_and_its_pick_starts_the_trial() -> None:
    balancer: Balancer[DetectorFacts] = Balancer("detector")
    idle, back = usable("http://idle"), usable("http://back")
    back.breaker.record(Verdict.DOWN, 0.0)
    with balancer.sending(back):  # even busier than the idle one
        assert balancer.pick([idle, back], back.breaker.open_until) is back
    assert back.breaker.trial
    assert balancer.pick([idle, back], back.breaker.open_until) is idle  # one trial at a time
