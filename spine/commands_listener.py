"""`spine dicom-listener`: the DICOM C-ECHO / C-STORE receiver in front of the gateway."""

from __future__ import annotations

import argparse
import asyncio
import sys

from shared.settings import CliSettings, ListenerSettings

HELP = (
    "receive images by DICOM C-STORE (pynetdicom SCP), analyse each through the gateway "
    "over HTTP and send the SR + presentation state to RESULTS_DICOMWEB_URL / "
    "RESULTS_STORE_AE (docs/INTEGRATION.md)"
)


def cmd_dicom_listener(args: argparse.Namespace, _cli: CliSettings) -> int:
    """The listener process: its settings read once, the options applied over them."""
    from dicom_listener.scp import ListenerConfigError
    from dicom_listener.service import run
    from dicom_listener.spool import SpoolInUseError
    from shared.dicomnet.destinations import DestinationConfigError
    from shared.logging import configure_logging
    from shared.tracing import tracing_from
    from spine.config import read_settings

    settings = read_settings(ListenerSettings)
    updates = {"listener_ae_title": args.ae_title, "listener_gateway_url": args.gateway_url}
    if args.status_port is not None:
        updates["listener_status_port"] = args.status_port
    settings = settings.model_copy(update=updates)
    configure_logging("dicom-listener", settings.log_level, settings.log_json)
    tracing_from("dicom-listener", settings)
    try:
        asyncio.run(run(settings, host=args.host, port=args.port))
    except (ListenerConfigError, DestinationConfigError, SpoolInUseError) as exc:
        sys.exit(f"spine dicom-listener: {exc}")
    return 0


def register(sub: argparse._SubParsersAction, settings: CliSettings) -> None:  # type: ignore[type-arg]
    listener = sub.add_parser("dicom-listener", help=HELP, description=HELP)
    listener.add_argument("--host", default=settings.spine_host, help="address (env SPINE_HOST)")
    listener.add_argument("--port", type=int, default=settings.listener_port,
                          help="DICOM port (env LISTENER_PORT)")
    listener.add_argument("--ae-title", default=settings.listener_ae_title,
                          help="our AE title (env LISTENER_AE_TITLE)")
    listener.add_argument("--gateway-url", default=settings.listener_gateway_url,
                          help="the gateway analysing each instance (env LISTENER_GATEWAY_URL)")
    listener.add_argument("--status-port", type=int, default=None,
                          help="port of /health, /metrics, /studies; without it "
                          "LISTENER_STATUS_PORT (0 = none)")
    listener.set_defaults(func=cmd_dicom_listener)
