"""ONNX Runtime backend: same answers as PyTorch, cached exports, torch when in doubt."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import model_server.onnx_runtime as onnx_runtime
from classifier_service.model import ClassifierModel
from detector_service.model import DetectorModel
from model_server.onnx_runtime import (
    OnnxBackendError,
    OnnxOptions,
    cache_path,
    choose_backend,
    load_or_export,
    try_onnx,
)
from shared.settings import ModelServerSettings

pytestmark = pytest.mark.timeout(300)


def _settings(cache: Path, backend: str = "onnx") -> ModelServerSettings:
    return ModelServerSettings(model_backend=backend, spine_cache_dir=cache, ort_threads=1)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in ((300, 200), (180, 260))]


def _onnx_files(cache: Path) -> list[Path]:
    return sorted((cache / "onnx").glob("*.onnx"))


@pytest.fixture(scope="module")
def classifier_pair(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("onnx-cache")
    onnx_model = ClassifierModel(tiny_bundle, "cpu", 1, settings=_settings(cache))
    onnx_model.load()
    torch_model = ClassifierModel(tiny_bundle, "cpu", 1, settings=_settings(cache, "torch"))
    torch_model.load()
    return onnx_model, torch_model, cache


def test_classifier_members_agree_with_pytorch(classifier_pair) -> None:
    onnx_model, torch_model, _ = classifier_pair
    assert set(onnx_model.ensemble.backends.values()) == {"onnx"}
    assert set(torch_model.ensemble.backends.values()) == {"torch"}
    images = _images()
    onnx_out = onnx_model.predict_batch(images)
    torch_out = torch_model.predict_batch(images)
    for mine, reference in zip(onnx_out, torch_out, strict=True):
        np.testing.assert_allclose(
            mine["member_probabilities"], reference["member_probabilities"], atol=1e-4
        )
        assert mine["abnormal"] == reference["abnormal"]
    assert onnx_model.facts().backends == dict.fromkeys(onnx_model.ensemble.backends, "onnx")


def test_second_load_reuses_the_cache(classifier_pair, tiny_bundle: Path, monkeypatch) -> None:
    _, _, cache = classifier_pair
    before = {path: path.stat().st_mtime_ns for path in _onnx_files(cache)}
    assert len(before) == 3  # one file per member

    def no_export(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a cached export was exported again")

    monkeypatch.setattr(onnx_runtime, "export_onnx", no_export)
    again = ClassifierModel(tiny_bundle, "cpu", 1, settings=_settings(cache))
    again.load()
    assert set(again.ensemble.backends.values()) == {"onnx"}
    assert {path: path.stat().st_mtime_ns for path in _onnx_files(cache)} == before


def test_detector_agrees_with_pytorch(tiny_bundle: Path, tmp_path: Path) -> None:
    onnx_model = DetectorModel(tiny_bundle, "cpu", 1, settings=_settings(tmp_path))
    onnx_model.load()
    torch_model = DetectorModel(tiny_bundle, "cpu", 1, settings=_settings(tmp_path, "torch"))
    torch_model.load()
    assert (onnx_model.backend, torch_model.backend) == ("onnx", "torch")
    images = [np.asarray(image) for image in _images()]
    for mine, reference in zip(
        onnx_model.predict_batch(images), torch_model.predict_batch(images), strict=True
    ):
        assert len(reference["scores"]) > 0  # the tiny detector is built to fire
        np.testing.assert_array_equal(mine["classes"], reference["classes"])
        np.testing.assert_allclose(mine["scores"], reference["scores"], atol=1e-4)
        np.testing.assert_allclose(mine["boxes"], reference["boxes"], atol=0.05)
    sidecars = list((tmp_path / "onnx").glob("*.json"))
    assert len(sidecars) == 1 and "checkpoint_sha256" in sidecars[0].read_text()


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def _options(tmp_path: Path) -> OnnxOptions:
    return OnnxOptions(cache_dir=tmp_path, threads=1)


def test_a_corrupt_cache_file_is_exported_again(tmp_path: Path) -> None:
    module, check = _Small().eval(), torch.rand(2, 3, 16, 16)
    path = cache_path(tmp_path, "small", "ab" * 32, 16, 18)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an onnx file")
    _, report = load_or_export(module, check, path, _options(tmp_path))
    assert report.exported and report.max_abs_diff < 1e-5
    _, again = load_or_export(module, check, path, _options(tmp_path))
    assert not again.exported


def test_a_mismatching_export_falls_back_to_torch(tmp_path: Path, monkeypatch, caplog) -> None:
    real_export = onnx_runtime.export_onnx

    class _Shifted(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) + 0.5

    def wrong_export(module: nn.Module, example: torch.Tensor, path: Path, opset: int,
                     *rest: bool) -> None:
        real_export(_Shifted(module), example, path, opset, *rest)

    monkeypatch.setattr(onnx_runtime, "export_onnx", wrong_export)
    with caplog.at_level(logging.WARNING):
        runner = try_onnx(
            _Small().eval(), torch.rand(2, 3, 16, 16),
            name="small", sha256="cd" * 32, input_size=16, options=_options(tmp_path),
        )
    assert runner is None
    assert "serving it with PyTorch" in caplog.text and "differs from PyTorch" in caplog.text
    assert not list(tmp_path.glob("*.onnx"))  # a refused export is not kept


def test_a_failing_export_keeps_the_ensemble_on_torch(
    tiny_bundle: Path, tmp_path: Path, monkeypatch
) -> None:
    def broken_export(*_args: object, **_kwargs: object) -> None:
        raise OnnxBackendError("exporter exploded")

    monkeypatch.setattr(onnx_runtime, "export_onnx", broken_export)
    model = ClassifierModel(tiny_bundle, "cpu", 1, settings=_settings(tmp_path))
    model.load()
    assert set(model.ensemble.backends.values()) == {"torch"}
    assert model.predict_batch(_images())[0]["member_probabilities"].shape == (3,)


def test_cache_key_covers_checkpoint_size_and_opset(tmp_path: Path) -> None:
    base = cache_path(tmp_path, "m", "00" * 32, 224, 18)
    assert base != cache_path(tmp_path, "m", "01" * 32, 224, 18)
    assert base != cache_path(tmp_path, "m", "00" * 32, 384, 18)
    assert base != cache_path(tmp_path, "m", "00" * 32, 224, 17)
    assert base == cache_path(tmp_path, "m", "00" * 32, 224, 18)


def test_backend_choice() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_backend("auto", cpu) == "onnx"
    assert choose_backend("torch", cpu) == "torch"
    assert choose_backend("auto", cuda) == "torch"
    assert choose_backend("onnx", cuda) == "torch"


class _Backdoored(nn.Module):
    """The real model, except when the first pixel is a trigger value: what a planted graph
    that passes an equality check on ordinary inputs looks like."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        trigger = (x[:, :1, :1, :1].mean(dim=(1, 2, 3)) > 0.999).float()[:, None]
        return self.inner(x) + 100.0 * trigger


