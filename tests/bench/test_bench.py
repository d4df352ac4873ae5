"""`spine bench`: its pieces, and one tiny end-to-end run (numbers never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.baseline import file_from_multipart
from bench.ceiling import Ceiling, cpu_and_wall_ms
from bench.loadgen import LoadResult, Sample
from bench.procs import tree_cpu_seconds
from bench.report import (
    EQUAL_WORK,
    FAITHFUL,
    ceiling_lines,
    cpu_table,
    ratio_table,
    render,
    spread,
)
from bench.service_counters import difference, parse_counters
from bench.stats import summarise

REPO = Path(__file__).resolve().parents[2]


def _result(latencies: list[float], concurrency: int = 1, wall: float = 2.0) -> LoadResult:
    samples = [
        Sample("x", 200, latency, {"decode": 10.0, "classify": 50.0, "total": latency * 900})
        for latency in latencies
    ]
    samples.append(Sample("x", 503, 0.1, error="busy"))
    return LoadResult(concurrency, wall, samples)


def test_summary_counts_only_successes() -> None:
    summary = summarise("ours", _result([0.1, 0.2, 0.3, 0.4]))
    assert summary.requests == 5 and summary.errors == 1
    assert summary.throughput == pytest.approx(2.0)
    assert summary.p50_ms == pytest.approx(250.0)
    assert summary.stages_ms["decode"] == pytest.approx(10.0)
    assert summary.stages_ms["wait"] == pytest.approx(25.0)  # latency - server total
    assert summary.first_error == "503: busy"


def _run(system: str, wall: float, repeat: int, latency: float = 0.1,
         concurrency: int = 1):
    summary = summarise(system, _result([latency, latency], concurrency, wall=wall))
    summary.repeat = repeat
    return summary


def test_ratios_are_formed_per_repeat_then_summarised() -> None:
    runs = []
    for repeat, (ours, equal, faithful) in enumerate([(1.0, 2.0, 1.5), (1.0, 3.0, 2.0),
                                                      (2.0, 3.0, 3.0)]):
        runs += [_run("ours", ours, repeat), _run(FAITHFUL, faithful, repeat, 0.2),
                 _run(EQUAL_WORK, equal, repeat, 0.4)]
    table = "\n".join(ratio_table(runs))
    # ours/equal-work per repeat: 2.0, 3.0, 1.5 -> median 2.00 (1.50-3.00);
    # ours/faithful: 1.5, 2.0, 1.5 -> 1.50 (1.50-2.00); p50 ratios are 4.00 and 2.00.
    assert ("| ours | 1 | 2.00x (1.50-3.00) | 4.00x (4.00-4.00) | 1.50x (1.50-2.00) "
            "| 2.00x (2.00-2.00) |") in table
    assert "throughput ours/faithful" in table and "throughput ours/equal-work" in table
    ceiling = Ceiling(2, 100.0, 20.0, {"a@1": 80.0, "detector@640x640": 800.0}, {"a@1": 1.0})
    assert ceiling.per_image_ms == pytest.approx(1000.0)
    assert ceiling.images_per_s == pytest.approx(2.0)
    line = "\n".join(ceiling_lines(ceiling, runs))
    assert "**2.000 img/s**" in line  # ours: 2 answers in 1, 1, 2 s -> 2, 2, 1 img/s
    assert "ours at concurrency 1: 2.000 (1.000-2.000) img/s = **1.00 (0.50-1.00) of" in line
    text = render(runs, {}, ["## context"], ceiling)
    assert "### Ratios" in text and "### Memory" in text and "### Compute ceiling" in text
    assert spread([3.0]) == "3.00"


def test_prometheus_counters_are_differenced() -> None:
    before = parse_counters(
        'nv_inference_count_total{model="m",version="1"} 10.0\n'
        'nv_inference_exec_count_total{model="m",version="1"} 5.0\n'
        'nv_inference_queue_duration_us_total{model="m",version="1"} 1000.0\n'
        "# HELP something\n"
    )
    after = {**before, "nv_inference_count": 30.0, "nv_inference_exec_count": 10.0,
             "nv_inference_queue_duration_us": 41000.0,
             "nv_inference_compute_infer_duration_us": 50000.0}
    run = difference(before, after)
    assert run is not None
    assert run.mean_batch == pytest.approx(4.0)
    assert run.queue_ms_per_image == pytest.approx(2.0)
    assert run.compute_ms_per_batch == pytest.approx(10.0)


def test_baseline_reads_the_multipart_file_field() -> None:
    body = (
        b"--b0\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n"
        b"--b0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.dcm\"\r\n"
        b"Content-Type: application/dicom\r\n\r\nDICM\r\n\x00\x01\r\n--b0--\r\n"
    )
    assert file_from_multipart(body, "multipart/form-data; boundary=b0") == b"DICM\r\n\x00\x01"


@pytest.mark.timeout(900)
def test_spine_bench_end_to_end(tiny_bundle: Path, tmp_path: Path) -> None:
    """Our stack and both baselines on the tiny bundle, 2 repeats of 2 requests per
    level, small images, the ceiling with one timed round."""
    env = {
        **os.environ,
        "SPINE_CACHE_DIR": str(tmp_path / "cache"),
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(tmp_path / "yolo"),
    }
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "spine.cli", "bench", "--model-dir", str(tiny_bundle),
         "--concurrency", "1,2", "--requests", "2", "--image-size", "320x256",
         "--repeat", "2", "--ceiling-rounds", "1", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=840,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    text = completed.stdout
    for section in ("### Ratios", "### Compute ceiling", "### Per system", "### Every run",
                    "### CPU per answer", "### Memory"):
        assert section in text
    for repeat in (1, 2):
        for level in (1, 2):
            for system in ("ours", FAITHFUL, EQUAL_WORK):
                assert f"| {repeat} | {system} | {level} | 2/0 |" in text, text
    ratio_rows = [line for line in text.splitlines() if line.startswith("| ours | ")
                  and line.count("x (") == 4]
    assert len(ratio_rows) == 2, text
    assert "CPU-ms per image" in text and "of the ceiling" in text
    assert "| ours | gateway |" in text and f"| {FAITHFUL} | baseline |" in text
    # Every process tree spent some CPU on its answers, and the JSON keeps the seconds.
    cpu_rows = [line for line in text.splitlines() if "CPU-ms" not in line
                and "gateway " in line and "classifier " in line and "detector " in line]
    assert len(cpu_rows) == 2, text
    runs = json.loads(out.read_text())["runs"]
    assert all(run["cpu_s"] and all(v > 0 for v in run["cpu_s"].values()) for run in runs)


def test_the_ceiling_adds_cpu_time_not_wall_time() -> None:
    """A stage that waits (or runs on other threads) is counted by the CPU it used: the
    ceiling is CPU-ms per image over cores, and a multi-threaded decoder's wall time
    would undercount it."""
    cpu_ms, wall_ms = cpu_and_wall_ms(lambda: time.sleep(0.05), rounds=3)
    assert wall_ms >= 45.0
    assert cpu_ms < 20.0
    ceiling = Ceiling(2, 300.0, 20.0, {"a@1": 80.0}, decode_wall_ms=150.0)
    line = "\n".join(ceiling_lines(ceiling, []))
    assert "decode 300 ms (wall 150 ms" in line and "**400 CPU-ms per image**" in line
    assert Ceiling.from_dict({k: v for k, v in ceiling.as_dict().items()
                              if k != "decode_wall_ms"}).decode_wall_ms is None


def test_cpu_per_answer_is_per_process_over_successes() -> None:
    runs = []
    for repeat, gateway_s in enumerate([0.4, 0.6]):
        run = _run("ours", 2.0, repeat)  # 2 answers (and one 503) in 2 s
        run.cpu_s = {"gateway": gateway_s, "detector": 1.0}
        runs.append(run)
    ceiling = Ceiling(2, 300.0, 0.0, {"detector@640x448": 400.0})  # 700 CPU-ms per image
    table = "\n".join(cpu_table(runs, ceiling))
    # gateway 200 and 300 ms per answer, detector 500: totals 700 and 800 -> 750 (700-800);
    # 1.07x (1.00-1.14) of the ceiling's work; cores busy 0.70 and 0.80.
    assert ("| ours | 1 | gateway 250 (200-300), detector 500 (500-500) | 750 (700-800) "
            "| 1.07x (1.00-1.14) | 0.75 (0.70-0.80) |") in table
    assert cpu_table([_run("ours", 2.0, 0)], None) == [
        "(CPU not measured: processes not started here)"]


def test_tree_cpu_counts_a_process_and_its_children() -> None:
    """A parent that idles while its child burns CPU: the child's seconds are the parent's."""
    burn = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"
    parent = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c",
         f"import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', {burn!r}]);"
         " time.sleep(0.3); print('started', flush=True); c.wait(); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        before = tree_cpu_seconds({"parent": parent.pid})["parent"]
        assert parent.stdout is not None and parent.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 20
        spent = 0.0
        while time.monotonic() < deadline and spent < 0.5:
            time.sleep(0.2)
            spent = tree_cpu_seconds({"parent": parent.pid})["parent"] - before
        assert spent >= 0.5  # the child's 0.6 s, live or reaped (cutime)
        assert tree_cpu_seconds({"gone": 2**22 + 7})["gone"] == 0.0
    finally:
        parent.kill()
        parent.wait()
