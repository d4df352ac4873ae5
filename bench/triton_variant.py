"""``spine bench --variant triton``: our gateway in front of tritonserver instead of our
model services, on a repository exported from the same bundle (issue 15 item 5, issue 24).

Same uploads, same gateway, the same graphs (``spine export-triton`` copies the ones our
services serve from the same cache), the same batching limits (it takes MAX_BATCH_SIZE /
MAX_DELAY_MS / MAX_QUEUE_SIZE from the same settings our services read) and the same
thread split as ``spine serve`` (each model's ONNX Runtime session gets half the cores,
as each of our model services does). Only the model server differs: Triton's dynamic
batcher and HTTP front-end, running the graph with its C++ ONNX Runtime backend
(``onnxruntime`` flavour, where ``TRITON_BACKEND_DIR`` has it) or with ONNX Runtime in
its Python backend's ``model.py`` (``python`` flavour: what the nvidia-pytriton wheel
runs), against our Python serving path. The variant's own key ``BACKEND=python|
onnxruntime`` picks the flavour (default: ``spine export-triton``'s).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

from bench.procs import Proc, free_port
from shared.settings import CliSettings, ModelServerSettings

NAME = "triton"
BACKEND_KEY = "BACKEND"  # the variant's own key, not an environment variable
PEERS = {
    "onnxruntime": "Triton-native: Triton's C++ ONNX Runtime backend",
    "python": "Triton's Python backend running the graph with ONNX Runtime "
              "(not Triton's C++ ONNX Runtime backend)",
}
COUNTERS = ("nv_inference_count", "nv_inference_exec_count")


def per_model_counters(text: str) -> dict[str, dict[str, float]]:
    """Triton's /metrics: images and executed batches per model (labels ``model="..."``)."""
    counts: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name not in COUNTERS or 'model="' not in rest:
            continue
        model = rest.split('model="', 1)[1].split('"', 1)[0]
        counts.setdefault(model, {})[name] = float(line.rsplit(" ", 1)[1])
    return counts


class TritonProc(Proc):
    """tritonserver; on stop it reports, per model, images per executed batch over the
    whole run (the bench's per-level counters parse our services' metrics only)."""

    metrics_url: str = ""
    flavour: str = ""  # the export's backend: onnxruntime | python

    def stop(self, grace_s: float = 25.0) -> None:
        try:
            text = httpx.get(self.metrics_url, timeout=5.0).text
        except httpx.HTTPError:
            text = ""
        for model, values in sorted(per_model_counters(text).items()):
            images, batches = values.get(COUNTERS[0], 0), values.get(COUNTERS[1], 0)
            print(f"[bench] triton {model}: {images:.0f} images in {batches:.0f} executions "
                  f"(warm-up and every level together)", file=sys.stderr, flush=True)
        super().stop(grace_s)


