"""`spine bench`: the load generator against our stack and the original-style baseline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import SecretStr

from shared.settings import CliSettings


def _ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,8 got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be >= 1")
    return values


def _size(text: str) -> tuple[int, int]:
    rows, sep, cols = text.lower().partition("x")
    try:
        size = (int(rows), int(cols))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLUMNS, got {text!r}") from exc
    if not sep or min(size) < 64:
        raise argparse.ArgumentTypeError("image size is ROWSxCOLUMNS, each >= 64")
    return size


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _variant(text: str) -> tuple[str, dict[str, str]]:
    """``NAME`` or ``NAME:KEY=VALUE,KEY=VALUE`` (environment of that stack; the key
    ``ANNOTATE=false`` is the bench's own: that stack's uploads ask for no PNG)."""
    name, _, assignments = text.partition(":")
    env: dict[str, str] = {}
    for item in filter(None, assignments.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"variant settings are KEY=VALUE, got {item!r}")
        env[key.strip()] = value.strip()
    if not name:
        raise argparse.ArgumentTypeError("a variant needs a name")
    return name, env


def _require_triton(settings: CliSettings) -> None:
    """Exit naming what is missing (the Triton environment), before any stack starts."""
    from spine.triton.install import TritonNotInstalledError, find_install, triton_venv

    try:
        find_install(triton_venv(settings), settings.triton_backend_dir)
    except TritonNotInstalledError as exc:
        sys.exit(f"spine bench --variant triton: {exc}")


def cmd_bench(args: argparse.Namespace, settings: CliSettings) -> int:
    from bench.runner import BenchConfig, Variant, run_bench
    from shared.paths import prepare_ultralytics_env

    prepare_ultralytics_env(settings)  # the bench builds and exports bundles in this process

    variants = []
    chosen = list(args.variant or [("ours", {})])
    if "triton" in {name for name, _ in chosen}:
        _require_triton(settings)  # before any stack starts
        if "ours" not in {name for name, _ in chosen}:
            chosen.insert(0, ("ours", {}))  # the Triton variant is measured against ours
    for name, env in chosen:
        annotate = env.pop("ANNOTATE", None)
        variants.append(Variant(name, env, None if annotate is None else annotate == "true"))
    config = BenchConfig(
        concurrency=args.concurrency,
        requests=args.requests,
        warmup=args.warmup,
        model_dir=Path(args.model_dir).expanduser().resolve() if args.model_dir else None,
        yolo=args.yolo,
        kinds=tuple(args.inputs.split(",")),
        annotate=not args.no_annotate,
        gateway_url=args.gateway,
        api_key=args.api_key or _secret(settings.spine_api_key),
        classifier_url=args.classifier_url,
        detector_url=args.detector_url,
        baselines=() if args.no_baseline else tuple(args.baselines.split(",")),
        baseline_url=args.baseline_url,
        repeat=args.repeat,
        ceiling=not args.no_ceiling,
        ceiling_rounds=args.ceiling_rounds,
        device=args.device,
        variants=variants,
        json_path=Path(args.json) if args.json else None,
        keep_logs=args.keep_logs,
        image_rows=args.image_size[0],
        image_cols=args.image_size[1],
    )
    text = run_bench(config, settings, echo=lambda line: print(line, file=sys.stderr, flush=True))
    print(text, flush=True)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this module's subcommands to the ``spine`` parser."""
    bench = sub.add_parser(
        "bench",
        help="load-test our stack against the original-style pipeline (same bundle)",
        description="Start our three services and the original-style baseline on free "
        "ports (or use --gateway / --baseline-url), upload VinDr-sized 12-bit DX DICOMs "
        "(JPEG 2000 and uncompressed) at each concurrency, --repeat times, and print the "
        "ratios ours / original (equal-work and faithful: median and min-max over the "
        "repeats), the single-thread compute ceiling, throughput, latency percentiles, "
        "per-stage times and memory.",
    )
    bench.add_argument("--concurrency", type=_ints, default=[1, 8], help="levels, e.g. 1,8,32")
    bench.add_argument("--requests", type=int, default=16,
                       help="measured requests per system and level (at least the level)")
    bench.add_argument("--warmup", type=int, default=0,
                       help="unmeasured requests per system first; 0 = one per input file")
    bench.add_argument("--model-dir", help="bundle for both sides; default: untrained real archs")
    bench.add_argument("--repeat", type=int, default=3,
                       help="repeats; each loads every system in turn at every level "
                       "(ratios: median and min-max over the repeats)")
    bench.add_argument("--yolo", default="yolo11l",
                       choices=["yolo11n", "yolo11s", "yolo11m", "yolo11l"],
                       help="detector of the default bundle (default yolo11l: the original's "
                       "best.pt is YOLO11l-sized)")
    bench.add_argument("--inputs", default="j2k,raw", help="upload kinds: j2k, raw")
    bench.add_argument("--image-size", type=_size, default=(2455, 1606), metavar="ROWSxCOLS",
                       help="pixels of the uploads (VinDr-SpineXR's size)")
    bench.add_argument("--no-annotate", action="store_true",
                       help="ask our gateway for no annotated image (the original always drew one)")
    bench.add_argument("--gateway", help="benchmark a running gateway instead of starting ours")
    bench.add_argument("--api-key", help="X-API-Key for --gateway (env SPINE_API_KEY)")
    bench.add_argument("--classifier-url", help="with --gateway: for queue/batch metrics")
    bench.add_argument("--detector-url", help="with --gateway: for queue/batch metrics")
    bench.add_argument("--no-baseline", action="store_true", help="ours only (no ratios)")
    bench.add_argument("--baselines", default="faithful,equal-work",
                       help="modes of the original-style baseline to run (bench/baseline.py)")
    bench.add_argument("--no-ceiling", action="store_true",
                       help="skip the single-thread compute-ceiling measurement")
    bench.add_argument("--ceiling-rounds", type=int, default=3,
                       help="timed runs per network/stage for the ceiling (median)")
    bench.add_argument("--baseline-url", help="a running `python -m bench.baseline`")
    bench.add_argument("--device", default="cpu", help="MODEL_DEVICE of both sides: cpu, cuda")
    bench.add_argument("--variant", action="append", type=_variant, metavar="NAME[:K=V,...]",
                       help="one of our stacks with extra environment; repeatable "
                       "(e.g. torch:MODEL_BACKEND=torch); `triton`: our gateway in front of "
                       "tritonserver on the bundle exported by spine export-triton "
                       "(`triton:BACKEND=python|onnxruntime` picks the flavour; default as "
                       "spine export-triton's)")
    bench.add_argument("--json", help="also write every number to this JSON file")
    bench.add_argument("--keep-logs", action="store_true", help="keep the services' logs")
    bench.set_defaults(func=cmd_bench)
