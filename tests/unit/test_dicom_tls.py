"""DICOM TLS on loopback: the listener's port, the results sender, the status server's key.

Real sockets and real pynetdicom associations against the listener's SCP on 127.0.0.1,
with certificates made by openssl for the run (tests/peers/certs.py). The multi-host
round trips with Orthanc and DCMTK are in tests/integration/test_dicom_tls.py.
"""

from __future__ import annotations

import hashlib
import io
import socket
import ssl
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from prometheus_client import CollectorRegistry
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from starlette.testclient import TestClient

from dicom_listener.scp import ListenerConfigError, ScpConfig, StoreScp
from dicom_listener.spool import Spool
from dicom_listener.status import StatusConfigError, status_app, status_keys
from shared.apikeys import ApiKeys
from shared.dicomnet.delivery import results_config_problem
from shared.dicomnet.destinations import AeAddress, SendOutcome, StoreScuDestination
from shared.dicomnet.tls import TlsConfigError, client_context, server_context
from shared.settings import ListenerSettings
from tests.factories import make_dicom, radiograph_pixels
from tests.peers.certs import Leaf, TestCa

LOOPBACK = "127.0.0.1"
SOP = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def listener_cert(ca: TestCa) -> Leaf:
    return ca.issue("listener", hosts=(LOOPBACK, "localhost"))


@pytest.fixture(scope="module")
def pacs_cert(ca: TestCa) -> Leaf:
    return ca.issue("pacs")


@pytest.fixture(scope="module")
def stranger_cert(tmp_path_factory: pytest.TempPathFactory) -> Leaf:
    """Signed by a CA the listener does not trust."""
    return TestCa.create(tmp_path_factory.mktemp("other-ca"), "other CA").issue("stranger")


def _scp(tmp: Path, **tls: object) -> tuple[StoreScp, Counter[str]]:
    settings = ListenerSettings(**tls)  # type: ignore[arg-type]
    refused: Counter[str] = Counter()
    spool = Spool(tmp / "spool", max_instance_bytes=1 << 24, max_total_bytes=1 << 26)
    scp = StoreScp(ScpConfig.from_settings(settings, LOOPBACK, 0), spool,
                   on_stored=lambda _entry: None, on_association=lambda r: refused.update([r]))
    scp.start()
    return scp, refused


@pytest.fixture
def tls_only(
    tmp_path: Path, ca: TestCa, listener_cert: Leaf
) -> Iterator[tuple[StoreScp, Counter[str]]]:
    scp, counts = _scp(tmp_path, listener_tls_cert=listener_cert.cert,
                       listener_tls_key=listener_cert.key, listener_tls_ca=ca.cert,
                       listener_tls_required=True)
    yield scp, counts
    scp.stop()


def _client(ca: TestCa, leaf: Leaf | None) -> ssl.SSLContext:
    return client_context(ca.cert, leaf.cert if leaf else None, leaf.key if leaf else None)


def _echo(port: int, context: ssl.SSLContext | None = None) -> bool:
    """A C-ECHO over a new association (TLS with ``context``); whether it succeeded."""
    ae = AE(ae_title="TESTER")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    tls_args = (context, LOOPBACK) if context is not None else None
    assoc = ae.associate(LOOPBACK, port, ae_title="SPINE", tls_args=tls_args)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0x0000


def test_tls_files_go_together_and_must_be_usable(
    tmp_path: Path, ca: TestCa, listener_cert: Leaf, pacs_cert: Leaf
) -> None:
    with pytest.raises(TlsConfigError, match="LISTENER_TLS_CERT and LISTENER_TLS_KEY"):
        server_context(listener_cert.cert, None, None)
    with pytest.raises(TlsConfigError, match="LISTENER_TLS_CA needs"):
        server_context(None, None, ca.cert)
    with pytest.raises(TlsConfigError, match="LISTENER_TLS_CERT / LISTENER_TLS_KEY"):
        server_context(listener_cert.cert, pacs_cert.key, None)  # not its key
    with pytest.raises(TlsConfigError, match="RESULTS_STORE_TLS_CA"):
        client_context(tmp_path / "missing.crt", None, None)
    assert server_context(None, None, None) is None
    required = ScpConfig.from_settings(ListenerSettings(listener_tls_required=True), LOOPBACK, 0)
    with pytest.raises(ListenerConfigError, match="LISTENER_TLS_REQUIRED needs"):
        required.tls_context()


def test_results_tls_files_without_results_store_tls_are_refused(
    tmp_path: Path, ca: TestCa
) -> None:
    pacs = "PACS@pacs:104"
    problem = results_config_problem(
        ListenerSettings(results_store_ae=pacs, results_store_tls_ca=ca.cert)
    )
    assert problem is not None and "RESULTS_STORE_TLS is off" in problem
    problem = results_config_problem(ListenerSettings(
        results_store_ae=pacs, results_store_tls=True, results_store_tls_ca=tmp_path / "none.crt"
    ))
    assert problem is not None and "RESULTS_STORE_TLS_CA" in problem
    assert results_config_problem(ListenerSettings(
        results_store_ae=pacs, results_store_tls=True, results_store_tls_ca=ca.cert
    )) is None


