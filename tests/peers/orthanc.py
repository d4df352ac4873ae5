"""A real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) as a plain process, for tests.

Started from a generated JSON configuration in a temporary folder (its own storage and
index, free loopback ports, no remote access, no system service), so a test owns it
whole: it can stop it while results are pending and start it again on the same ports.
On a test host (tests/peers/hosts.py: ``address`` and ``wrap`` = ``host.command([])``)
it takes calls from the test network, and ``extra`` adds configuration (DICOM TLS).
The REST helpers are the few the tests need to check what arrived, and where.
Under ``CI=1`` a missing Orthanc fails naming the Debian packages (:mod:`tests.tools`).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.stack import free_port, spawn_answering, stop_process
from tests.tools import unavailable

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
PACKAGES = "orthanc orthanc-dicomweb"
AET = "ORTHANC"


def require_orthanc() -> None:
    """Orthanc and its DICOMweb plugin are installed, or skip (locally) / fail (CI)."""
    missing = [str(path) for path in (ORTHANC, DICOMWEB_PLUGIN) if not path.exists()]
    if missing:
        unavailable(f"missing {', '.join(missing)}: apt-get install {PACKAGES}")


@dataclass
class Orthanc:
    """One Orthanc process; ``url`` is its REST root, ``dicomweb`` its DICOMweb root."""

    root: Path
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    aet: str = AET
    modalities: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    address: str = "127.0.0.1"
    wrap: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root: STOW-RS is ``POST {dicomweb}/studies``."""
        return f"{self.url}/dicom-web"

    @property
    def store_ae(self) -> str:
        """Its DICOM address as ``RESULTS_STORE_AE`` spells it: ``AE@host:port``."""
        return f"{self.aet}@{self.address}:{self.dicom_port}"

    @property
    def log_path(self) -> Path:
        return self.root / "orthanc.log"

    def config(self) -> dict[str, Any]:
        return {
            "Name": "spine-tests",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            # Loopback only, but on a test host its callers are on the test network.
            "RemoteAccessAllowed": self.address != "127.0.0.1",
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,  # any calling AE may C-STORE (our delivery)
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": self.modalities,  # {"NAME": ["AET", "127.0.0.1", port]}
            "DicomModalitiesInDatabase": False,
            "SaveJobs": False,
            "StableAge": 1,
            "ConcurrentJobs": 2,
            "HttpThreadsCount": 8,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
            **self.extra,
        }

    def start(self, timeout_s: float = 30.0) -> None:
        """Start (or start again, same ports and storage) and wait until REST and DICOMweb answer."""
        if self.process is not None and self.process.poll() is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        # The plugin answers QIDO-RS only once it is loaded.
        self.process = spawn_answering(
            [*self.wrap, str(ORTHANC), str(config)], self.log_path, self.root,
            f"{self.dicomweb}/studies", "Orthanc", timeout_s,
        )

    def stop(self) -> None:
        """Stop the process (storage kept, so :meth:`start` brings the same archive back)."""
        stop_process(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- REST helpers ---------------------------------------------------------------------

    def rest(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = httpx.request(method, self.url + path, timeout=30.0, **kwargs)
        response.raise_for_status()
        return response

    def upload(self, data: bytes) -> str:
        """Store one Part 10 file through REST (``POST /instances``); its Orthanc id."""
        return self.rest("POST", "/instances", content=data).json()["ID"]

    def find_instance(self, sop_uid: str) -> str | None:
        """The Orthanc id of the instance with this SOP Instance UID, or None."""
        found = self.rest("POST", "/tools/lookup", content=sop_uid).json()
        return next((item["ID"] for item in found if item["Type"] == "Instance"), None)

    def tags(self, instance_id: str) -> dict[str, Any]:
        """The instance's tags by keyword (``/instances/{id}/simplified-tags``)."""
        return self.rest("GET", f"/instances/{instance_id}/simplified-tags").json()

    def study_instances(self, study_uid: str) -> dict[str, str]:
        """SOP Instance UID -> SOP Class UID of every instance of the study."""
        found = self.rest("POST", "/tools/find", json={
            "Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": False,
        }).json()
        out = {}
        for instance_id in found:
            tags = self.tags(instance_id)
            out[tags["SOPInstanceUID"]] = tags["SOPClassUID"]
        return out

    def wait_for_instance(self, sop_uid: str, timeout_s: float = 30.0) -> str:
        """The Orthanc id of ``sop_uid`` once it has arrived (RuntimeError after the timeout)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (found := self.find_instance(sop_uid)) is not None:
                return found
            time.sleep(0.1)
        raise RuntimeError(f"instance {sop_uid} not in Orthanc after {timeout_s} s")

    def add_modality(self, name: str, aet: str, host: str, port: int, *, tls: bool = False) -> None:
        """Declare a DICOM peer (e.g. our listener) so ``/modalities/{name}/store`` reaches it;
        ``tls``: Orthanc calls it over DICOM TLS (``UseDicomTls``)."""
        modality: dict[str, Any] = {"AET": aet, "Host": host, "Port": port}
        if tls:
            modality["UseDicomTls"] = True
        self.rest("PUT", f"/modalities/{name}", json=modality)
        self.modalities[name] = modality  # kept on restart

    def store_to_modality(self, name: str, resources: list[str]) -> dict[str, Any]:
        """Orthanc sends these instances/series/studies to the modality by C-STORE (sync)."""
        return self.rest(
            "POST", f"/modalities/{name}/store",
            json={"Resources": resources, "Synchronous": True},
        ).json()

    def clear(self) -> None:
        """Delete every patient (and so everything), for tests sharing one Orthanc."""
        for patient in self.rest("GET", "/patients").json():
            self.rest("DELETE", f"/patients/{patient}")


def start_orthanc(
    root: Path, modalities: Mapping[str, list[object]] | None = None
) -> Orthanc:
    """A started Orthanc under ``root`` (skip or, under CI, fail when it is not installed)."""
    require_orthanc()
    orthanc = Orthanc(root, modalities=dict(modalities or {}))
    orthanc.start()
    return orthanc


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """One real Orthanc for the session; tests tell their data apart by study UID."""
    running = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield running
    running.stop()


@pytest.fixture
def orthanc_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Starts Orthancs of its own (e.g. to stop one mid-test); all stopped afterwards."""
    started: list[Orthanc] = []

    def make(modalities: Mapping[str, list[object]] | None = None) -> Orthanc:
        started.append(start_orthanc(tmp_path_factory.mktemp("orthanc"), modalities))
        return started[-1]

    yield make
    for running in started:
        running.stop()