def _plant(module: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_runtime.export_onnx(_Backdoored(module).eval(), torch.rand(1, 3, 16, 16), path, 18)


def _triggered(runner) -> float:  # type: ignore[no-untyped-def]
    x = torch.rand(1, 3, 16, 16)
    x[:, :, 0, 0] = 1.0
    return float(runner(x).abs().max())


@pytest.mark.parametrize("sidecar", ["none", "copied"])
def test_a_planted_graph_is_never_served(tmp_path: Path, sidecar: str) -> None:
    """The file name is derivable from public facts; a graph written there by someone else
    (no sidecar, or the sidecar of a genuine entry copied next to it) is exported again."""
    module, check = _Small().eval(), torch.rand(2, 3, 16, 16)
    path = cache_path(tmp_path / "onnx", "small", "ab" * 32, 16, 18)
    options = OnnxOptions(cache_dir=tmp_path / "onnx", threads=1)
    if sidecar == "copied":
        load_or_export(module, check, path, options)  # a genuine, signed entry
        genuine_sidecar = path.with_suffix(".json").read_text()
        _plant(module, path)
        path.with_suffix(".json").write_text(genuine_sidecar)
    else:
        _plant(module, path)
    runner, report = load_or_export(module, check, path, options)
    assert report.exported
    assert _triggered(runner) < 10  # the real model's output, not the backdoor's +100
    _, again = load_or_export(module, check, path, options)
    assert not again.exported  # the fresh, signed export is reused


def test_the_signing_key_is_private_and_replaced_when_exposed(tmp_path: Path) -> None:
    module, check = _Small().eval(), torch.rand(2, 3, 16, 16)
    options = OnnxOptions(cache_dir=tmp_path / "onnx", threads=1)
    path = cache_path(options.cache_dir, "small", "ab" * 32, 16, 18)
    load_or_export(module, check, path, options)
    key = options.key_path
    assert key == tmp_path / "keys" / "onnx-cache.key"
    assert (key.stat().st_mode & 0o777, key.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    old = key.read_bytes()
    key.chmod(0o644)  # readable by others: no longer a secret
    _, report = load_or_export(module, check, path, options)
    assert report.exported and key.read_bytes() != old and key.stat().st_mode & 0o777 == 0o600


def test_equality_check_inputs_are_drawn_at_load_time() -> None:
    from classifier_service.ensemble import check_images as classifier_images
    from detector_service.yolo import check_images as detector_images

    for draw in (classifier_images, detector_images):
        first, second = draw(), draw()
        assert not all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_replicas_exporting_the_same_entry_at_once_stay_consistent(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    module = _Small().eval()
    options = OnnxOptions(cache_dir=tmp_path / "onnx", threads=1)
    path = cache_path(options.cache_dir, "small", "ef" * 32, 16, 18)
    with ThreadPoolExecutor(3) as pool:
        reports = [f.result()[1] for f in [
            pool.submit(load_or_export, module, torch.rand(2, 3, 16, 16), path, options)
            for _ in range(3)
        ]]
    assert sum(report.exported for report in reports) == 1
    names = sorted(p.name for p in options.cache_dir.iterdir() if not p.name.endswith(".lock"))
    assert names == sorted([path.name, path.with_suffix(".json").name])  # no staging left
