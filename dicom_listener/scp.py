"""The DICOM side: a pynetdicom C-ECHO / C-STORE SCP that spools what it receives.

Association rules: the called AE title must be ours (``LISTENER_AE_TITLE``, unless
``LISTENER_CHECK_CALLED_AE`` is off); the calling AE title must be in
``LISTENER_ALLOWED_AE_TITLES``, or, with an empty list, anything goes, which is allowed
only on a loopback address (:func:`check_exposure`). Presentation contexts: the storage
SOP classes input selection can accept (its radiograph classes and the Secondary
Capture ones, from the same rules file as the gateway's), each with every transfer
syntax our decoder handles (``shared.dicom.codecs.SUPPORTED_SYNTAXES``); anything else
is rejected at negotiation, so a sender knows before it sends. Transport: plain, DICOM
TLS (``LISTENER_TLS_CERT`` / ``_KEY``, client certificates with ``LISTENER_TLS_CA``) or
TLS only (``LISTENER_TLS_REQUIRED``), decided per connection by
:mod:`dicom_listener.transport`.

A C-STORE answers Success (0x0000) only after :class:`~dicom_listener.spool.Spool` has
the instance on disk; a full spool or an oversize instance is A700 (out of resources),
an instance without study / instance UIDs is A900 (does not match the SOP class), a
disk error is A700 too: the sender keeps the instance and retries.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_listener.spool import Spool, SpoolEntry, SpoolFull, read_uids
from dicom_listener.transport import PolicyAssociationServer, TransportPolicy
from shared import tracing
from shared.dicom.codecs import SUPPORTED_SYNTAXES
from shared.dicom.selection import load_rules
from shared.dicomnet.tls import TlsConfigError, server_context
from shared.lockdown import is_loopback
from shared.settings import ListenerSettings

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900


class ListenerConfigError(ValueError):
    """A listener configuration that must not start (names the variable)."""


@dataclass(frozen=True)
class ScpConfig:
    ae_title: str
    host: str
    port: int
    allowed_calling: tuple[str, ...]
    check_called: bool
    max_associations: int
    sop_classes: tuple[str, ...]
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_required: bool = False

    @classmethod
    def from_settings(cls, settings: ListenerSettings, host: str, port: int) -> ScpConfig:
        rules = load_rules(settings.input_selection_rules)
        classes = [c.uid for c in rules.sop_classes.accept]
        classes += [c.uid for c in rules.sop_classes.secondary_capture_classes]
        config = cls(
            ae_title=settings.listener_ae_title, host=host, port=port,
            allowed_calling=tuple(settings.listener_allowed_ae_titles),
            check_called=settings.listener_check_called_ae,
            max_associations=settings.listener_max_associations,
            sop_classes=tuple(dict.fromkeys(classes)),
            tls_cert=settings.listener_tls_cert, tls_key=settings.listener_tls_key,
            tls_ca=settings.listener_tls_ca, tls_required=settings.listener_tls_required,
        )
        check_exposure(config)
        return config

    def tls_context(self) -> ssl.SSLContext | None:
        """The port's TLS context (None: plain only); a file that cannot be used stops us."""
        try:
            context = server_context(self.tls_cert, self.tls_key, self.tls_ca)
        except TlsConfigError as exc:
            raise ListenerConfigError(str(exc)) from exc
        if context is None and self.tls_required:
            raise ListenerConfigError(
                "LISTENER_TLS_REQUIRED needs LISTENER_TLS_CERT and LISTENER_TLS_KEY"
            )
        return context


def check_exposure(config: ScpConfig) -> None:
    """Any calling AE title is allowed on loopback only."""
    if not config.allowed_calling and not is_loopback(config.host):
        raise ListenerConfigError(
            f"the DICOM listener binds {config.host}, beyond loopback, with no "
            "LISTENER_ALLOWED_AE_TITLES: set the calling AE titles it may accept"
        )


