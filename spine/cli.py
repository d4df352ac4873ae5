"""The ``spine`` command: run the stack or one service (and, later, data/training tools)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from shared.settings import CliSettings, GatewaySettings, ListenerSettings, ModelServerSettings
from spine.config import read_settings


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, except where there is none to show
    (an unset option, an off flag): those help texts say what happens without them."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action) or ""


class Parser(argparse.ArgumentParser):
    """The ``spine`` parser and all its subcommands share :class:`HelpFormatter`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _serve_http(
    service: str, app_factory: str, settings: GatewaySettings | ModelServerSettings,
    host: str, port: int,
) -> int:
    """Refuse an unsafe exposure, set up logging, build the app from ``settings``, serve it.

    ``app_factory`` is named, as uvicorn names it: the CLI never imports the gateway's code.
    """
    import uvicorn
    from uvicorn.importer import import_from_string

    from shared.lockdown import exposure_problems, refusal_message
    from shared.logging import configure_logging
    from shared.tracing import tracing_from
    from spine.guarded_http import protocol_with_header_timeout
    from spine.supervisor import UVICORN_GRACE_S

    if problems := exposure_problems(service, host, settings):
        sys.exit(refusal_message(service, host, problems))
    if isinstance(settings, GatewaySettings):
        from shared.dicomnet.delivery import results_config_problem

        if problem := results_config_problem(settings):
            sys.exit(f"spine gateway: refusing to start: {problem}")
    configure_logging(service, settings.log_level, settings.log_json)
    tracing_from(service, settings)
    app = import_from_string(app_factory)(settings)
    uvicorn.run(
        app, host=host, port=port, log_config=None,
        timeout_graceful_shutdown=UVICORN_GRACE_S, access_log=False,
        # h11 refuses a request whose headers exceed this before any app code runs.
        h11_max_incomplete_event_size=settings.max_header_bytes,
        # Slow clients: headers within HTTP_HEADER_TIMEOUT_S, and a bounded number of
        # connections + requests (beyond it uvicorn answers 503 at once).
        http=protocol_with_header_timeout(settings.http_header_timeout_s),
        limit_concurrency=settings.http_max_connections or None,
    )
    return 0


def _ensure_model_dir(chosen: str | None, settings: CliSettings | ModelServerSettings) -> Path:
    """``--model-dir``, else ``MODEL_DIR``, else the default bundle (built on first use)."""
    from spine.bundles import ensure_default_bundle

    chosen_dir = chosen or settings.model_dir
    if chosen_dir:
        path = Path(chosen_dir).expanduser().resolve()
        if not path.is_dir():
            sys.exit(f"spine: model folder {path} does not exist")
        return path
    return ensure_default_bundle(settings)


def cmd_serve(args: argparse.Namespace, settings: CliSettings) -> int:
    from spine.background_build import plan_background_build
    from spine.config import check_settings
    from spine.secrets import lock_children_env
    from spine.supervisor import build_children, serve

    check_settings(GatewaySettings)  # the children read the same env
    model_settings = read_settings(ModelServerSettings)
    if args.dicom_port is not None:
        check_settings(ListenerSettings)
    env = lock_children_env(dict(os.environ), args.host, settings)
    build = plan_background_build(
        settings, args.model_dir, model_settings.model_repository_root, env
    )
    model_dir = None if build is not None else _ensure_model_dir(args.model_dir, settings)
    if args.device:
        env["MODEL_DEVICE"] = args.device
    children = build_children(
        settings, host=args.host, gateway_port=args.port, classifier_port=args.classifier_port,
        detector_port=args.detector_port, model_dir=model_dir, base_env=env,
        dicom_port=args.dicom_port,
    )
    if model_dir is not None:
        print(f"[spine] model bundle: {model_dir}", flush=True)
    return serve(children, f"http://{args.host}:{args.port}", build)


