"""The ``spine`` command: run the stack or one service (and, later, data/training tools)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _run_uvicorn(service: str, factory: str, host: str, port: int) -> int:
    import uvicorn

    from shared.logging import configure_logging
    from shared.settings import get_settings

    settings = get_settings()
    configure_logging(service, settings.log_level, settings.log_json)
    uvicorn.run(
        factory, factory=True, host=host, port=port, log_config=None,
        timeout_graceful_shutdown=20, access_log=False,
        # h11 refuses a request whose headers exceed this before any app code runs.
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )
    return 0


def _ensure_model_dir(args: argparse.Namespace) -> Path:
    """``--model-dir`` / ``MODEL_DIR``, else the default bundle (built on first use)."""
    from spine.bundles import cache_dir, ensure_default_bundle

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_dir() / "ultralytics"))
    chosen = getattr(args, "model_dir", None) or os.environ.get("MODEL_DIR")
    if chosen:
        path = Path(chosen).expanduser().resolve()
        if not path.is_dir():
            sys.exit(f"spine: model folder {path} does not exist")
        return path
    return ensure_default_bundle()


def cmd_serve(args: argparse.Namespace) -> int:
    from spine.supervisor import build_children, serve

    model_dir = _ensure_model_dir(args)
    env = dict(os.environ)
    if args.device:
        env["MODEL_DEVICE"] = args.device
    children = build_children(
        host=args.host, gateway_port=args.port, classifier_port=args.classifier_port,
        detector_port=args.detector_port, model_dir=model_dir, base_env=env,
    )
    print(f"[spine] model bundle: {model_dir}", flush=True)
    return serve(children, f"http://{args.host}:{args.port}")


def cmd_model_service(args: argparse.Namespace) -> int:
    os.environ["MODEL_DIR"] = str(_ensure_model_dir(args))
    factory = f"{args.command}_service.app:create_app"
    return _run_uvicorn(args.command, factory, args.host, args.port)


def cmd_gateway(args: argparse.Namespace) -> int:
    return _run_uvicorn("gateway", "gateway.app:create_app", args.host, args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start gateway + classifier + detector on this machine")
    serve.add_argument("--model-dir", help="model bundle folder (env MODEL_DIR); default: demo")
    serve.add_argument("--host", default=os.environ.get("SPINE_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", 8000)))
    serve.add_argument("--classifier-port", type=int,
                       default=int(os.environ.get("CLASSIFIER_PORT", 8001)))
    serve.add_argument("--detector-port", type=int,
                       default=int(os.environ.get("DETECTOR_PORT", 8002)))
    serve.add_argument("--device", choices=["auto", "cpu", "cuda"], help="env MODEL_DEVICE")
    serve.set_defaults(func=cmd_serve)

    for name, port, helptext in (
        ("gateway", 8000, "the public API (needs CLASSIFIER_URLS / DETECTOR_URLS)"),
        ("classifier", 8001, "the classifier ensemble (OIP v2)"),
        ("detector", 8002, "the YOLO detector (OIP v2)"),
    ):
        one = sub.add_parser(name, help=f"run {helptext} alone")
        one.add_argument("--host", default=os.environ.get("SPINE_HOST", "127.0.0.1"))
        one.add_argument("--port", type=int, default=int(os.environ.get("PORT", port)))
        if name != "gateway":
            one.add_argument("--model-dir", help="model bundle folder (env MODEL_DIR)")
            one.set_defaults(func=cmd_model_service)
        else:
            one.set_defaults(func=cmd_gateway)

    # Tools with their own modules: data/training/evaluation and benchmarks.
    from spine import commands_bench, commands_training

    commands_training.register(sub)
    commands_bench.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
