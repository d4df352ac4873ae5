"""`spine convert-checkpoint IN OUT`: a checkpoint the services refuse, made weights-only.
`spine swap --model-dir DIR`: another bundle into every model service replica, one by one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.settings import CliSettings

HELP = (
    "read a refused checkpoint inertly (nothing its pickle names is called) and write a "
    "weights-only copy the services load safely"
)


def cmd_convert_checkpoint(args: argparse.Namespace, _settings: CliSettings) -> int:
    from model_server.convert import convert_checkpoint
    from shared.bundle import sha256_file

    source, target = Path(args.input), Path(args.output)
    if not source.is_file():
        sys.exit(f"spine convert-checkpoint: {source} not found")
    try:
        payload = convert_checkpoint(source, target)
    except (ValueError, RuntimeError, OSError) as exc:
        sys.exit(f"spine convert-checkpoint: {exc}")
    kind = "Ultralytics detector" if "ultralytics_yaml" in payload else "state dict"
    print(
        f"[spine] wrote {target} ({kind}, {len(payload['model_state_dict'])} tensors, "
        f"sha256 {sha256_file(target)}); point the manifest at it, keep {source.name} "
        "out of the bundle"
    )
    return 0


SWAP_HELP = (
    "load another bundle into every replica of both model services, one at a time, without "
    "a failed request (the model repository API: MODEL_REPOSITORY_ROOT, INTERNAL_TOKEN); "
    "a rollback is a swap back"
)


def cmd_swap(args: argparse.Namespace, settings: CliSettings) -> int:
    import httpx

    from spine.swap import SwapError, replicas_from_gateway, replicas_named, swap_all

    token = settings.internal_token.get_secret_value() if settings.internal_token else None
    key = settings.spine_api_key.get_secret_value() if settings.spine_api_key else None
    gateway = args.gateway or f"http://{settings.spine_host}:{settings.gateway_port}"
    try:
        with httpx.Client() as http:
            if args.replicas:
                urls = [url.strip() for url in args.replicas.split(",") if url.strip()]
                replicas = replicas_named(http, urls, token)
                print(f"[spine] replicas named by --replicas: {len(replicas)}")
            else:
                replicas = replicas_from_gateway(http, gateway, key)
                print(f"[spine] replicas the gateway {gateway} knows: {len(replicas)}")
            done = swap_all(http, replicas, args.model_dir, token,
                            lambda line: print(f"[spine] {line}", flush=True))
    except (SwapError, httpx.HTTPError) as exc:
        sys.exit(f"spine swap: {exc}")
    print(f"[spine] swapped {len(done)} replica(s) to {args.model_dir}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    convert = sub.add_parser("convert-checkpoint", help=HELP, description=HELP)
    convert.add_argument("input", metavar="IN", help="the checkpoint the services refused")
    convert.add_argument("output", metavar="OUT", help="the weights-only file to write")
    convert.set_defaults(func=cmd_convert_checkpoint)

    swap = sub.add_parser("swap", help=SWAP_HELP, description=SWAP_HELP)
    swap.add_argument("--model-dir", required=True,
                      help="the bundle folder on the model services' machines: absolute, or "
                      "relative to their MODEL_REPOSITORY_ROOT")
    swap.add_argument("--gateway", help="gateway whose /health lists the replicas (as an "
                      "operator: SPINE_API_KEY); without it http://SPINE_HOST:GATEWAY_PORT")
    swap.add_argument("--replicas", help="model service URLs, comma-separated, instead of "
                      "asking the gateway (each is asked which model it serves)")
    swap.set_defaults(func=cmd_swap)
