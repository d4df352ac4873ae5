"""``spine reading-room`` and ``spine viewer``: a PACS and a viewer for groups without one.

``spine reading-room`` starts, as children of one supervisor (``spine serve``'s): the
project-installed Orthanc (:mod:`spine.readingroom.orthanc`), the OHIF Viewer on the
same origin as its DICOMweb (``spine viewer``, :mod:`spine.readingroom.viewer`), and the
three services with the DICOM listener, wired both ways: Orthanc sends each image it
receives to the listener, the listener sends the results back to Orthanc by C-STORE.
Ctrl-C stops the listener, the gateway, then the rest (Orthanc and the viewer last).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from shared.paths import cache_root
from shared.settings import CliSettings, GatewaySettings, ListenerSettings, ModelServerSettings

if TYPE_CHECKING:
    from spine.readingroom.orthanc import OrthancPlan

REPO = Path(__file__).resolve().parents[2]
OHIF_DIST = REPO / "viewer" / "node_modules" / "@ohif" / "app" / "dist"
SETUP = "scripts/setup-reading-room.sh (or `make reading-room`)"
HELP = (
    "a reading room in one command: Orthanc (DICOMweb, data kept in --data-dir), the OHIF "
    "Viewer, and `spine serve` with the DICOM listener, wired both ways"
)


def cmd_viewer(args: argparse.Namespace, _cli: CliSettings) -> int:
    import uvicorn

    from spine.readingroom.viewer import create_app

    try:
        app = create_app(Path(args.dist) if args.dist else OHIF_DIST, args.orthanc_url)
    except FileNotFoundError as exc:
        sys.exit(f"spine viewer: {exc}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _missing() -> list[str]:
    from spine.readingroom.orthanc import DICOMWEB_PLUGIN, ORTHANC

    gaps = [f"{path} (apt-get install orthanc orthanc-dicomweb)"
            for path in (ORTHANC, DICOMWEB_PLUGIN) if not path.exists()]
    if not (OHIF_DIST / "index.html").is_file():
        gaps.append(f"the OHIF Viewer in {OHIF_DIST} (run {SETUP})")
    return gaps


def _orthanc_plan(args: argparse.Namespace, cli: CliSettings) -> OrthancPlan:
    """Orthanc as asked, wired to the listener (whose results come back from its AE);
    exits naming the problem when it cannot start so (beyond loopback without users)."""
    from spine.config import read_settings
    from spine.readingroom.orthanc import OrthancPlan, ReadingRoomConfigError, parse_users

    listener = read_settings(ListenerSettings)  # what the listener child will read
    users = cli.reading_room_users
    try:
        plan = OrthancPlan(
            data_dir=Path(args.data_dir).expanduser().resolve(), host=args.host,
            http_port=args.orthanc_port, dicom_port=args.orthanc_dicom_port,
            listener_aet=listener.listener_ae_title, listener_port=args.dicom_port,
            results_aet=listener.results_calling_ae,
            users=parse_users(users.get_secret_value() if users else None),
        )
        plan.check()
    except ReadingRoomConfigError as exc:
        sys.exit(f"spine reading-room: {exc}")
    return plan


def _local_host(args: argparse.Namespace) -> str:
    """Where a browser on this machine finds the servers (not the wildcard they bind)."""
    return "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host


def _viewer_url(args: argparse.Namespace) -> str:
    return f"http://{_local_host(args)}:{args.viewer_port}"


def room_env(env: dict[str, str], plan: OrthancPlan, viewer_url: str) -> dict[str, str]:
    """The children's environment wired both ways: results by C-STORE to this Orthanc,
    images only from it; the gateway's page links to this viewer unless VIEWER_URL is set."""
    return {
        "VIEWER_URL": viewer_url, **env,
        "RESULTS_STORE_AE": plan.store_ae, "LISTENER_ALLOWED_AE_TITLES": plan.aet,
    }


