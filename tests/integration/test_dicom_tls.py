"""DICOM over TLS between test hosts: a real Orthanc, the listener, DCMTK.

Test hosts (tests/peers/hosts.py): ``pacs`` (Orthanc), ``listener``, ``gateway``,
``classifier``, ``detector``. One CA made for the run signs every certificate
(tests/peers/certs.py), each naming its host's address. Orthanc has DICOM TLS on
(``DicomTlsEnabled``: its DICOM port speaks TLS only, a client certificate required) and
calls our listener over TLS (``UseDicomTls``); the listener takes TLS only
(``LISTENER_TLS_REQUIRED``) from callers whose certificate chains to the CA, and sends
the results back to Orthanc by C-STORE over TLS (``RESULTS_STORE_TLS``, with its own
certificate, Orthanc's checked against the CA and its address).

- Orthanc sends a spine study to the listener: its SR and presentation state arrive in
  Orthanc, whose DICOM port takes TLS only (a plain association to it is refused here).
- A plain association to the listener is refused and counted; so is DCMTK's plain
  ``storescu``; ``storescu +tls`` with a certificate of the CA is analysed and answered.
- The status server, bound to the listener host's address, needs the operator key for
  ``/metrics``, ``/studies`` and the details of ``/health``.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.integration.listener import Listener, metric, start_listener
from tests.integration.multihost import (
    Secrets,
    start_gateway,
    start_model_service,
    wait_all_ready,
)
from tests.integration.test_dicom_listener import _phantom, study_of, wait_for_results
from tests.peers.certs import Leaf, TestCa
from tests.peers.hosts import HostNetwork, host_network
from tests.peers.orthanc import Orthanc, require_orthanc
from tests.tools import require_tools

pytestmark = pytest.mark.timeout(900)

LISTENER_PORT = 11112
MODALITY = "SPINE"
ALLOWED = "ORTHANC,STORESCU,PLAIN"


@dataclass
class TlsSite:
    net: HostNetwork
    ca: TestCa
    orthanc: Orthanc
    listener: Listener
    dcmtk: Leaf
    keys: Secrets


def _orthanc_tls(leaf: Leaf, ca: TestCa) -> dict[str, object]:
    """Orthanc 1.10's DICOM TLS options (book: faq/dicom-tls; /etc/orthanc/orthanc.json)."""
    return {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(leaf.cert),
        "DicomTlsPrivateKey": str(leaf.key),
        "DicomTlsTrustedCertificates": str(ca.cert),
        "DicomTlsRemoteCertificateRequired": True,
    }


@pytest.fixture(scope="module")
def site(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSite]:
    require_orthanc()
    require_tools("storescu")
    root = tmp_path_factory.mktemp("dicom-tls")
    with host_network() as net:
        pacs, listener_host, gateway_host, classifier_host, detector_host = (
            net.add(name) for name in ("pacs", "listener", "gateway", "classifier", "detector"))
        ca = TestCa.create(root / "pki")
        pacs_cert = ca.issue("pacs", hosts=(pacs.address,))
        listener_cert = ca.issue("listener", hosts=(listener_host.address,))
        keys = Secrets()
        classifier = start_model_service(classifier_host, "classifier", tiny_bundle, root, keys)
        detector = start_model_service(detector_host, "detector", tiny_bundle, root, keys)
        gateway = start_gateway(
            gateway_host, root, keys, classifiers=f"http://{classifier_host.address}:8001",
            detectors=f"http://{detector_host.address}:8002")
        orthanc = Orthanc(root / "orthanc", address=pacs.address, wrap=tuple(pacs.command([])),
                          extra=_orthanc_tls(pacs_cert, ca))
        orthanc.start()
        wait_all_ready(classifier, detector, gateway)
        listener = start_listener(
            root / "listener", gateway.url, address=listener_host.address,
            wrap=tuple(listener_host.command([])), status_headers=keys.operator_header,
            LISTENER_ALLOWED_AE_TITLES=ALLOWED, OPERATOR_KEYS_SHA256=keys.operator_keys_sha256(),
            LISTENER_TLS_CERT=str(listener_cert.cert), LISTENER_TLS_KEY=str(listener_cert.key),
            LISTENER_TLS_CA=str(ca.cert), LISTENER_TLS_REQUIRED="true",
            RESULTS_STORE_AE=orthanc.store_ae, RESULTS_STORE_TLS="true",
            RESULTS_STORE_TLS_CA=str(ca.cert), RESULTS_STORE_TLS_CERT=str(listener_cert.cert),
            RESULTS_STORE_TLS_KEY=str(listener_cert.key),
        )
        try:
            orthanc.add_modality(MODALITY, listener.ae_title, listener.address, listener.port,
                                 tls=True)
            yield TlsSite(net, ca, orthanc, listener, ca.issue("dcmtk"), keys)
        finally:
            listener.stop()
            orthanc.stop()


