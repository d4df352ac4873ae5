"""`spine export-triton` and `spine triton`: the Triton Inference Server path (issue 15)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from shared.settings import CliSettings

EXPORT_HELP = (
    "write a Triton model repository (spine-classifier, spine-detector: our services' "
    "ONNX graphs, pre- and post-processing inside) that serves BUNDLE exactly as our "
    "model services do, for Triton's ONNX Runtime backend or its Python backend"
)
TRITON_HELP = (
    "run the nvidia-pytriton wheel's tritonserver (from .venv-triton) on an exported "
    "repository: python-flavour models with the wheel's Python backend, onnxruntime ones "
    "with Triton's ONNX Runtime backend from TRITON_BACKEND_DIR (the wheel has none); "
    "Ctrl-C stops it"
)
BACKEND_HELP = (
    "onnxruntime: platform onnxruntime_onnx, Triton's C++ ONNX Runtime backend (stock "
    "Triton, KServe's Triton runtime; not in the nvidia-pytriton wheel: TRITON_BACKEND_DIR); "
    "python: the wheel's Python backend with a generic model.py that runs the same graph "
    "with ONNX Runtime. Default: onnxruntime when `spine triton` here can load it "
    "(TRITON_BACKEND_DIR holds it), else python; export for another server with an "
    "explicit choice"
)


def cmd_export_triton(args: argparse.Namespace, cli: CliSettings) -> int:
    """Reads the model services' settings: the repository serves the bundle as they do;
    ``cli``'s TRITON_VENV / TRITON_BACKEND_DIR choose the default flavour."""
    from shared.bundle import BundleError
    from shared.paths import prepare_ultralytics_env
    from shared.settings import ModelServerSettings
    from spine.bundles import ensure_default_bundle
    from spine.config import read_settings
    from spine.triton.export import ExportError, ExportOptions, export_repository, onnx_digests
    from spine.triton.install import default_backend

    settings = read_settings(ModelServerSettings)
    prepare_ultralytics_env(settings)
    backend, why = (args.backend, "chosen") if args.backend else default_backend(cli)
    print(f"[spine] flavour {backend} ({why})", flush=True)
    chosen = args.model_dir or settings.model_dir
    model_dir = Path(chosen).expanduser().resolve() if chosen else ensure_default_bundle(settings)
    if not model_dir.is_dir():
        sys.exit(f"spine export-triton: model folder {model_dir} does not exist")
    try:
        options = ExportOptions.from_settings(
            settings, max_batch_size=args.max_batch_size, max_delay_ms=args.max_delay_ms,
            instance_kind=args.instance_kind, instances=args.instances, threads=args.threads,
            backend=backend,
        )
        report = export_repository(model_dir, Path(args.out).expanduser(), options, settings)
    except (BundleError, ExportError, RuntimeError, OSError, ValueError) as exc:
        sys.exit(f"spine export-triton: {exc}")
    for name, parity in report.parity.items():
        print(f"[spine] {name}: {report.models[name]} (parity with the torch path: {parity})")
    for path, digest in onnx_digests(report.repo).items():
        print(f"[spine]   {path} sha256 {digest[:16]}")
    print(
        f"[spine] wrote {report.repo} in {report.seconds:.1f} s (max_batch_size "
        f"{options.max_batch_size}, max delay {options.max_delay_ms:g} ms, {options.instances} "
        f"x KIND_{options.instance_kind.upper()}); serve it with: spine triton --repo {report.repo}"
    )
    return 0


def cmd_triton(args: argparse.Namespace, settings: CliSettings) -> int:
    from spine.triton.install import TritonNotInstalledError, describe_backend
    from spine.triton.server import Ports, TritonServer, TritonStartError

    try:
        server = TritonServer(
            Path(args.repo).expanduser(),
            ports=Ports(args.http_port, args.grpc_port, args.metrics_port),
            host=args.host,
            venv=Path(args.venv).expanduser() if args.venv else None,
            settings=settings,
        )
        for name, backend in server.models.items():
            print(f"[spine] {name}: {describe_backend(server.install, backend)}", flush=True)
        server.start()
    except (TritonNotInstalledError, TritonStartError, OSError) as exc:
        sys.exit(f"spine triton: {exc}")

    def forward(signum: int, _frame: FrameType | None) -> None:
        server.signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        seconds = server.wait_ready(args.ready_timeout)
    except TritonStartError as exc:
        server.stop()
        sys.exit(f"spine triton: {exc}")
    print(
        f"[spine] tritonserver ready in {seconds:.1f} s: {server.url} (gRPC {args.host}:"
        f"{args.grpc_port}, metrics {args.host}:{args.metrics_port}); point the gateway at it "
        f"with CLASSIFIER_URLS={server.url} DETECTOR_URLS={server.url}; Ctrl-C stops it",
        flush=True,
    )
    assert server.process is not None
    code = server.process.wait()
    print(f"[spine] tritonserver exited with {code}", flush=True)
    return 0 if code in (0, -signal.SIGTERM) else 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    export = sub.add_parser("export-triton", help=EXPORT_HELP, description=EXPORT_HELP)
    export.add_argument("--model-dir", help="bundle folder (default: MODEL_DIR, else the "
                        "default bundle, built if missing)")
    export.add_argument("--out", required=True, metavar="REPO", help="repository to write")
    export.add_argument("--max-batch-size", type=int,
                        help="max_batch_size of both models; without it MAX_BATCH_SIZE")
    export.add_argument("--max-delay-ms", type=float,
                        help="dynamic batching's queue delay; without it MAX_DELAY_MS")
    export.add_argument("--backend", choices=("onnxruntime", "python"), help=BACKEND_HELP)
    export.add_argument("--instance-kind", choices=("cpu", "gpu"), default="cpu",
                        help="instance_group kind: KIND_CPU (default) or KIND_GPU (ONNX "
                        "Runtime's CUDA provider in Triton's onnxruntime backend; the "
                        "python flavour runs on CPU only)")
    export.add_argument("--instances", type=int, default=1, help="instances per model")
    export.add_argument("--threads", type=int,
                        help="ONNX Runtime threads per session (default: ORT_THREADS, else "
                        "TORCH_THREADS, else ONNX Runtime's default)")
    export.set_defaults(func=cmd_export_triton)

    triton = sub.add_parser("triton", help=TRITON_HELP, description=TRITON_HELP)
    triton.add_argument("--repo", required=True, help="model repository (spine export-triton)")
    triton.add_argument("--host", default="127.0.0.1", help="address of all three ports")
    triton.add_argument("--http-port", type=int, default=8100,
                        help="HTTP/REST port (the gateway's CLASSIFIER_URLS / DETECTOR_URLS)")
    triton.add_argument("--grpc-port", type=int, default=8101, help="gRPC port")
    triton.add_argument("--metrics-port", type=int, default=8102,
                        help="Prometheus metrics port (/metrics)")
    triton.add_argument("--venv", help="Triton environment (default: TRITON_VENV, else "
                        ".venv-triton; scripts/setup-triton.sh makes it)")
    triton.add_argument("--ready-timeout", type=float, default=180.0,
                        help="seconds to wait for /v2/health/ready")
    triton.set_defaults(func=cmd_triton)