def _threads(env: dict[str, str]) -> int:
    """What `spine serve` gives each model service (TORCH_THREADS; ORT_THREADS wins)."""
    for key in ("ORT_THREADS", "TORCH_THREADS"):
        if env.get(key, "").strip() not in ("", "0"):
            return int(env[key])
    return max(1, (os.cpu_count() or 2) // 2)


def start_triton_stack(
    model_dir: Path, log_dir: Path, env_overrides: dict[str, str], cli: CliSettings
) -> tuple[list[Proc], str, dict[str, str]]:
    """Export ``model_dir``, start tritonserver on it and our gateway pointed at it.

    Returns the processes (tritonserver, gateway), the gateway URL and the model URLs
    (Triton's /metrics are on another port and named differently: none are scraped).
    """
    import subprocess

    from spine.triton.export import ExportOptions, export_repository
    from spine.triton.install import default_backend
    from spine.triton.server import Ports, TritonServer

    env_overrides = dict(env_overrides)
    backend = env_overrides.pop(BACKEND_KEY, "") or default_backend(cli)[0]
    env = {**os.environ, "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1", **env_overrides}
    log_dir.mkdir(parents=True, exist_ok=True)
    settings = ModelServerSettings(**{  # the batching limits our services would read from env
        key.lower(): env[key] for key in ("MAX_BATCH_SIZE", "MAX_DELAY_MS", "MAX_QUEUE_SIZE")
        if key in env
    })
    options = ExportOptions.from_settings(settings, threads=_threads(env), backend=backend)
    report = export_repository(model_dir, log_dir / "repo", options, settings)
    print(f"[bench] exported {model_dir} for Triton ({backend} flavour) in "
          f"{report.seconds:.1f} s ({options.threads} ONNX Runtime threads per model)",
          file=sys.stderr, flush=True)
    server = TritonServer(
        report.repo, ports=Ports(free_port(), free_port(), free_port()),
        log_path=log_dir / "tritonserver.log", settings=cli,
    )
    server.start()
    assert server.process is not None
    triton = TritonProc("tritonserver", server.url, f"{server.url}/v2/health/ready",
                        server.process, log_dir / "tritonserver.log")
    triton.metrics_url = f"http://127.0.0.1:{server.ports.metrics}/metrics"
    triton.flavour = backend
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gateway_env = {**env, "CLASSIFIER_URLS": server.url, "DETECTOR_URLS": server.url}
    log_path = log_dir / "gateway.log"
    with log_path.open("wb") as handle:
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "spine.cli", "gateway", "--host", "127.0.0.1",
             "--port", str(port)], env=gateway_env, stdout=handle, stderr=subprocess.STDOUT,
        )
    gateway = Proc("gateway", url, f"{url}/livez", process, log_path)
    return [triton, gateway], url, {}


def flavour_of(procs: list[Proc]) -> str:
    """The flavour the variant's tritonserver ran ('' without one)."""
    return next((proc.flavour for proc in procs if isinstance(proc, TritonProc)), "")


def ratio_lines(summaries: list, flavour: str = "") -> str:  # type: ignore[type-arg]
    """Ours / Triton at each concurrency, formed within each repeat, as median (min-max)
    over the repeats ('' without a Triton run), titled with the peer that ran."""
    from bench.report import spread

    runs = {(s.system, s.concurrency, getattr(s, "repeat", 0)): s for s in summaries}
    levels: dict[int, dict[str, list[float]]] = {}
    for (system, level, repeat), theirs in runs.items():
        ours = runs.get(("ours", level, repeat))
        if system != NAME or ours is None or not ours.throughput or not theirs.throughput:
            continue
        row = levels.setdefault(level, {key: [] for key in ("ours", "triton", "tp", "p50", "p95")})
        row["ours"].append(ours.throughput)
        row["triton"].append(theirs.throughput)
        row["tp"].append(ours.throughput / theirs.throughput)
        if ours.p50_ms and theirs.p50_ms:
            row["p50"].append(theirs.p50_ms / ours.p50_ms)
        if ours.p95_ms and theirs.p95_ms:
            row["p95"].append(theirs.p95_ms / ours.p95_ms)
    if not levels:
        return ""
    rows = [
        f"| {level} | {len(row['tp'])} | {spread(row['ours'], '{:.3f}')} | "
        f"{spread(row['triton'], '{:.3f}')} | {spread(row['tp'], unit='x')} | "
        f"{spread(row['p50'], unit='x')} | {spread(row['p95'], unit='x')} |"
        for level, row in sorted(levels.items())
    ]
    return "\n".join([
        "", "", "### Ours / Triton (same gateway, same graphs, same batching limits)", "",
        f"Triton: {PEERS.get(flavour, flavour or 'flavour not recorded')}",
        "", "median (min-max) over the repeats; ratios formed within each repeat", "",
        "| conc | repeats | ours img/s | triton img/s | throughput ours/triton | p50 triton/ours "
        "| p95 triton/ours |", "|---|---|---|---|---|---|---|", *rows,
    ])