def _plain_echo(host: str, port: int, called: str) -> bool:
    """A plain (no TLS) C-ECHO association from the test process; whether it was accepted."""
    ae = AE(ae_title="PLAIN")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    assoc = ae.associate(host, port, ae_title=called)
    established = assoc.is_established
    if established:
        assoc.release()
    return established


def test_orthanc_sends_over_tls_and_gets_the_results_back_over_tls(site: TlsSite) -> None:
    study, files, _ = study_of(_phantom(0))
    ids = [site.orthanc.upload(data) for data in files]
    started = time.monotonic()
    answer = site.orthanc.store_to_modality(MODALITY, ids)
    assert answer.get("FailedInstancesCount", 0) == 0, answer
    found = wait_for_results(site.orthanc, study, 1)
    print(f"\n[dicom tls] Orthanc -> listener (TLS) -> SR + PR back in Orthanc (TLS): "
          f"{time.monotonic() - started:.2f} s; {sorted(found.values())}")
    assert not _plain_echo(site.orthanc.address, site.orthanc.dicom_port, "ORTHANC"), (
        "Orthanc's DICOM port takes TLS only: the results came over TLS")
    assert "results_delivery" in site.listener.health()
    assert "over TLS" in site.listener.health()["results_delivery"]["destinations"]


def test_plain_associations_to_the_tls_only_listener_are_refused(
    site: TlsSite, tmp_path: Path
) -> None:
    before = metric(site.listener.metrics(),
                    'spine_listener_associations_total{result="plain_refused"}')
    assert not _plain_echo(site.listener.address, site.listener.port, "SPINE")
    _, (data,), _ = study_of(_phantom(1))
    path = tmp_path / "plain.dcm"
    path.write_bytes(data)
    plain = subprocess.run(
        ["storescu", "-aet", "STORESCU", "-aec", "SPINE", site.listener.address,
         str(site.listener.port), str(path)], capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0, plain.stdout + plain.stderr
    after = metric(site.listener.metrics(),
                   'spine_listener_associations_total{result="plain_refused"}')
    assert after - before == 2
    assert "refused: LISTENER_TLS_REQUIRED" in site.listener.log_text()


def test_dcmtk_storescu_over_tls_is_analysed(site: TlsSite, tmp_path: Path) -> None:
    study, (data,), (sop,) = study_of(_phantom(0))  # uncompressed, as storescu proposes
    path = tmp_path / "tls.dcm"
    path.write_bytes(data)
    pacs = site.net.hosts["pacs"]
    stored = subprocess.run(pacs.command([
        "storescu", "+tls", str(site.dcmtk.key), str(site.dcmtk.cert), "+cf", str(site.ca.cert),
        "-aet", "STORESCU", "-aec", "SPINE", site.listener.address, str(site.listener.port),
        str(path)]), capture_output=True, text=True, timeout=60)
    assert stored.returncode == 0, stored.stdout + stored.stderr
    report = site.listener.wait_for_study(study)
    assert (report["analysed"], report["failed"]) == (1, 0)
    assert report["instances"][0]["sop_instance_uid"] == sop
    wait_for_results(site.orthanc, study, 1)


def test_the_status_server_beyond_loopback_needs_the_operator_key(site: TlsSite) -> None:
    for path in ("/metrics", "/studies"):
        refused = httpx.get(site.listener.status + path, timeout=10)
        assert refused.status_code == 401, path
    assert httpx.get(site.listener.status + "/health", timeout=10).json() == {"status": "ok"}
    assert site.listener.health()["ae_title"] == "SPINE", "details with the key"