class StoreScp:
    """The pynetdicom server; ``on_stored`` is called (in an association thread) with each
    spooled entry, after it is on disk and before Success goes out."""

    def __init__(
        self, config: ScpConfig, spool: Spool, on_stored: Callable[[SpoolEntry], None],
        on_association: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.spool = spool
        self.on_stored = on_stored
        self.on_association = on_association or (lambda _result: None)
        self.policy = TransportPolicy(
            config.tls_context(), config.tls_required, on_refused=self.on_association
        )
        self.ae = self._build_ae()
        self._server: Any = None

    def _build_ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.require_called_aet = self.config.check_called
        ae.require_calling_aet = list(self.config.allowed_calling)
        ae.add_supported_context(Verification)
        syntaxes: Sequence[str] = [str(uid) for uid in SUPPORTED_SYNTAXES]
        for sop_class in self.config.sop_classes:
            ae.add_supported_context(sop_class, syntaxes)
        return ae

    def start(self) -> None:
        handlers = [
            (evt.EVT_C_ECHO, lambda _event: SUCCESS),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ACCEPTED, lambda _event: self.on_association("accepted")),
            (evt.EVT_REJECTED, self._on_rejected),
        ]
        # AE.start_server(block=False) with our server class: TLS is decided per connection.
        server = self.ae.make_server(
            (self.config.host, self.config.port), evt_handlers=handlers,
            server_class=PolicyAssociationServer, policy=self.policy,
        )
        threading.Thread(target=server.serve_forever, name="dicom-accept", daemon=True).start()
        self.ae._servers.append(server)  # noqa: SLF001 - as start_server does; shutdown() removes it
        self._server = server
        log.info(
            "DICOM listener %s on %s:%d, %s (calling AE titles: %s)", self.config.ae_title,
            self.config.host, self.port, self.transport_description,
            ", ".join(self.config.allowed_calling) or "any",
        )
        if self.policy.tls is None and not is_loopback(self.config.host):
            log.warning("DICOM associations to %s travel in clear: set LISTENER_TLS_CERT and "
                        "LISTENER_TLS_KEY for DICOM TLS", self.config.host)

    @property
    def transport_description(self) -> str:
        """What the port takes, for the start-up log line."""
        if self.policy.tls is None:
            return "plain associations only"
        kinds = "DICOM TLS only" if self.config.tls_required else "plain and DICOM TLS"
        clients = "client certificates required" if self.config.tls_ca else "no client certificate"
        return f"{kinds}, {clients}"

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one the OS chose for port 0)."""
        if self._server is None:
            return self.config.port
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """No new associations; those in progress are closed."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_rejected(self, event: Any) -> None:
        # AE titles are configuration, not patient data: safe to log.
        log.warning(
            "DICOM association rejected: calling AE %r, called AE %r",
            event.assoc.requestor.ae_title, event.assoc.acceptor.ae_title,
        )
        self.on_association("rejected")

    def _on_store(self, event: Any) -> int:
        """One C-STORE: the root span of the instance's trace (DICOM carries no trace
        context); the work queued for it continues that trace."""
        with tracing.span("C-STORE receive", kind="server") as live:
            status = self._store(event)
            tracing.annotate(live, **{"dicom.status": f"0x{status:04X}"})
            return status

    def _store(self, event: Any) -> int:
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        try:
            data = event.encoded_dataset(include_meta=True)
            study_uid, dataset_sop = read_uids(data)
        except ValueError as exc:
            log.warning("C-STORE refused (A900) for SOP Instance %s: %s", sop_uid, exc)
            return DATASET_MISMATCH
        try:
            entry = self.spool.write(data, study_uid, dataset_sop)
        except SpoolFull as exc:
            log.warning("C-STORE refused (A700) for SOP Instance %s: %s", sop_uid, exc)
            return OUT_OF_RESOURCES
        except OSError as exc:
            log.error("C-STORE refused (A700) for SOP Instance %s: spool write failed: %s",
                      sop_uid, type(exc).__name__)
            return OUT_OF_RESOURCES
        try:
            self.on_stored(entry)
        except Exception:  # noqa: BLE001 - it is on disk: the next start replays it
            log.exception("spooled SOP Instance %s not queued now; replayed at next start",
                          sop_uid)
        return SUCCESS
