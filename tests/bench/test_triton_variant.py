"""`spine bench --variant triton`: the ours/Triton table and the variant's wiring."""

from __future__ import annotations

import argparse

import pytest

from bench.stats import RunSummary
from bench.triton_variant import _threads, ratio_lines
from shared.settings import CliSettings


def _summary(system: str, level: int, throughput: float, p50: float, p95: float,
             repeat: int = 0) -> RunSummary:
    summary = RunSummary(system, level, 16, 0, 16 / throughput, throughput, p50, p95, p95, {})
    summary.repeat = repeat
    return summary


def test_ratio_table_is_ours_over_triton_within_each_repeat() -> None:
    text = ratio_lines([
        _summary("ours", 1, 1.0, 1000, 1200, 1), _summary("triton", 1, 0.5, 2000, 3000, 1),
        _summary("ours", 1, 2.0, 1000, 1200, 2), _summary("triton", 1, 0.5, 2000, 3000, 2),
        _summary("ours", 8, 2.0, 4000, 5000), _summary("triton", 8, 2.0, 4000, 4000),
    ])
    assert "### Ours / Triton" in text
    assert "| 1 | 2 | 1.500 (1.000-2.000) | 0.500 (0.500-0.500) | 3.00x (2.00-4.00) |" in text
    assert "| 8 | 1 | 2.000 | 2.000 | 1.00x | 1.00x | 0.80x |" in text
    assert ratio_lines([_summary("ours", 1, 1.0, 1, 1)]) == ""


def test_triton_sessions_get_the_threads_our_model_services_get() -> None:
    assert _threads({"TORCH_THREADS": "3"}) == 3
    assert _threads({"TORCH_THREADS": "3", "ORT_THREADS": "2"}) == 2
    assert _threads({}) >= 1


def test_variant_triton_is_measured_against_ours(monkeypatch) -> None:
    from spine import commands_bench

    seen = {}

    def fake_run_bench(config, settings, echo):  # type: ignore[no-untyped-def]
        seen["variants"] = [variant.name for variant in config.variants]
        return ""

    monkeypatch.setattr("bench.runner.run_bench", fake_run_bench)
    monkeypatch.setattr(commands_bench, "_require_triton", lambda _settings: None)
    parser = argparse.ArgumentParser()
    commands_bench.register(parser.add_subparsers())
    args = parser.parse_args(["bench", "--variant", "triton", "--no-baseline"])
    args.func(args, CliSettings())
    assert seen["variants"] == ["ours", "triton"]


def test_without_a_triton_environment_nothing_starts(monkeypatch, tmp_path) -> None:
    """No Triton environment is refused before any stack starts, naming the setup script
    (the wheel alone is enough: it runs the python flavour)."""
    from spine import commands_bench

    monkeypatch.setenv("TRITON_VENV", str(tmp_path / "absent"))
    monkeypatch.setattr("bench.runner.run_bench", lambda *_: pytest.fail("a stack started"))
    parser = argparse.ArgumentParser()
    commands_bench.register(parser.add_subparsers())
    args = parser.parse_args(["bench", "--variant", "triton", "--no-baseline"])
    with pytest.raises(SystemExit) as exited:
        args.func(args, CliSettings())
    assert "scripts/setup-triton.sh" in str(exited.value)


def test_the_table_names_the_peer_that_ran() -> None:
    summaries = [_summary("ours", 8, 2.0, 4000, 5000), _summary("triton", 8, 2.0, 4000, 4000)]
    assert "Python backend running the graph with ONNX Runtime (not Triton's C++" in \
        ratio_lines(summaries, "python")
    assert "Triton-native: Triton's C++ ONNX Runtime backend" in \
        ratio_lines(summaries, "onnxruntime")
