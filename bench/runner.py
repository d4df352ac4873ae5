"""One benchmark run: start the systems, warm them, measure the ceiling, load them.

Every system under test is started first and stays up (ours, the original-style
baseline in its faithful and its equal-work mode); the compute ceiling is measured in a
child process while they idle; then ``repeat`` times, for each concurrency, each system
is loaded in turn, so that a change in the machine's background load hits every side
alike and each repeat gives its own ratios. Idle systems cost no CPU (ONNX Runtime
threads sleep, the baselines block in accept).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import report, service_counters, triton_variant
from bench.ceiling import THREAD_VARIABLES, Ceiling
from bench.dicoms import Upload, bench_uploads
from bench.loadgen import load
from bench.procs import (
    Proc,
    RssSampler,
    peak_rss_mb,
    start_baseline,
    start_ours,
    tree_cpu_seconds,
    wait_ready,
)
from bench.stats import RunSummary, summarise
from shared.filelock import file_lock, hidden_lock_path
from shared.settings import CliSettings, CommonSettings

# All bench clients come from one address, and the levels may exceed the gateway's
# admission caps (8 per client, 32 in flight): lift them so no upload is refused.
# API keys and rate limits of the caller's environment do not apply to these stacks.
BENCH_ENV = {
    "MAX_UPLOADS_PER_CLIENT": "0", "MAX_INFLIGHT_UPLOADS": "0",
    "API_KEYS_SHA256": "", "RATE_LIMIT_PER_MINUTE": "0",
}


@dataclass(frozen=True)
class Variant:
    """One configuration of our stack (``name``, environment overrides)."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    annotate: bool | None = None  # None = the run's --no-annotate choice


@dataclass
class BenchConfig:
    concurrency: list[int]
    requests: int
    warmup: int = 0  # 0 = one request per upload kind
    model_dir: Path | None = None
    yolo: str = "yolo11l"  # the original's best.pt is YOLO11l-sized
    kinds: tuple[str, ...] = ("j2k", "raw")
    annotate: bool = True
    gateway_url: str | None = None
    api_key: str | None = None  # sent as X-API-Key to a --gateway that requires one
    classifier_url: str | None = None
    detector_url: str | None = None
    baselines: tuple[str, ...] = ("faithful", "equal-work")  # modes of bench.baseline
    baseline_url: str | None = None
    repeat: int = 3
    ceiling: bool = True
    ceiling_rounds: int = 3
    device: str = "cpu"
    variants: list[Variant] = field(default_factory=lambda: [Variant("ours")])
    json_path: Path | None = None
    keep_logs: bool = False
    image_rows: int = 2455
    image_cols: int = 1606


@dataclass
class _Target:
    name: str
    url: str
    procs: list[Proc] = field(default_factory=list)
    model_urls: dict[str, str] = field(default_factory=dict)
    annotate: bool | None = None
    headers: dict[str, str] = field(default_factory=dict)


def bench_bundle(model_dir: Path | None, yolo: str, settings: CommonSettings) -> Path:
    """The bundle both sides serve: ``--model-dir``, else random weights in the real
    architectures (densenet121@384, resnet50@224, tf_efficientnetv2_s@384, ``yolo``@640),
    built once under ``$SPINE_CACHE_DIR/bundles``. Speed does not depend on the weights."""
    if model_dir is not None:
        return model_dir
    from shared.paths import cache_root

    target = cache_root(settings) / "bundles" / f"bench-untrained-seed0-{yolo}"
    with file_lock(hidden_lock_path(target)):
        if not (target / "manifest.yaml").is_file():
            from training.untrained_bundle import build_untrained_bundle

            build_untrained_bundle(target, seed=0, yolo_yaml=f"{yolo}.yaml")
    return target