def test_tls_only_port_takes_verified_callers_and_refuses_the_rest(
    tls_only: tuple[StoreScp, Counter[str]], ca: TestCa, pacs_cert: Leaf,
    stranger_cert: Leaf,
) -> None:
    scp, counts = tls_only
    assert _echo(scp.port, _client(ca, pacs_cert)), "TLS with a client certificate of our CA"
    assert not _echo(scp.port), "plain association on a TLS-only port"
    assert counts["plain_refused"] == 1
    assert not _echo(scp.port, _client(ca, None)), "no client certificate"
    assert not _echo(scp.port, _client(ca, stranger_cert)), "client certificate of another CA"
    assert counts["tls_failed"] == 2
    assert counts["accepted"] == 1


def test_a_stalled_handshake_does_not_hold_the_door(
    tls_only: tuple[StoreScp, Counter[str]], ca: TestCa, pacs_cert: Leaf
) -> None:
    scp, _ = tls_only
    with socket.create_connection((LOOPBACK, scp.port)) as stalled:
        stalled.sendall(b"\x16")  # a TLS record begins... and nothing more comes
        assert _echo(scp.port, _client(ca, pacs_cert))
        stalled.setblocking(False)
        with pytest.raises(BlockingIOError):
            stalled.recv(1)  # still open: the echo did not wait for its handshake to fail


def test_tls_optional_port_takes_plain_and_tls(
    tmp_path: Path, ca: TestCa, listener_cert: Leaf
) -> None:
    scp, _ = _scp(tmp_path, listener_tls_cert=listener_cert.cert,
                  listener_tls_key=listener_cert.key)
    try:
        assert _echo(scp.port)
        assert _echo(scp.port, _client(ca, None)), "no client certificate asked without a CA"
    finally:
        scp.stop()


def _instance() -> dict[str, bytes]:
    """One spine DX the listener accepts, standing in for a result object."""
    ds = pydicom.dcmread(io.BytesIO(make_dicom(radiograph_pixels(64, 64))))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = SOP
    out = io.BytesIO()
    ds.save_as(out)
    return {SOP: out.getvalue()}


def _store(port: int, context: ssl.SSLContext) -> SendOutcome:
    destination = StoreScuDestination(AeAddress("SPINE", LOOPBACK, port),
                                      calling_ae="RESULTS", timeout_s=10, tls=context)
    return destination._send(_instance())  # noqa: SLF001 - the blocking body of send()


def test_results_sent_over_tls_check_the_destination(
    tls_only: tuple[StoreScp, Counter[str]], ca: TestCa, pacs_cert: Leaf, tmp_path: Path
) -> None:
    scp, _ = tls_only
    assert _store(scp.port, _client(ca, pacs_cert)).stored == [SOP]
    # A listener whose certificate names another address than the one we dial.
    elsewhere = ca.issue("elsewhere", hosts=("198.18.0.99",))
    other, _ = _scp(tmp_path / "elsewhere", listener_tls_cert=elsewhere.cert,
                    listener_tls_key=elsewhere.key)
    try:
        assert _store(other.port, _client(ca, pacs_cert)).retry == {
            SOP: "unreachable or TLS refused"}
        unchecked = client_context(ca.cert, None, None, check_hostname=False)
        assert _store(other.port, unchecked).stored == [SOP], "the chain alone, as DCMTK"
    finally:
        other.stop()


def test_the_status_server_needs_an_operator_key_beyond_loopback() -> None:
    with pytest.raises(StatusConfigError, match="OPERATOR_KEYS_SHA256"):
        status_keys("0.0.0.0", ApiKeys({}))
    assert status_keys(LOOPBACK, ApiKeys({})) is None
    key = "a-long-operator-key-for-the-test"
    keys = status_keys("198.18.0.5", ApiKeys({"ops": hashlib.sha256(key.encode()).hexdigest()}))
    app = status_app(lambda: {"status": "ok", "spool": {"instances": 3}}, lambda: [],
                     CollectorRegistry(), keys)
    with TestClient(app) as client:
        for path in ("/metrics", "/studies", "/studies/1.2.3"):
            for headers in ({}, {"X-API-Key": "wrong"}):
                refused = client.get(path, headers=headers)
                assert refused.status_code == 401, path
                assert "operator key" in refused.json()["message"]
        # A probe needs no secret: /health answers, with its status only.
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/health", headers={"X-API-Key": key}).json()["spool"] == {
            "instances": 3}
        assert client.get("/studies", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert client.get("/metrics", headers={"X-API-Key": key}).status_code == 200
