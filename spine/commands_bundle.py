"""`spine convert-checkpoint IN OUT`: a checkpoint the services refuse, made weights-only."""

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


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    convert = sub.add_parser("convert-checkpoint", help=HELP, description=HELP)
    convert.add_argument("input", metavar="IN", help="the checkpoint the services refused")
    convert.add_argument("output", metavar="OUT", help="the weights-only file to write")
    convert.set_defaults(func=cmd_convert_checkpoint)
