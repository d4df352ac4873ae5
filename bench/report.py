"""The printed result: Markdown tables (pasted as is into docs/BENCHMARKS.md).

Ratios are formed within one repeat (same minutes, same background load) and then
summarised over the repeats as ``median (min-max)``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from bench.ceiling import Ceiling
from bench.stats import RunSummary

FAITHFUL = "original-faithful"
EQUAL_WORK = "original-equal-work"
BASELINES = (EQUAL_WORK, FAITHFUL)  # the headline ratio first


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def spread(values: list[float], fmt: str = "{:.2f}", unit: str = "") -> str:
    """``median (min-max)`` of ``values``; one value is printed alone."""
    if not values:
        return "-"
    median = fmt.format(statistics.median(values)) + unit
    if len(values) == 1:
        return median
    return f"{median} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _batch(summary: RunSummary, service: str) -> str:
    run = summary.services.get(service)
    if run is None or run.mean_batch is None:
        return "-"
    queue = "-" if run.queue_ms_per_image is None else f"{run.queue_ms_per_image:.0f}"
    return f"{run.mean_batch:.1f} / {queue}"


def _systems(summaries: list[RunSummary]) -> list[str]:
    return list(dict.fromkeys(s.system for s in summaries))


def _levels(summaries: list[RunSummary]) -> list[int]:
    return sorted({s.concurrency for s in summaries})


def results_table(summaries: list[RunSummary]) -> list[str]:
    """Every measured run, in the order they ran."""
    header = [
        "rep", "system", "conc", "ok/err", "img/s", "p50 ms", "p95 ms", "p99 ms", "wait",
        "decode", "classify", "detect", "merge", "render", "det runs/img",
        "cls batch / queue ms", "det batch / queue ms", "load 1m",
    ]
    rows = []
    for s in summaries:
        st = s.stages_ms
        rows.append([
            str(s.repeat + 1), s.system, str(s.concurrency), f"{s.requests - s.errors}/{s.errors}",
            f"{s.throughput:.3f}", _ms(s.p50_ms), _ms(s.p95_ms), _ms(s.p99_ms),
            _ms(st.get("wait")), _ms(st.get("decode")), _ms(st.get("classify")),
            _ms(st.get("detect")), _ms(st.get("merge")), _ms(st.get("render")),
            "-" if s.detector_runs is None else f"{s.detector_runs:.2f}",
            _batch(s, "classifier"), _batch(s, "detector"),
            "-" if s.load_before is None else f"{s.load_before:.1f}->{s.load_after:.1f}",
        ])
    return _table(header, rows)


def systems_table(summaries: list[RunSummary]) -> list[str]:
    """Per system and level over the repeats: img/s, p50, p95 as median (min-max)."""
    rows = []
    for level in _levels(summaries):
        for system in _systems(summaries):
            runs = [s for s in summaries if s.system == system and s.concurrency == level]
            if not runs:
                continue
            rows.append([
                system, str(level), str(len(runs)),
                spread([s.throughput for s in runs], "{:.3f}"),
                spread([s.p50_ms for s in runs if s.p50_ms is not None], "{:.0f}"),
                spread([s.p95_ms for s in runs if s.p95_ms is not None], "{:.0f}"),
            ])
    return _table(["system", "conc", "repeats", "img/s", "p50 ms", "p95 ms"], rows)


def _ratios(summaries: list[RunSummary], system: str, baseline: str, level: int,
            latency: bool = False) -> list[float]:
    """Per repeat: throughput system/baseline, or (``latency``) p50 baseline/system."""
    values = []
    for repeat in sorted({s.repeat for s in summaries}):
        pick = {s.system: s for s in summaries if s.repeat == repeat and s.concurrency == level}
        ours, base = pick.get(system), pick.get(baseline)
        if ours is None or base is None:
            continue
        if latency and ours.p50_ms and base.p50_ms:
            values.append(base.p50_ms / ours.p50_ms)
        elif not latency and ours.throughput and base.throughput:
            values.append(ours.throughput / base.throughput)
    return values


def ratio_table(summaries: list[RunSummary]) -> list[str]:
    """Each of our systems against both baselines, per level, median (min-max) of the
    per-repeat ratios. ours/equal-work is the headline."""
    present = [b for b in BASELINES if any(s.system == b for s in summaries)]
    if not present:
        return ["(no baseline in this run: no ratios)"]
    header = ["system", "conc"]
    for baseline in present:
        short = baseline.removeprefix("original-")
        header += [f"throughput ours/{short}", f"p50 {short}/ours"]
    rows = []
    for level in _levels(summaries):
        for system in _systems(summaries):
            if system in BASELINES:
                continue
            row = [system, str(level)]
            for baseline in present:
                row.append(spread(_ratios(summaries, system, baseline, level), unit="x"))
                row.append(spread(_ratios(summaries, system, baseline, level, True), unit="x"))
            rows.append(row)
    return _table(header, rows)


def _decode_wall(ceiling: Ceiling) -> str:
    if ceiling.decode_wall_ms is None:
        return ""
    return f" (wall {ceiling.decode_wall_ms:.0f} ms: the decoder's own threads)"


def ceiling_lines(ceiling: Ceiling | None, summaries: list[RunSummary]) -> list[str]:
    """The per-image CPU cost, the ceiling it implies, and how close each stack came."""
    if ceiling is None:
        return ["(ceiling not measured)"]
    nets = ", ".join(f"{name} {ms:.0f}" for name, ms in ceiling.onnx_ms.items())
    torch_nets = ", ".join(f"{name} {ms:.0f}" for name, ms in ceiling.torch_ms.items())
    lines = [
        f"- CPU time, batch 1, one thread per graph, these inputs: decode "
        f"{ceiling.decode_ms:.0f} ms{_decode_wall(ceiling)} + render "
        f"{ceiling.render_ms:.0f} ms + ONNX Runtime {nets} ms = "
        f"**{ceiling.per_image_ms:.0f} CPU-ms per image**",
        f"- the torch path (eager PyTorch), same images: {torch_nets} ms",
        f"- ceiling on {ceiling.cores} cores: {ceiling.cores} / {ceiling.per_image_ms / 1000:.2f}"
        f" s = **{ceiling.images_per_s:.3f} img/s**",
    ]
    top = max(_levels(summaries), default=None)
    for system in _systems(summaries):
        runs = [s.throughput for s in summaries if s.system == system and s.concurrency == top]
        if runs and system not in BASELINES:
            share = [value / ceiling.images_per_s for value in runs]
            lines.append(
                f"- {system} at concurrency {top}: {spread(runs, '{:.3f}')} img/s = "
                f"**{spread(share)} of the ceiling**"
            )
    return lines


def _cpu_per_image(summary: RunSummary) -> dict[str, float]:
    answers = summary.requests - summary.errors
    if not answers:
        return {}
    return {name: seconds * 1000 / answers for name, seconds in summary.cpu_s.items()}


def cpu_table(summaries: list[RunSummary], ceiling: Ceiling | None) -> list[str]:
    """Where the CPU went: per process tree (the gateway's decode workers count as the
    gateway's), CPU-ms per answer and how many of the cores were busy, median (min-max)
    over the repeats; next to the ceiling's CPU-ms per image, the serving overhead."""
    rows = []
    for level in _levels(summaries):
        for system in _systems(summaries):
            runs = [s for s in summaries if s.system == system and s.concurrency == level
                    and s.cpu_s and s.wall_s > 0]
            if not runs:
                continue
            per_image = [_cpu_per_image(s) for s in runs]
            names = list(dict.fromkeys(name for run in per_image for name in run))
            parts = ", ".join(
                f"{name} {spread([run[name] for run in per_image if name in run], '{:.0f}')}"
                for name in names
            )
            totals = [sum(run.values()) for run in per_image]
            busy = [sum(s.cpu_s.values()) / s.wall_s for s in runs]
            over = "-" if ceiling is None else spread(
                [total / ceiling.per_image_ms for total in totals], "{:.2f}", "x")
            rows.append([system, str(level), parts, spread(totals, "{:.0f}"), over,
                         spread(busy, "{:.2f}")])
    if not rows:
        return ["(CPU not measured: processes not started here)"]
    header = ["system", "conc", "CPU-ms per answer, by process", "total CPU-ms per answer",
              "total / ceiling's CPU-ms", "cores busy"]
    return _table(header, rows)


def memory_table(summaries: list[RunSummary], peaks: dict[str, float]) -> list[str]:
    """Largest RSS seen under load per process and concurrency (over the repeats), and
    VmHWM since start."""
    largest: dict[tuple[str, str, int], float] = {}
    for s in summaries:
        for process, value in s.rss_mb.items():
            key = (s.system, process, s.concurrency)
            largest[key] = max(largest.get(key, 0.0), value)
    rows = [
        [system, process, str(level), f"{value:.0f}", _ms(peaks.get(f"{system}/{process}"))]
        for (system, process, level), value in sorted(largest.items())
    ]
    header = ["system", "process", "conc", "max RSS under load MB", "peak RSS since start MB"]
    return _table(header, rows) if rows else ["(memory not measured: processes not started here)"]


def render(summaries: list[RunSummary], peaks: dict[str, float], context: list[str],
           ceiling: Ceiling | None = None) -> str:
    repeats = len({s.repeat for s in summaries})
    lines = [*context, "", f"### Ratios (median (min-max) over {repeats} repeats, "
             "ratios formed within each repeat)", ""]
    lines += ratio_table(summaries)
    lines += ["", "### Compute ceiling (same run, same inputs)", ""]
    lines += ceiling_lines(ceiling, summaries)
    lines += ["", "### Per system", ""]
    lines += systems_table(summaries)
    lines += ["", "### Every run", ""]
    lines += results_table(summaries)
    lines += ["", "### CPU per answer (where the time went)", ""]
    lines += cpu_table(summaries, ceiling)
    lines += ["", "### Memory", ""]
    lines += memory_table(summaries, peaks)
    errors = [s for s in summaries if s.first_error]
    if errors:
        lines += ["", "### Errors", ""]
        lines += [f"- rep {s.repeat + 1} {s.system} c={s.concurrency}: {s.errors} failed, "
                  f"first: {s.first_error}" for s in errors]
    lines += [
        "",
        "img/s = successful answers per wall-clock second; latencies as the client saw them;",
        "original-faithful = the original's request path (detector only on Abnormal images,",
        "det runs/img says how often it ran); original-equal-work = the same with the",
        "detector on every image, as ours; stage columns are means of each server's own",
        "timings_ms (ours: classify/detect are the gateway's round trips, which overlap);",
        "wait = client latency - server total (upload transfer and, for the one-at-a-time",
        "original, its listen backlog); batch / queue = mean images per executed batch and",
        "mean queue ms per image, from the model services' Prometheus counters;",
        "CPU per answer = CPU seconds of each process tree (/proc) during the run over its",
        "successful answers (the load generator's own CPU is not in it).",
    ]
    return "\n".join(lines)


def as_json(
    summaries: list[RunSummary], peaks: dict[str, float], context: list[str],
    ceiling: Ceiling | None = None,
) -> dict[str, Any]:
    return {
        "context": context,
        "runs": [asdict(summary) for summary in summaries],
        "peak_rss_mb": peaks,
        "ceiling": None if ceiling is None else ceiling.as_dict(),
    }
