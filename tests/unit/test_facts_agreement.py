"""Bundle facts per replica (gateway.upstream.facts) and their agreement (.agreement)."""

from __future__ import annotations

import asyncio

from gateway.upstream.agreement import FactsAgreement, differences
from gateway.upstream.facts import FactsError, FactsUnreachableError, ReadFacts, ReplicaFacts
from gateway.upstream.replica import Replica
from shared.bundle import BundleKind
from shared.contract import ClassifierFacts


def _facts(threshold: float = 0.449, device: str = "cpu", sha: str = "ab") -> ClassifierFacts:
    return ClassifierFacts(
        name="tiny", kind=BundleKind.USER, threshold=threshold, members=["a", "b"],
        weights=[0.5, 0.5], checkpoints={"/srv/a.pth": sha * 32, "/srv/b.pth": "cd" * 32},
        device=device, backends={"a": "onnx" if device == "cpu" else "torch", "b": "torch"},
    )


def _replica(url: str, facts: ClassifierFacts | None) -> Replica[ClassifierFacts]:
    return Replica(url, bundle=ReplicaFacts(facts=facts, stale=facts is None))


async def _never_read(url: str) -> ReadFacts[ClassifierFacts]:
    raise AssertionError(f"{url}: settling the agreement reads nothing")


def _agreement(
    read=_never_read, unreachable=lambda replica, why: None
) -> FactsAgreement[ClassifierFacts]:
    return FactsAgreement("classifier", read, unreachable)


def test_replicas_that_differ_only_in_how_they_serve_agree() -> None:
    replicas = [_replica("http://a", _facts()), _replica("http://b", _facts(device="cuda:0"))]
    agreement = _agreement()
    agreement.settle(replicas)
    assert agreement.key is not None and all(r.usable for r in replicas)
    assert agreement.agreed_facts(replicas) == replicas[0].facts


def test_two_bundles_and_nothing_agreed_before_refuse_both() -> None:
    replicas = [_replica("http://a", _facts()), _replica("http://b", _facts(0.5))]
    agreement = _agreement()
    agreement.settle(replicas)
    assert agreement.key is None
    assert not any(r.usable for r in replicas) and agreement.agreed_facts(replicas) is None
    assert replicas[0].bundle.disagreement == (
        "replica 1 reports facts that disagree with replica 2: threshold 0.449 vs 0.5"
    )
    assert replicas[1].bundle.disagreement_detail == (
        "classifier replica http://b reports facts that disagree with http://a: "
        "threshold 0.5 vs 0.449"
    )
    public = [text for text, _ in agreement.problems(replicas).values()]
    assert public == [replicas[0].bundle.disagreement, replicas[1].bundle.disagreement]


def test_the_agreed_facts_win_while_a_replica_reports_them_then_a_rollout_completes() -> None:
    old, new = _replica("http://old", _facts()), _replica("http://new", _facts(0.5))
    agreement = _agreement()
    agreement.settle([old])
    agreement.settle([old, new])
    assert old.usable and not new.usable
    assert new.bundle.disagreement is not None and "0.5 vs 0.449" in new.bundle.disagreement
    old.bundle.mark_stale()  # the old replica went away (not ready)
    agreement.settle([old, new])
    assert new.usable  # the rest agree: theirs are the agreed facts now
    old.bundle.stale = False  # it comes back with the old bundle: now it is the odd one
    agreement.settle([old, new])
    assert new.usable and not old.usable


def test_checkpoint_paths_and_hashes_are_not_quoted_to_clients() -> None:
    text = differences(_facts(sha="ab"), _facts(sha="ef"))
    assert text == "checkpoints differ"
    assert "/srv" not in text and "ab" * 32 not in text


def test_stale_or_unreadable_replicas_take_no_part() -> None:
    fresh, unread = _replica("http://a", _facts()), _replica("http://b", None)
    broken = _replica("http://c", None)
    broken.bundle.unreadable("GET /config answered HTTP 404")
    agreement = _agreement()
    agreement.settle([fresh, unread, broken])
    assert fresh.usable and not unread.usable and not broken.usable
    assert unread.bundle.disagreement is None and broken.bundle.disagreement is None
    assert agreement.problems([fresh, unread, broken]) == {
        "http://c": ("replica 3: GET /config answered HTTP 404",
                     "classifier replica http://c: GET /config answered HTTP 404"),
    }


def test_facts_say_whether_they_are_news_and_which_versions_they_list() -> None:
    bundle: ReplicaFacts[ClassifierFacts] = ReplicaFacts()
    assert bundle.lists("anything")  # nothing read yet: no version to compare with
    assert bundle.learned(ReadFacts(_facts(), frozenset({"v1"})))
    assert bundle.usable and bundle.lists("v1") and not bundle.lists("v2")
    assert not bundle.learned(ReadFacts(_facts(), frozenset({"v1"})))  # the same again
    assert bundle.unreadable("no versions") and not bundle.unreadable("no versions")
    assert bundle.facts is None and not bundle.stale and not bundle.usable
    assert bundle.learned(ReadFacts(_facts(), frozenset({"v1"})))  # fixed: news again
    bundle.mark_stale()
    assert not bundle.usable and bundle.facts == _facts()  # kept until re-read


async def test_refresh_reads_wanted_replicas_once_each_then_settles() -> None:
    """One reader at a time: a refresh that waited on the lock reads only what is still
    wanted (here the unreachable replica, whose facts stay stale)."""
    reads: list[str] = []
    down: list[tuple[str, str]] = []
    answers = {
        "http://a": ReadFacts(_facts(), frozenset({"v1"})),
        "http://b": ReadFacts(_facts(0.5), frozenset({"v2"})),
        "http://c": FactsError("its model metadata lists no versions"),
        "http://d": FactsUnreachableError("GET /v2/models/m/config failed (ConnectError)"),
    }

    async def read(url: str) -> ReadFacts[ClassifierFacts]:
        reads.append(url)
        await asyncio.sleep(0.01)
        answer = answers[url]
        if isinstance(answer, Exception):
            raise answer
        return answer

    agreement = _agreement(read, lambda replica, why: down.append((replica.url, why)))
    replicas = [_replica(url, None) for url in answers]
    await asyncio.gather(*(agreement.refresh(replicas, lambda r: r.bundle.stale)
                           for _ in range(3)))
    assert sorted(reads) == ["http://a", "http://b", "http://c"] + ["http://d"] * 3
    a, b, c, d = replicas
    assert agreement.key is None and not a.usable and not b.usable  # two bundles: none agreed
    assert c.bundle.error == "its model metadata lists no versions" and not c.bundle.stale
    assert d.bundle.stale and d.bundle.error is None  # down, not a facts problem: read again
    assert down == [("http://d", "unreachable (GET /v2/models/m/config failed (ConnectError))")] * 3


async def test_refresh_with_nothing_wanted_reads_nothing() -> None:
    replica = _replica("http://a", None)
    await _agreement().refresh([replica], lambda r: False)  # _never_read would fail
    assert replica.bundle.stale
