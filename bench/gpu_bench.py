"""Each model service alone against a bare PyTorch loop, per batch size and precision.

    python -m bench.gpu_bench [--model-dir DIR] [--yolo yolo11l] [--batches 1,2,...,128]
                              [--precisions fp32,fp16,bf16] [--device cuda] [--json F]

For every precision it (1) times the bare loop: each network alone, input already on
the device, ``model(x)`` with cudnn.benchmark, synchronised, at each batch size (the
limit a serving layer can approach); (2) starts our classifier and detector services
alone (``MODEL_PRECISION``, ``MAX_BATCH_SIZE`` = the largest batch) and sends OIP
requests that each carry B canonical 1024x683 images, two in flight, and reports
images/s, the batch size the service really executed (its Prometheus counters), and
bare/service (the issue's target: <= 2 at the same batch size). The classifier's bare
figure is the ensemble's: one image costs one pass through every member.

Prepared for an H100/H200 (``bench/gpu.sh``); ``--device cpu`` only checks the plumbing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

from bench import service_counters
from bench.procs import Proc, free_port, wait_ready
from bench.runner import bench_bundle
from shared import contract
from shared.paths import prepare_ultralytics_env
from shared.settings import CommonSettings

CANONICAL = (1024, 683)  # a VinDr image's canonical shape (long side 1024)


@dataclass
class Row:
    model: str
    precision: str
    batch: int
    bare_images_s: float | None
    service_images_s: float | None = None
    service_mean_batch: float | None = None

    @property
    def bare_over_service(self) -> float | None:
        if not self.bare_images_s or not self.service_images_s:
            return None
        return self.bare_images_s / self.service_images_s


def _sync(device) -> None:  # type: ignore[no-untyped-def]
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_rate(model, shape: tuple[int, int, int], batch: int, dtype, device,  # type: ignore[no-untyped-def]
              seconds: float = 2.0) -> float | None:
    """Images/s of ``model(x)`` on a resident batch; None when it does not fit."""
    import torch

    channels_last = device.type == "cuda" and dtype != torch.float32
    try:
        x = torch.rand((batch, *shape), device=device, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            for _ in range(3):
                model(x)
            _sync(device)
            runs, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds or runs < 3:
                model(x)
                runs += 1
            _sync(device)
            elapsed = time.perf_counter() - started
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None
    return runs * batch / elapsed


def bare_rates(model_dir: Path, batches: list[int], precision: str, device_name: str,
               seconds: float) -> dict[str, dict[int, float | None]]:
    """Per network (and the ensemble) images/s per batch size."""
    import torch

    from classifier_service.checkpoints import load_classifier
    from detector_service.yolo import load_yolo
    from model_server.dtypes import compute_dtype
    from shared.bundle import load_manifest, resolve_checkpoint

    torch.backends.cudnn.benchmark = True
    device = torch.device(device_name)
    dtype = compute_dtype(device, precision)
    manifest = load_manifest(model_dir)
    rates: dict[str, dict[int, float | None]] = {}
    for spec in manifest.classifier.members:
        model = load_classifier(resolve_checkpoint(model_dir, spec.checkpoint), spec.arch,
                                spec.num_classes).to(device).to(dtype)
        if dtype != torch.float32:
            model = model.to(memory_format=torch.channels_last)
        size = spec.input_size
        rates[spec.name] = {b: bare_rate(model, (3, size, size), b, dtype, device, seconds)
                            for b in batches}
        del model
    rates["classifier (ensemble)"] = {
        b: (1 / sum(1 / rates[m.name][b] for m in manifest.classifier.members)
            if all(rates[m.name][b] for m in manifest.classifier.members) else None)
        for b in batches
    }
    network, _ = load_yolo(resolve_checkpoint(model_dir, manifest.detector.checkpoint))
    network = network.float().fuse(verbose=False).to(device).to(dtype)
    size = manifest.detector.image_size
    rates["detector"] = {b: bare_rate(network, (3, size, size), b, dtype, device, seconds)
                         for b in batches}
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rates


def _start_service(name: str, model_dir: Path, env: dict[str, str], log_dir: Path) -> Proc:
    import subprocess

    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{env['MODEL_PRECISION']}.log"
    full_env = {**os.environ, "MODEL_DIR": str(model_dir), "LOG_LEVEL": "WARNING", **env}
    with log_path.open("wb") as handle:
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "spine.cli", name, "--host", "127.0.0.1", "--port", str(port)],
            env=full_env, stdout=handle, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    return Proc(name, url, url + "/v2/health/ready", process, log_path)


OUTPUTS = {
    contract.CLASSIFIER_MODEL: contract.names(contract.CLASSIFIER_OUTPUTS),
    contract.DETECTOR_MODEL: contract.names(contract.DETECTOR_OUTPUTS),
}


async def _drive(
    url: str, model: str, batch: int, seconds: float, token: str, in_flight: int = 2
) -> float:
    """Images/s of requests carrying ``batch`` images each, ``in_flight`` at a time."""
    from shared import oip

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch, 1, *CANONICAL), dtype=np.uint8)
    body, headers = oip.encode_request({contract.IMAGE.name: images}, outputs=OUTPUTS[model])
    if token:  # the services inherit this process's INTERNAL_TOKEN
        headers = {**headers, "Authorization": f"Bearer {token}"}
    done = 0
    async with httpx.AsyncClient(timeout=600) as client:
        endpoint = f"{url}/v2/models/{model}/infer"
        await client.post(endpoint, content=body, headers=headers)  # warm this batch size
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                response = await client.post(endpoint, content=body, headers=headers)
                response.raise_for_status()
                done += batch

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        elapsed = time.perf_counter() - started
    return done / elapsed


ServiceRates = dict[str, dict[int, tuple[float, float | None]]]


def service_rates(model_dir: Path, batches: list[int], precision: str, device: str,
                  seconds: float, log_dir: Path, token: str) -> ServiceRates:
    """Per service: images/s and mean executed batch per offered batch size."""
    env = {"MODEL_DEVICE": device, "MODEL_PRECISION": precision,
           "MAX_BATCH_SIZE": str(max(batches)), "MAX_DELAY_MS": "2", "MAX_QUEUE_SIZE": "1024"}
    out: ServiceRates = {}
    for name, model in (("classifier", contract.CLASSIFIER_MODEL),
                        ("detector", contract.DETECTOR_MODEL)):
        proc = _start_service(name, model_dir, env, log_dir)
        try:
            wait_ready([proc])
            out[name] = {}
            for batch in batches:
                before = service_counters.scrape(proc.url)
                rate = asyncio.run(_drive(proc.url, model, batch, seconds, token))
                run = service_counters.difference(before, service_counters.scrape(proc.url))
                out[name][batch] = (rate, run.mean_batch if run else None)
        finally:
            proc.stop()
    return out


def render(rows: list[Row], header: list[str]) -> str:
    lines = [*header, "", "| model | precision | batch | bare img/s | service img/s | "
             "service executed batch | bare / service |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        def fmt(value: float | None, spec: str = ".1f") -> str:
            return "-" if value is None else format(value, spec)
        lines.append(
            f"| {row.model} | {row.precision} | {row.batch} | {fmt(row.bare_images_s)} | "
            f"{fmt(row.service_images_s)} | {fmt(row.service_mean_batch)} | "
            f"{fmt(row.bare_over_service, '.2f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--yolo", default="yolo11l", help="detector of the default bundle")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64,128")
    parser.add_argument("--precisions", default="fp32,fp16,bf16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--no-service", action="store_true", help="bare loops only")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--log-dir", type=Path, default=Path("bench-gpu-logs"))
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    settings = CommonSettings()  # this process's entry point
    prepare_ultralytics_env(settings)
    token = settings.internal_token.get_secret_value() if settings.internal_token else ""
    model_dir = bench_bundle(args.model_dir, args.yolo, settings)
    header = [f"## bench.gpu_bench ({time.strftime('%Y-%m-%d %H:%M:%S')})", "",
              f"- bundle: {model_dir}", f"- device: {args.device}", f"- batches: {batches}"]
    try:
        import torch

        if torch.cuda.is_available():
            header.append(f"- GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    except ImportError:
        pass
    rows: list[Row] = []
    for precision in args.precisions.split(","):
        print(f"[gpu_bench] bare loops, {precision} ...", file=sys.stderr, flush=True)
        bare = bare_rates(model_dir, batches, precision, args.device, args.seconds)
        served = {} if args.no_service else service_rates(
            model_dir, batches, precision, args.device, args.seconds, args.log_dir, token)
        for model, per_batch in bare.items():
            service = {"classifier (ensemble)": "classifier", "detector": "detector"}.get(model)
            for batch in batches:
                row = Row(model, precision, batch, per_batch[batch])
                if service and service in served:
                    row.service_images_s, row.service_mean_batch = served[service][batch]
                rows.append(row)
    print(render(rows, header), flush=True)
    if args.json:
        args.json.write_text(json.dumps(
            {"header": header, "rows": [asdict(r) | {"bare_over_service": r.bare_over_service}
                                        for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
