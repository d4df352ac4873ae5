"""The reading room's Orthanc: its configuration, written for a plain process.

Debian's ``orthanc`` + ``orthanc-dicomweb`` run as a child of ``spine reading-room``
(never as the system service), storage and index in one folder that survives restarts.
A Lua ``OnStoredInstance`` hook sends every image that arrives (storescu, Orthanc's
upload page, another modality) to our DICOM listener; the results the listener sends
back (calling AE ``RESULTS_CALLING_AE``) and non-image objects are not sent again.

Loopback (the default): Orthanc refuses HTTP from other hosts (RemoteAccessAllowed
false), and DICOM only from the AE titles declared here, on 127.0.0.1 (Orthanc 1.10
cannot bind its DICOM port to one address, so the check is by calling AE and host).
Beyond loopback: HTTP only with a user of ``READING_ROOM_USERS`` (HTTP basic auth on
everything, the viewer's DICOMweb included); DICOM senders on other hosts must still be
declared (``PUT /modalities/{name}``, authenticated).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.lockdown import is_loopback, weak_secret

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
LISTENER_MODALITY = "SPINE"
AUTOROUTE = """-- written by `spine reading-room`: every image that arrives goes to our listener
function OnStoredInstance(instanceId, tags, metadata, origin)
  if origin and origin['RequestOrigin'] == 'DicomProtocol'
     and origin['RemoteAet'] == '%(results_aet)s' then
    return  -- our own results, sent back by the listener
  end
  local modality = tags['Modality'] or ''
  if modality == 'SR' or modality == 'PR' or modality == 'KO' then
    return  -- not an image
  end
  SendToModality(instanceId, '%(modality)s')
end
"""


class ReadingRoomConfigError(ValueError):
    """The reading room cannot start as asked (e.g. beyond loopback without users)."""


def parse_users(text: str | None) -> dict[str, str]:
    """``READING_ROOM_USERS`` (``user:password,user2:password2``) -> {user: password}."""
    users: dict[str, str] = {}
    for pair in (text or "").split(","):
        if not pair.strip():
            continue
        name, sep, password = pair.strip().partition(":")
        if not sep or not name or not password:
            raise ReadingRoomConfigError("READING_ROOM_USERS is user:password[,user:password]")
        if why := weak_secret(password):
            raise ReadingRoomConfigError(f"the password of {name!r} is {why}")
        users[name] = password
    return users


@dataclass
class OrthancPlan:
    """Where the reading room's Orthanc keeps its data and how it is reached."""

    data_dir: Path
    host: str
    http_port: int = 8042
    dicom_port: int = 4242
    aet: str = "ORTHANC"
    listener_aet: str = "SPINE"
    listener_port: int = 11112
    results_aet: str = "SPINE"
    users: dict[str, str] = field(default_factory=dict)
    senders: dict[str, str] = field(default_factory=lambda: {"STORESCU": "STORESCU"})

    def check(self) -> None:
        """Refuse beyond loopback without authentication (Orthanc holds patient images)."""
        if not is_loopback(self.host) and not self.users:
            raise ReadingRoomConfigError(
                f"refusing to open the reading room on {self.host} (beyond loopback) "
                "without authentication: set READING_ROOM_USERS=user:password (a long "
                "random password), or bind 127.0.0.1"
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def store_ae(self) -> str:
        """Its DICOM address as ``RESULTS_STORE_AE`` spells it."""
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def config(self) -> dict[str, Any]:
        storage = self.data_dir / "orthanc"
        modalities: dict[str, list[object]] = {
            LISTENER_MODALITY: [self.listener_aet, "127.0.0.1", self.listener_port],
        }
        if self.results_aet != self.listener_aet:
            modalities["SPINE-RESULTS"] = [self.results_aet, "127.0.0.1", self.listener_port]
        for name, aet in self.senders.items():
            modalities.setdefault(name, [aet, "127.0.0.1", 104])
        return {
            "Name": "spine-reading-room",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": not is_loopback(self.host),
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": False,  # only the modalities below, from 127.0.0.1
            "DicomAlwaysAllowEcho": True,
            "DicomCheckModalityHost": True,
            "DicomModalities": modalities,
            "DicomModalitiesInDatabase": False,
            "LuaScripts": [str(self.data_dir / "autoroute.lua")],
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
            "SaveJobs": False,
            "StableAge": 5,
        }

    def write(self) -> Path:
        """The configuration and the Lua hook in the data folder; the configuration's path."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "autoroute.lua").write_text(
            AUTOROUTE % {"results_aet": self.results_aet, "modality": LISTENER_MODALITY}
        )
        path = self.data_dir / "orthanc.json"
        path.write_text(json.dumps(self.config(), indent=2))
        path.chmod(0o600)  # holds the users' passwords
        return path

    def ready_url(self) -> str:
        """A URL that answers 200 once DICOMweb is up (credentials in it when needed)."""
        if self.users:
            name, password = next(iter(self.users.items()))
            return f"http://{name}:{password}@127.0.0.1:{self.http_port}/dicom-web/studies"
        return f"{self.url}/dicom-web/studies"
