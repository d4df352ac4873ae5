"""Model replicas found by DNS on test hosts, followed while requests flow.

Test hosts (tests/peers/hosts.py): ``dns`` (dnsmasq), ``gateway``, ``classifier-1..3``
and ``detector``, each service bound to its own address. The gateway's URLs are
``dns+http://classifier.spine.test:8001`` and ``dns+http://detector.spine.test:8002``,
and its host resolves through dnsmasq, which serves one A record per replica with a
1 s TTL (a Kubernetes headless Service). Under a steady load of 8 concurrent uploads:

1. with classifier-1 and -2 in DNS, both serve requests and classifier-3 none;
2. classifier-3 added to DNS: it gets requests (how long that took is printed);
3. classifier-1 dropped from DNS and stopped with SIGTERM at the same moment (the order
   Kubernetes uses: endpoint removal and SIGTERM together): no request fails, and the
   gateway drops it from its replicas (how long is printed).

Every answer is counted by status and printed (``-s``); docs/OPERATIONS.md quotes them.
The only bounds on time are hang guards far above the documented refresh period.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.factories import make_dicom, radiograph_pixels
from tests.integration.multihost import (
    Load,
    Secrets,
    replica_urls,
    served,
    start_gateway,
    start_model_service,
    wait_all_ready,
)
from tests.peers.dns import DOMAIN, start_dnsmasq
from tests.peers.hosts import HostNetwork

pytestmark = pytest.mark.timeout(900)

CLASSIFIER = f"classifier.{DOMAIN}"
DETECTOR = f"detector.{DOMAIN}"
# A hang guard, not a performance bar: the documented refresh period is 10 s.
FOLLOW_GUARD_S = 60.0
PHASE_ANSWERS = 24


def _until(check: Callable[[], bool], what: str, since: float) -> float:
    """Seconds from ``since`` until ``check()`` holds (polled every 0.2 s)."""
    while not check():
        if time.monotonic() - since > FOLLOW_GUARD_S:
            raise AssertionError(f"{what}: not after {FOLLOW_GUARD_S} s")
        time.sleep(0.2)
    return time.monotonic() - since


def test_replicas_follow_dns_under_load(
    hosts: HostNetwork, tiny_bundle: Path, tmp_path: Path
) -> None:
    keys = Secrets()
    dns_host, gateway_host = hosts.add("dns"), hosts.add("gateway")
    classifier_hosts = [hosts.add(f"classifier-{n}") for n in (1, 2, 3)]
    detector_host = hosts.add("detector")
    c1, c2, c3 = (h.address for h in classifier_hosts)
    dns = start_dnsmasq(dns_host, tmp_path / "dns",
                        {CLASSIFIER: [c1, c2], DETECTOR: [detector_host.address]})
    gateway_host.resolve_with(dns_host.address)

    classifiers = [start_model_service(h, "classifier", tiny_bundle, tmp_path, keys)
                   for h in classifier_hosts]
    detector = start_model_service(detector_host, "detector", tiny_bundle, tmp_path, keys)
    gateway = start_gateway(
        gateway_host, tmp_path, keys, classifiers=f"dns+http://{CLASSIFIER}:8001",
        detectors=f"dns+http://{DETECTOR}:8002", READINESS_INTERVAL_S="0.5",
    )
    wait_all_ready(*classifiers, detector, gateway)
    url = lambda address: f"http://{address}:8001"  # noqa: E731

    load = Load(f"{gateway.url}/upload", make_dicom(radiograph_pixels(480, 360, seed=5)))
    load.start()
    try:
        load.wait_for(PHASE_ANSWERS)
        steady = load.by_status()
        assert replica_urls(gateway, keys, "classifier") == [url(c1), url(c2)]
        assert served(classifiers[0]) > 0 and served(classifiers[1]) > 0
        assert served(classifiers[2]) == 0, "not in DNS: never called"

        added_at = dns.set(CLASSIFIER, [c1, c2, c3])
        listed_s = _until(lambda: url(c3) in replica_urls(gateway, keys, "classifier"),
                          "classifier-3 in the gateway's replicas", added_at)
        serving_s = _until(lambda: served(classifiers[2]) > 0,
                           "classifier-3 serving", added_at)
        load.wait_for(PHASE_ANSWERS)

        removed_at = dns.set(CLASSIFIER, [c2, c3])
        classifiers[0].stop()  # SIGTERM, as the endpoint goes: Kubernetes' order
        dropped_s = _until(lambda: url(c1) not in replica_urls(gateway, keys, "classifier"),
                           "classifier-1 out of the gateway's replicas", removed_at)
        load.wait_for(PHASE_ANSWERS)
    finally:
        total = load.stop()
    print(f"\nanswers by status: steady {dict(steady)}, whole run {dict(total)}; "
          f"classifier-3 listed {listed_s:.1f} s and serving {serving_s:.1f} s after its "
          f"record was added; classifier-1 dropped {dropped_s:.1f} s after its record was "
          f"removed; served by classifier-1/2/3 (before its stop for 1): "
          f"{[served(c) if c.process.poll() is None else '-' for c in classifiers]}")
    assert set(total) == {200}, f"every upload answered 200: {dict(total)}"
    assert served(classifiers[2]) > 0
