"""`spine samples`: four held-apart synthetic phantoms, each with its truth."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from bench.demo_quality import CHOICE_SEEDS, TEST_SEED
from spine.cli import main
from training.demo_bundle import DEMO_SEED
from training.samples import SAMPLE_NAMES, SAMPLE_SEED, read_samples, write_samples

pytestmark = pytest.mark.timeout(120)


def test_spine_samples_writes_dicoms_and_truth(tmp_path: Path, capsys) -> None:
    assert main(["samples", "--out", str(tmp_path / "samples")]) == 0
    out = tmp_path / "samples"
    truth = json.loads((out / "truth.json").read_text())
    assert truth["synthetic"] is True and truth["seed"] == SAMPLE_SEED
    assert [s["name"] for s in truth["samples"]] == list(SAMPLE_NAMES)
    for sample in truth["samples"]:
        ds = pydicom.dcmread(out / sample["file"])
        assert ds.Modality == "DX" and ds.pixel_array.shape == (ds.Rows, ds.Columns)
        if sample["label"] == "abnormal":
            assert sample["findings"], sample["name"]
            for finding in sample["findings"]:
                x_min, y_min, x_max, y_max = finding["box"]
                assert 0 <= x_min < x_max <= ds.Columns
                assert 0 <= y_min < y_max <= ds.Rows
        else:
            assert sample["label"] == "normal" and sample["findings"] == []
    assert "synthetic" in (out / "README.md").read_text().lower()
    printed = capsys.readouterr().out
    assert "abnormal-1.dcm" in printed and "curl -F" in printed


def test_samples_are_held_apart_and_reproducible(tmp_path: Path) -> None:
    # seeds of the demo bundle, the quality test sets (docs/DEMO_BUNDLE.md), the smoke
    # test (99) and `spine phantoms`'s default (0): a sample is none of their images
    assert SAMPLE_SEED not in {DEMO_SEED, TEST_SEED, *CHOICE_SEEDS, 99, 0}
    first = write_samples(tmp_path / "a")
    assert read_samples(tmp_path / "a") == first
    assert [s.label for s in first] == ["normal", "normal", "abnormal", "abnormal"]
    write_samples(tmp_path / "b")
    for sample in first:
        assert (tmp_path / "a" / sample.file).read_bytes() == (tmp_path / "b" / sample.file).read_bytes()