def cmd_model_service(args: argparse.Namespace, _cli: CliSettings) -> int:
    """``spine classifier|detector``: this process's settings, read once, with the bundle
    chosen here (``--model-dir``, ``MODEL_DIR`` or the default) passed to its app."""
    settings = read_settings(ModelServerSettings)
    if settings.model_load_at_start:  # else a bundle comes through the repository API
        model_dir = _ensure_model_dir(args.model_dir, settings)
        settings = settings.model_copy(update={"model_dir": model_dir})
    factory = f"{args.command}_service.app:create_app"
    return _serve_http(args.command, factory, settings, args.host, args.port)


def cmd_gateway(args: argparse.Namespace, _cli: CliSettings) -> int:
    settings = read_settings(GatewaySettings)
    return _serve_http("gateway", "gateway.app:create_app", settings, args.host, args.port)


MODEL_DIR_HELP = (
    "model bundle folder (env MODEL_DIR); without it the SPINE_DEFAULT_BUNDLE bundle "
    "(demo: trained on phantoms on first use), built once under SPINE_CACHE_DIR"
)


def add_stack_options(parser: argparse.ArgumentParser, settings: CliSettings) -> None:
    """The bundle and the three services' ports, for the commands that start the stack
    (``spine serve``, ``spine reading-room``)."""
    parser.add_argument("--model-dir", help=MODEL_DIR_HELP)
    parser.add_argument("--port", type=int, default=settings.gateway_port,
                        help="gateway port (env GATEWAY_PORT)")
    parser.add_argument("--classifier-port", type=int, default=settings.classifier_port,
                        help="classifier port (env CLASSIFIER_PORT)")
    parser.add_argument("--detector-port", type=int, default=settings.detector_port,
                        help="detector port (env DETECTOR_PORT)")


def build_parser(settings: CliSettings) -> argparse.ArgumentParser:
    """The ``spine`` parser; its options' defaults are ``settings`` (the environment)."""
    parser = Parser(prog="spine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    serve = sub.add_parser("serve", help="start gateway + classifier + detector on this machine")
    serve.add_argument("--host", default=settings.spine_host, help="address (env SPINE_HOST)")
    add_stack_options(serve, settings)
    serve.add_argument("--device", choices=["auto", "cpu", "cuda"],
                       help="device of both model services; without it MODEL_DEVICE (auto)")
    serve.add_argument("--dicom-port", type=int,
                       help="also start the DICOM listener (`spine dicom-listener`) on this "
                       "port, sending to this gateway; without it no listener")
    serve.set_defaults(func=cmd_serve)

    for name, port, helptext in (
        ("gateway", 8000, "the public API (needs CLASSIFIER_URLS / DETECTOR_URLS)"),
        ("classifier", 8001, "the classifier ensemble (OIP v2)"),
        ("detector", 8002, "the YOLO detector (OIP v2)"),
    ):
        one = sub.add_parser(name, help=f"run {helptext} alone")
        one.add_argument("--host", default=settings.spine_host, help="address (env SPINE_HOST)")
        one.add_argument("--port", type=int, default=settings.port or port,
                         help="port (env PORT)")
        if name != "gateway":
            one.add_argument("--model-dir", help=MODEL_DIR_HELP)
            one.set_defaults(func=cmd_model_service)
        else:
            one.set_defaults(func=cmd_gateway)

    # Tools with their own modules: data/training/evaluation and benchmarks.
    from spine import (
        commands_bench,
        commands_bundle,
        commands_listener,
        commands_training,
        commands_triton,
    )
    from spine.readingroom import command as commands_reading_room

    commands_training.register(sub)
    commands_bench.register(sub)
    commands_bundle.register(sub)
    commands_listener.register(sub, settings)
    commands_triton.register(sub)
    commands_reading_room.register(sub, settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    settings = read_settings(CliSettings)  # a bad variable stops here, named
    args = build_parser(settings).parse_args(argv)
    return int(args.func(args, settings) or 0)


if __name__ == "__main__":
    sys.exit(main())