def _context(config: BenchConfig, model_dir: Path, uploads: list[Upload]) -> list[str]:
    load1, load5, _ = os.getloadavg()
    detector = config.yolo if config.model_dir is None else "from the bundle"
    files = ", ".join(f"{u.name} ({len(u.data) / 1e6:.1f} MB)" for u in uploads)
    return [
        f"## spine bench ({time.strftime('%Y-%m-%d %H:%M:%S')})",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average at start {load1:.1f} / {load5:.1f}",
        f"- bundle: {model_dir} (detector: {detector})",
        f"- uploads (round-robin): {files}",
        f"- requests per run: {config.requests}, concurrency: {config.concurrency}, "
        f"repeats: {config.repeat}, annotate: {config.annotate}, device: {config.device}",
        f"- ours: {'; '.join(_describe(v) for v in config.variants)}",
    ]


def _describe(variant: Variant) -> str:
    extra = "" if variant.annotate is None else f" annotate={variant.annotate}"
    return f"{variant.name} {variant.env or '(defaults)'}{extra}"


def _start_targets(
    config: BenchConfig, model_dir: Path, work: Path, settings: CliSettings
) -> list[_Target]:
    targets: list[_Target] = []
    if config.gateway_url:
        models = {k: v for k, v in (("classifier", config.classifier_url),
                                     ("detector", config.detector_url)) if v}
        headers = {"X-API-Key": config.api_key} if config.api_key else {}
        targets.append(
            _Target("ours", config.gateway_url.rstrip("/"), [], models, headers=headers)
        )
    else:
        for variant in config.variants:
            env = {**BENCH_ENV, "MODEL_DEVICE": config.device, **variant.env}
            if variant.name == triton_variant.NAME:  # our gateway, tritonserver behind it
                procs, url, models = triton_variant.start_triton_stack(
                    model_dir, work / variant.name, env, settings)
                targets.append(_Target(variant.name, url, procs, models, variant.annotate))
                continue
            procs = start_ours(model_dir, work / variant.name, env)
            by_name = {proc.name: proc for proc in procs}
            targets.append(_Target(
                variant.name, by_name["gateway"].url, procs,
                {proc.name: proc.url for proc in procs if proc.name != "gateway"},
                variant.annotate,
            ))
    if config.baseline_url:
        url = config.baseline_url.rstrip("/")
        mode = httpx.get(f"{url}/health", timeout=10).json().get("mode", "faithful")
        targets.append(_Target(f"original-{mode}", url))
    else:
        for mode in config.baselines:
            name = f"original-{mode}"
            proc = start_baseline(model_dir, work / name, config.device, mode)
            targets.append(_Target(name, proc.url, [proc]))
    return targets


def measure_ceiling(config: BenchConfig, model_dir: Path) -> Ceiling:
    """``python -m bench.ceiling`` in a child (one thread; the ONNX cache of our services)."""
    rows_cols = f"{config.image_rows}x{config.image_cols}"
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, "1"), "LOG_LEVEL": "WARNING",
           "MODEL_DEVICE": "cpu"}
    completed = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "bench.ceiling", "--model-dir", str(model_dir),
         "--rounds", str(config.ceiling_rounds), "--image-size", rows_cols,
         "--inputs", ",".join(config.kinds)],
        env=env, capture_output=True, text=True, check=False, timeout=1800,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"bench.ceiling failed:\n{completed.stderr[-3000:]}")
    return Ceiling.from_dict(json.loads(lines[-1]))


def _upload_url(target: _Target) -> str:
    return f"{target.url}/upload"


def _params(target: _Target, annotate: bool) -> dict[str, str]:
    if target.name in report.BASELINES:
        return {}  # the original always drew its images
    chosen = annotate if target.annotate is None else target.annotate
    return {"annotate": "true" if chosen else "false"}


