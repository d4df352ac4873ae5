"""Configuration: one class per process, read from the environment once by its entry point.

- the gateway: :class:`GatewaySettings`, read by ``spine gateway``, passed to
  ``gateway.app.create_app(settings)``;
- each model service: :class:`ModelServerSettings`, read by ``spine classifier|detector``,
  passed to ``create_app(settings)`` (``classifier_service.app``, ``detector_service.app``);
- the DICOM listener: :class:`ListenerSettings`, read by ``spine dicom-listener``, passed
  to ``dicom_listener.service.run``;
- the ``spine`` command itself: :class:`CliSettings`, read by ``spine.cli.main`` (its
  options' defaults; ``spine serve`` starts the others with their environments).

Every class is :class:`CommonSettings` (logging, internal token, cache root) plus the
sections it shares with another process (:mod:`shared.settings.sections`) plus its own
fields. A variable is its field's name in capitals, the same in every class that has it;
each is documented in README's table under its process (a test checks it). Nothing
below an entry point reads the environment or builds settings of its own.
"""

from __future__ import annotations

from shared.settings.base import (
    CommonSettings,
    SettingsBase,
    TracingMode,
    child_settings,
    documented_defaults,
)
from shared.settings.cli import CliSettings
from shared.settings.gateway import (
    FusionMode,
    GatewaySettings,
    PhiMode,
    ResultPatientMode,
    StudyDateMode,
)
from shared.settings.listener import ListenerSettings
from shared.settings.model_server import ModelServerSettings
from shared.settings.sections import (
    BundleSettings,
    DefaultBundle,
    DiskSettings,
    HttpServerSettings,
    ListenerEndpointSettings,
    OperatorKeysSettings,
    PseudonymSecretSettings,
    ResultsDeliverySettings,
    SelectionRulesSettings,
)

#: Every process's class: together they hold every environment variable.
PROCESS_SETTINGS: tuple[type[CommonSettings], ...] = (
    GatewaySettings, ModelServerSettings, ListenerSettings, CliSettings,
)

__all__ = [
    "PROCESS_SETTINGS",
    "BundleSettings",
    "CliSettings",
    "CommonSettings",
    "DefaultBundle",
    "DiskSettings",
    "FusionMode",
    "GatewaySettings",
    "HttpServerSettings",
    "ListenerEndpointSettings",
    "ListenerSettings",
    "ModelServerSettings",
    "OperatorKeysSettings",
    "PhiMode",
    "PseudonymSecretSettings",
    "ResultPatientMode",
    "ResultsDeliverySettings",
    "SelectionRulesSettings",
    "SettingsBase",
    "StudyDateMode",
    "TracingMode",
    "documented_defaults",
    "child_settings",
]
