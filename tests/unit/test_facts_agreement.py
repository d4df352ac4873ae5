"""Agreement of replicas' bundle facts (gateway.upstream.facts.agree) on the gateway's own Replica."""

from __future__ import annotations

from gateway.upstream.client import Replica
from gateway.upstream.facts import agree, differences
from shared.bundle import BundleKind
from shared.contract import ClassifierFacts


def _facts(threshold: float = 0.449, device: str = "cpu", sha: str = "ab") -> ClassifierFacts:
    return ClassifierFacts(
        name="tiny", kind=BundleKind.USER, threshold=threshold, members=["a", "b"],
        weights=[0.5, 0.5], checkpoints={"/srv/a.pth": sha * 32, "/srv/b.pth": "cd" * 32},
        device=device, backends={"a": "onnx" if device == "cpu" else "torch", "b": "torch"},
    )


def _replica(url: str, facts: ClassifierFacts | None) -> Replica:
    return Replica(url, facts=facts, facts_stale=facts is None)


def test_replicas_that_differ_only_in_how_they_serve_agree() -> None:
    replicas = [_replica("http://a", _facts()), _replica("http://b", _facts(device="cuda:0"))]
    agreed = agree("classifier", replicas, None)
    assert agreed is not None and all(r.usable for r in replicas)


def test_two_bundles_and_nothing_agreed_before_refuse_both() -> None:
    replicas = [_replica("http://a", _facts()), _replica("http://b", _facts(0.5))]
    assert agree("classifier", replicas, None) is None
    assert not any(r.usable for r in replicas)
    assert replicas[0].disagreement == (
        "replica 1 reports facts that disagree with replica 2: threshold 0.449 vs 0.5"
    )
    assert replicas[1].disagreement_detail == (
        "classifier replica http://b reports facts that disagree with http://a: "
        "threshold 0.5 vs 0.449"
    )


def test_the_agreed_facts_win_while_a_replica_reports_them_then_a_rollout_completes() -> None:
    old, new = _replica("http://old", _facts()), _replica("http://new", _facts(0.5))
    agreed = agree("classifier", [old], None)
    agreed = agree("classifier", [old, new], agreed)
    assert old.usable and not new.usable
    assert new.disagreement is not None and "0.5 vs 0.449" in new.disagreement
    old.facts_stale = True  # the old replica went away (not ready)
    agreed = agree("classifier", [old, new], agreed)
    assert new.usable  # the rest agree: theirs are the agreed facts now
    old.facts_stale = False  # it comes back with the old bundle: now it is the odd one
    agree("classifier", [old, new], agreed)
    assert new.usable and not old.usable


def test_checkpoint_paths_and_hashes_are_not_quoted_to_clients() -> None:
    text = differences(_facts(sha="ab"), _facts(sha="ef"))
    assert text == "checkpoints differ"
    assert "/srv" not in text and "ab" * 32 not in text


def test_stale_or_unreadable_replicas_take_no_part() -> None:
    fresh, unread = _replica("http://a", _facts()), _replica("http://b", None)
    broken = _replica("http://c", None)
    broken.facts_stale, broken.facts_error = False, "GET /config answered HTTP 404"
    agree("classifier", [fresh, unread, broken], None)
    assert fresh.usable and not unread.usable and not broken.usable
    assert unread.disagreement is None and broken.disagreement is None
