"""One ONNX graph per model service: the torch path's answers, from a signed cache.

The tiny bundle's graphs are exported by the services themselves (pre- and
post-processing inside), checked against the torch path at export, and compared here
again with the torch services on other images, batched by shape.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import classifier_service.graph as classifier_graph
from classifier_service.model import ClassifierModel
from detector_service.model import DetectorModel
from model_server.lifecycle import bundle_digest
from shared.settings import ModelServerSettings
from tests.factories import radiograph_pixels

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[2]


def _settings(cache: Path, backend: str = "onnx", **extra: object) -> ModelServerSettings:
    return ModelServerSettings(model_backend=backend, spine_cache_dir=cache, ort_threads=1, **extra)


def _images() -> list[np.ndarray]:
    """Radiograph-like, of three shapes, two of one shape (one batched graph call)."""
    shapes = [(700, 460), (333, 512), (700, 460), (97, 131)]
    rng = np.random.default_rng(5)
    images = []
    for seed, (height, width) in enumerate(shapes):
        pixels = radiograph_pixels(height, width, bits=8, seed=seed).astype(np.float32)
        images.append(np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255).astype(np.uint8))
    return images


def _graph_files(cache: Path) -> list[Path]:
    return sorted((cache / "graphs").glob("*.onnx"))


@pytest.fixture(scope="module")
def classifier_pair(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("graph-cache")
    graph_model = ClassifierModel(tiny_bundle, "cpu", 1, settings=_settings(cache))
    graph_model.load()
    torch_model = ClassifierModel(tiny_bundle, "cpu", 1, settings=_settings(cache, "torch"))
    torch_model.load()
    return graph_model, torch_model, cache


def test_the_classifier_graph_answers_as_the_torch_path(classifier_pair) -> None:
    graph_model, torch_model, _ = classifier_pair
    assert graph_model.graph is not None and graph_model.ensemble is None
    assert set(graph_model.facts().backends.values()) == {"onnx"}
    assert set(torch_model.facts().backends.values()) == {"torch"}
    assert graph_model.metadata().platform == "onnxruntime_onnx"
    images = _images()
    for mine, reference in zip(graph_model.predict_batch(images),
                               torch_model.predict_batch(images), strict=True):
        assert mine.keys() == reference.keys()
        np.testing.assert_allclose(mine["member_probabilities"],
                                   reference["member_probabilities"], atol=1e-4)
        np.testing.assert_allclose(mine["abnormal_probability"],
                                   reference["abnormal_probability"], atol=1e-4)
        assert mine["abnormal"].dtype == np.bool_ and mine["abnormal"] == reference["abnormal"]
    assert graph_model.facts().identity() == torch_model.facts().identity()


def test_the_graph_carries_its_bundle_and_its_parity(classifier_pair) -> None:
    graph_model, _, cache = classifier_pair
    (path,) = _graph_files(cache)
    digest = bundle_digest(graph_model.facts())
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["spine.bundle_digest"] == digest
    assert json.loads(props["spine.facts"])["threshold"] == 0.449
    record = json.loads(path.with_suffix(".json").read_text())["record"]
    assert record["bundle_digest"] == digest
    parity = record["parity"]
    assert parity["decisions_equal"] and parity["max_score_diff"] <= 1e-4
    assert len({tuple(shape) for shape in parity["images"]}) >= 4  # several shapes


def test_a_cached_graph_is_served_without_torch(classifier_pair, tiny_bundle: Path,
                                                tmp_path: Path) -> None:
    """A second start finds the signed graphs and never imports torch (nor exports)."""
    _, _, cache = classifier_pair
    DetectorModel(tiny_bundle, "cpu", 1, settings=_settings(cache)).load()  # cache it
    before = {path: path.stat().st_mtime_ns for path in _graph_files(cache)}
    assert len(before) == 2
    script = (
        "import sys; from pathlib import Path; import numpy as np\n"
        "from shared.settings import ModelServerSettings\n"
        "from classifier_service.model import ClassifierModel\n"
        "from detector_service.model import DetectorModel\n"
        f"s = ModelServerSettings(spine_cache_dir={str(cache)!r}, ort_threads=1)\n"
        "for kind in (ClassifierModel, DetectorModel):\n"
        f"    m = kind(Path({str(tiny_bundle)!r}), 'auto', 1, settings=s); m.load()\n"
        "    assert m.facts().device == 'cpu', m.facts()\n"
        "    m.predict_batch([np.full((90, 70), 80, np.uint8)])\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in "
        "('torch', 'timm', 'ultralytics', 'torchvision')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                       "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert {path: path.stat().st_mtime_ns for path in _graph_files(cache)} == before


def test_the_detector_graph_answers_as_the_torch_path(tiny_bundle: Path, tmp_path: Path) -> None:
    graph_model = DetectorModel(tiny_bundle, "cpu", 1, settings=_settings(tmp_path))
    graph_model.load()
    torch_model = DetectorModel(tiny_bundle, "cpu", 1, settings=_settings(tmp_path, "torch"))
    torch_model.load()
    assert (graph_model.backend, torch_model.backend) == ("onnx", "torch")
    assert graph_model.stride == torch_model.stride == 32
    assert graph_model.facts().identity() == torch_model.facts().identity()
    images = _images()
    for mine, reference in zip(graph_model.predict_batch(images),
                               torch_model.predict_batch(images), strict=True):
        assert len(reference["scores"]) > 0  # the tiny detector is built to fire
        assert len(mine["scores"]) == len(reference["scores"])
        np.testing.assert_array_equal(mine["classes"], reference["classes"])
        np.testing.assert_allclose(mine["scores"], reference["scores"], atol=1e-4)
        np.testing.assert_allclose(mine["boxes"], reference["boxes"], atol=0.5)
    record = json.loads(_graph_files(tmp_path)[0].with_suffix(".json").read_text())["record"]
    assert record["parity"]["max_box_diff_px"] <= 0.5 and sum(record["parity"]["boxes"]) > 0
    assert record["class_names"]["2"] == "Disc space narrowing"


def test_a_graph_that_differs_is_refused_and_torch_serves(
    tiny_bundle: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    """A member graph off by 0.01 in probability fails the export's parity check: nothing
    is cached, and the service comes up on the torch path, saying why."""
    real_forward = classifier_graph.MemberGraph.forward
    monkeypatch.setattr(classifier_graph.MemberGraph, "forward",
                        lambda self, batch: real_forward(self, batch) * 0.99)
    model = ClassifierModel(tiny_bundle, "cpu", 1, settings=_settings(tmp_path))
    with caplog.at_level(logging.WARNING):
        model.load()
    assert model.graph is None and model.ensemble is not None
    assert set(model.facts().backends.values()) == {"torch"}
    assert "classifier graph refused" in caplog.text and "differ from the torch path" in caplog.text
    assert not _graph_files(tmp_path)


def test_the_square_letterbox_is_its_own_graph(tiny_bundle: Path, tmp_path: Path) -> None:
    rect = DetectorModel(tiny_bundle, "cpu", 1, settings=_settings(tmp_path))
    rect.load()
    square = DetectorModel(tiny_bundle, "cpu", 1,
                           settings=_settings(tmp_path, detector_letterbox="square"))
    square.load()
    assert (rect.stride, square.stride) == (32, None)
    assert len(_graph_files(tmp_path)) == 2
    landscape = _images()[1]
    (wide,), (boxed,) = rect.predict_batch([landscape]), square.predict_batch([landscape])
    assert len(wide["scores"]) and len(boxed["scores"])
    for answer in (wide, boxed):
        assert np.all(answer["boxes"][:, 2] <= landscape.shape[1])
        assert np.all(answer["boxes"][:, 3] <= landscape.shape[0])