def _banner(args: argparse.Namespace, plan: OrthancPlan) -> list[str]:
    return [
        f"OHIF Viewer (studies, our SR drawn): {_viewer_url(args)}/",
        f"Orthanc (upload page: Upload, top right): http://{_local_host(args)}:{args.orthanc_port}/",
        f"send images: storescu -aet STORESCU -aec {plan.aet} 127.0.0.1 "
        f"{args.orthanc_dicom_port} image.dcm",
        f"data kept in {plan.data_dir}",
    ]


def cmd_reading_room(args: argparse.Namespace, cli: CliSettings) -> int:
    from spine.cli import _ensure_model_dir
    from spine.config import check_settings
    from spine.readingroom.orthanc import ORTHANC
    from spine.secrets import lock_children_env
    from spine.supervisor import Child, build_children, serve

    if gaps := _missing():
        sys.exit("spine reading-room: missing " + "; ".join(gaps))
    check_settings(GatewaySettings, ModelServerSettings)  # the children read the same env
    plan = _orthanc_plan(args, cli)
    model_dir = _ensure_model_dir(args.model_dir, cli)
    env = room_env(lock_children_env(dict(os.environ), args.host, cli), plan, _viewer_url(args))
    orthanc = Child("orthanc", [str(ORTHANC), str(plan.write())], env, plan.ready_url())
    viewer = Child(
        "viewer",
        [sys.executable, "-m", "spine.cli", "viewer", "--host", args.host, "--port",
         str(args.viewer_port), "--orthanc-url", plan.url, "--dist", str(OHIF_DIST)],
        env, f"http://127.0.0.1:{args.viewer_port}/app-config.js",
    )
    children = [orthanc, viewer, *build_children(
        cli, host="127.0.0.1", gateway_port=args.port, classifier_port=args.classifier_port,
        detector_port=args.detector_port, model_dir=model_dir, base_env=env,
        dicom_port=args.dicom_port,
    )]
    print(f"[spine] model bundle: {model_dir}", flush=True)
    return serve(children, f"http://127.0.0.1:{args.port}", banner=_banner(args, plan))


def register(sub: argparse._SubParsersAction, settings: CliSettings) -> None:  # type: ignore[type-arg]
    from spine.cli import add_stack_options

    room = sub.add_parser("reading-room", help=HELP, description=HELP)
    room.add_argument("--host", default="127.0.0.1",
                      help="address of the viewer and Orthanc's HTTP; beyond loopback only "
                      "with READING_ROOM_USERS")
    room.add_argument("--viewer-port", type=int, default=3000, help="OHIF + DICOMweb port")
    room.add_argument("--orthanc-port", type=int, default=8042, help="Orthanc's HTTP port")
    room.add_argument("--orthanc-dicom-port", type=int, default=4242,
                      help="Orthanc's DICOM port (storescu sends here)")
    room.add_argument("--data-dir", default=str(cache_root(settings) / "reading-room"),
                      help="Orthanc's storage and index (kept across restarts)")
    add_stack_options(room, settings)
    room.add_argument("--dicom-port", type=int, default=settings.listener_port,
                      help="our DICOM listener's port (env LISTENER_PORT)")
    room.set_defaults(func=cmd_reading_room)

    viewer = sub.add_parser(
        "viewer", help="serve the OHIF Viewer and an Orthanc's DICOMweb on one origin",
    )
    viewer.add_argument("--host", default="127.0.0.1", help="address")
    viewer.add_argument("--port", type=int, default=3000, help="port")
    viewer.add_argument("--orthanc-url", default="http://127.0.0.1:8042",
                        help="the Orthanc whose /dicom-web is passed through")
    viewer.add_argument("--dist", help="OHIF's prebuilt dist/; without it the one "
                        "scripts/setup-reading-room.sh installs in viewer/node_modules")
    viewer.set_defaults(func=cmd_viewer)
