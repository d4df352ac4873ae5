"""The printed result: Markdown tables (pasted as is into docs/BENCHMARKS.md)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from bench.stats import RunSummary

BASELINE = "original"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}x"


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


def results_table(summaries: list[RunSummary]) -> list[str]:
    header = [
        "system", "conc", "ok/err", "img/s", "p50 ms", "p95 ms", "p99 ms", "wait", "decode",
        "classify", "detect", "merge", "render", "cls batch / queue ms", "det batch / queue ms",
        "load 1m",
    ]
    rows = []
    for s in summaries:
        st = s.stages_ms
        rows.append([
            s.system, str(s.concurrency), f"{s.requests - s.errors}/{s.errors}",
            f"{s.throughput:.3f}", _ms(s.p50_ms), _ms(s.p95_ms), _ms(s.p99_ms),
            _ms(st.get("wait")), _ms(st.get("decode")), _ms(st.get("classify")),
            _ms(st.get("detect")), _ms(st.get("merge")), _ms(st.get("render")),
            _batch(s, "classifier"), _batch(s, "detector"),
            "-" if s.load_before is None else f"{s.load_before:.1f}->{s.load_after:.1f}",
        ])
    return _table(header, rows)


def ratio_table(summaries: list[RunSummary]) -> list[str]:
    """Each of our systems against the original at the same concurrency."""
    originals = {s.concurrency: s for s in summaries if s.system == BASELINE}
    rows = []
    for s in summaries:
        base = originals.get(s.concurrency)
        if s.system == BASELINE or base is None:
            continue
        rows.append([
            s.system, str(s.concurrency),
            _ratio(s.throughput, base.throughput),
            _ratio(base.p50_ms, s.p50_ms), _ratio(base.p95_ms, s.p95_ms),
            _ratio(base.p99_ms, s.p99_ms),
        ])
    header = ["system", "conc", "throughput ours/original", "p50 original/ours",
              "p95 original/ours", "p99 original/ours"]
    return _table(header, rows) if rows else ["(no baseline in this run: no ratios)"]


def memory_table(summaries: list[RunSummary], peaks: dict[str, float]) -> list[str]:
    """Largest RSS seen under load per process and concurrency, and VmHWM since start."""
    rows = []
    for s in summaries:
        for process, value in sorted(s.rss_mb.items()):
            rows.append([s.system, process, str(s.concurrency), f"{value:.0f}",
                         _ms(peaks.get(f"{s.system}/{process}"))])
    header = ["system", "process", "conc", "max RSS under load MB", "peak RSS since start MB"]
    return _table(header, rows) if rows else ["(memory not measured: processes not started here)"]


def render(summaries: list[RunSummary], peaks: dict[str, float], context: list[str]) -> str:
    lines = [*context, "", "### Results", ""]
    lines += results_table(summaries)
    lines += ["", "### Ratios (same run, same machine, same bundle)", ""]
    lines += ratio_table(summaries)
    lines += ["", "### Memory", ""]
    lines += memory_table(summaries, peaks)
    errors = [s for s in summaries if s.first_error]
    if errors:
        lines += ["", "### Errors", ""]
        lines += [f"- {s.system} c={s.concurrency}: {s.errors} failed, first: {s.first_error}"
                  for s in errors]
    lines += [
        "",
        "img/s = successful answers per wall-clock second; latencies as the client saw them;",
        "stage columns are means of each server's own timings_ms (ours: classify/detect are",
        "the gateway's round trips, which overlap); wait = client latency - server total",
        "(upload transfer and, for the one-at-a-time original, its listen backlog);",
        "batch / queue = mean images per executed batch and mean queue ms per image,",
        "from the model services' Prometheus counters.",
    ]
    return "\n".join(lines)


def as_json(
    summaries: list[RunSummary], peaks: dict[str, float], context: list[str]
) -> dict[str, Any]:
    return {
        "context": context,
        "runs": [asdict(summary) for summary in summaries],
        "peak_rss_mb": peaks,
    }