def _measure(target: _Target, uploads: list[Upload], concurrency: int,
             config: BenchConfig, repeat: int) -> RunSummary:
    before = {name: service_counters.scrape(url) for name, url in target.model_urls.items()}
    load_before = os.getloadavg()[0]
    pids = {proc.name: proc.pid for proc in target.procs}
    cpu_before = tree_cpu_seconds(pids)
    with RssSampler(pids) as sampler:
        result = load(
            _upload_url(target), uploads, concurrency=concurrency,
            requests=max(config.requests, concurrency), params=_params(target, config.annotate),
            headers=target.headers,
        )
    cpu_after = tree_cpu_seconds(pids)
    summary = summarise(target.name, result)
    summary.repeat = repeat
    summary.rss_mb = dict(sampler.peaks)
    summary.cpu_s = {name: cpu_after[name] - cpu_before[name] for name in pids}
    summary.load_before, summary.load_after = load_before, os.getloadavg()[0]
    for name, url in target.model_urls.items():
        after = service_counters.scrape(url)
        summary.services[name] = service_counters.difference(before[name], after)
    return summary


def run_bench(
    config: BenchConfig, settings: CliSettings, echo: Callable[[str], None] = print
) -> str:
    """Run everything ``config`` asks for and return the report (also echoed as it goes).

    ``settings``: the ``spine`` command's (cache root of the default bundle, Triton's
    environment)."""
    echo("[bench] making the uploads ...")
    uploads = bench_uploads(config.image_rows, config.image_cols, config.kinds)
    model_dir = bench_bundle(config.model_dir, config.yolo, settings)
    context = _context(config, model_dir, uploads)
    work = Path(tempfile.mkdtemp(prefix="spine-bench-"))
    targets: list[_Target] = []
    summaries: list[RunSummary] = []
    peaks: dict[str, float] = {}
    ceiling: Ceiling | None = None
    try:
        echo(f"[bench] starting the systems (logs in {work}) ...")
        targets = _start_targets(config, model_dir, work, settings)
        wait_ready([proc for target in targets for proc in target.procs])
        warmup = config.warmup or len(uploads)
        for target in targets:
            echo(f"[bench] warming up {target.name} ({warmup} requests) ...")
            warm = load(_upload_url(target), uploads, concurrency=1, requests=warmup,
                        params=_params(target, config.annotate), headers=target.headers)
            if not warm.ok:
                raise RuntimeError(f"{target.name} answers no upload: {warm.samples[0].error}")
        if config.ceiling:
            echo("[bench] measuring the compute ceiling (one thread, batch 1) ...")
            ceiling = measure_ceiling(config, model_dir)
            echo(f"[bench]   {ceiling.per_image_ms:.0f} CPU-ms per image -> "
                 f"{ceiling.images_per_s:.3f} img/s on {ceiling.cores} cores")
        for repeat in range(config.repeat):
            for concurrency in config.concurrency:
                for target in targets:
                    echo(f"[bench] repeat {repeat + 1}/{config.repeat}, {target.name}: "
                         f"concurrency {concurrency}, {max(config.requests, concurrency)} "
                         "requests ...")
                    summary = _measure(target, uploads, concurrency, config, repeat)
                    echo(f"[bench]   {summary.throughput:.3f} img/s, "
                         f"p50 {summary.p50_ms or 0:.0f} ms, errors {summary.errors}")
                    summaries.append(summary)
        for target in targets:
            for proc in target.procs:
                value = peak_rss_mb(proc.pid)
                if value is not None:
                    peaks[f"{target.name}/{proc.name}"] = value
    finally:
        for target in targets:
            for proc in reversed(target.procs):
                proc.stop()
        if not config.keep_logs:
            shutil.rmtree(work, ignore_errors=True)
    load1, load5, _ = os.getloadavg()
    context.append(f"- load average at end {load1:.1f} / {load5:.1f}")
    flavour = triton_variant.flavour_of([proc for target in targets for proc in target.procs])
    text = report.render(summaries, peaks, context, ceiling) + triton_variant.ratio_lines(
        summaries, flavour)
    if config.json_path is not None:
        config.json_path.write_text(
            json.dumps(report.as_json(summaries, peaks, context, ceiling), indent=2, default=str)
        )
    return text
