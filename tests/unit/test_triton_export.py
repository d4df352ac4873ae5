"""`spine export-triton` writes our services' graphs as Triton models, in both flavours.

What Triton's ONNX Runtime backend checks when it loads a model (the configuration's
tensors against the graph's: names, element types, dims after the batch axis) is
checked here on the written files, so an ``onnxruntime``-flavour repository that would
not load fails here too, where no tritonserver with that backend is available (the
``python`` flavour is served for real in tests/integration/test_triton.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest

from shared import contract
from shared.settings import ModelServerSettings
from spine.triton.export import PYTHON_MODEL, ExportOptions, export_repository, onnx_digests

pytestmark = pytest.mark.timeout(600)
ELEMENT_TYPES = {
    onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.INT32: "TYPE_INT32", onnx.TensorProto.BOOL: "TYPE_BOOL",
}


def _tensors(config: str, section: str) -> dict[str, tuple[str, list[int]]]:
    block = re.search(rf"^{section} \[\n(.*?)\n\]$", config, re.S | re.M)
    assert block, section
    entries = re.findall(r'name: "([^"]+)"\s+data_type: (\w+)\s+dims: \[ ([^\]]*) \]',
                         block.group(1))
    return {name: (kind, [int(d) for d in dims.split(",")]) for name, kind, dims in entries}


def _graph_tensors(values) -> dict[str, tuple[str, list[int]]]:  # type: ignore[no-untyped-def]
    found = {}
    for value in values:
        kind = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim][1:]
        found[value.name] = (ELEMENT_TYPES[kind.elem_type], dims)
    return found


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> ModelServerSettings:
    return ModelServerSettings(spine_cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module", params=["onnxruntime", "python"])
def repo(request: pytest.FixtureRequest, tiny_bundle: Path, cache: ModelServerSettings,
         tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(f"triton-export-{request.param}") / "repo"
    report = export_repository(tiny_bundle, out, ExportOptions.from_settings(
        cache, threads=1, backend=request.param), cache)
    assert set(report.parity) == {contract.CLASSIFIER_MODEL, contract.DETECTOR_MODEL}
    assert report.parity[contract.CLASSIFIER_MODEL]["decisions_equal"]
    assert report.parity[contract.DETECTOR_MODEL]["max_box_diff_px"] <= 0.5
    return out


@pytest.mark.parametrize("model", [contract.CLASSIFIER_MODEL, contract.DETECTOR_MODEL])
def test_each_model_is_one_graph_its_configuration_describes(repo: Path, model: str) -> None:
    files = sorted(str(p.relative_to(repo / model)) for p in (repo / model).rglob("*")
                   if p.is_file())
    config = (repo / model / "config.pbtxt").read_text()
    if "1/model.py" in files:  # python: the generic runner of the same graph, nothing else
        assert files == ["1/model.onnx", "1/model.py", "config.pbtxt"]
        assert (repo / model / "1" / "model.py").read_bytes() == PYTHON_MODEL.read_bytes()
        assert 'backend: "python"' in config and "platform:" not in config
    else:
        assert files == ["1/model.onnx", "config.pbtxt"]
        assert 'platform: "onnxruntime_onnx"' in config
        assert "backend:" not in config and "python" not in config
    assert f'name: "{model}"' in config
    assert "max_batch_size: 8" in config and "max_queue_delay_microseconds: 5000" in config
    graph = onnx.load(str(repo / model / "1" / "model.onnx"))
    assert _tensors(config, "input") == _graph_tensors(graph.graph.input)
    assert _tensors(config, "output") == _graph_tensors(graph.graph.output)
    props = {p.key: p.value for p in graph.metadata_props}
    assert f'key: "bundle_digest"\n  value: {{ string_value: "{props["spine.bundle_digest"]}" }}' \
        in config
    assert 'key: "intra_op_thread_count"\n  value: { string_value: "1" }' in config


def test_both_flavours_hold_the_same_graph(tiny_bundle: Path, cache: ModelServerSettings,
                                           tmp_path: Path) -> None:
    """The flavours differ in how Triton runs the graph, never in the graph."""
    digests = {}
    for backend in ("onnxruntime", "python"):
        report = export_repository(tiny_bundle, tmp_path / backend, ExportOptions.from_settings(
            cache, threads=1, backend=backend), cache)
        digests[backend] = onnx_digests(report.repo)
    assert digests["onnxruntime"] == digests["python"] and len(digests["python"]) == 2


def test_the_python_flavour_is_cpu_only_and_the_flavour_is_checked() -> None:
    with pytest.raises(ValueError, match="--backend onnxruntime"):
        ExportOptions(backend="python", instance_kind="gpu")
    with pytest.raises(ValueError, match="onnxruntime, python"):
        ExportOptions(backend="tensorrt")


def test_the_repository_holds_the_graphs_our_services_serve(
    tiny_bundle: Path, cache: ModelServerSettings, tmp_path: Path
) -> None:
    """The same graph as our classifier service caches for the same bundle, exported
    apart (its own cache)."""
    from classifier_service.model import ClassifierModel

    repo = export_repository(tiny_bundle, tmp_path / "repo", ExportOptions.from_settings(
        cache, threads=1), cache).repo
    settings = ModelServerSettings(spine_cache_dir=tmp_path / "own", model_backend="onnx",
                                   ort_threads=1)
    entry = ClassifierModel(tiny_bundle, "cpu", 1, settings=settings).graph_entry()
    exported = onnx.load(str(repo / contract.CLASSIFIER_MODEL / "1" / "model.onnx"))
    served = onnx.load_from_string(entry.data)
    assert [n.op_type for n in exported.graph.node] == [n.op_type for n in served.graph.node]
    assert {p.key: p.value for p in exported.metadata_props} == {
        p.key: p.value for p in served.metadata_props}
