"""The signed cache of the services' graphs: what was exported and checked, or nothing."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from model_server.graph_runner import GraphRunner, group_by_shape
from model_server.onnx_runtime import (
    entry_path,
    graph_key,
    load_or_build,
    sidecar_path,
    wants_graph,
)


def _graph(offset: float) -> bytes:
    """IMAGE uint8 [N,1,H,W] -> OUT float [N]: the mean pixel plus ``offset``."""
    nodes = [
        helper.make_node("Cast", ["IMAGE"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Add", ["m", "k"], ["OUT"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("IMAGE", TensorProto.UINT8, ["n", 1, "h", "w"])],
        [helper.make_tensor_value_info("OUT", TensorProto.FLOAT, ["n"])],
        initializer=[helper.make_tensor("k", TensorProto.FLOAT, [], [offset])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


class _Builds:
    """A build callback that counts its calls."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset
        self.calls = 0

    def __call__(self) -> tuple[bytes, dict]:
        self.calls += 1
        return _graph(self.offset), {"parity": {"max_score_diff": 0.0}, "bundle_digest": "d1"}


def _load(tmp_path: Path, build: _Builds, key: str = "k" * 64):  # type: ignore[no-untyped-def]
    return load_or_build(tmp_path / "graphs", tmp_path / "keys" / "onnx-cache.key", "m", key,
                         build)


def _mean(data: bytes) -> float:
    image = np.full((4, 6), 10, dtype=np.uint8)
    return float(GraphRunner(data, 1).run([image])[0]["OUT"])


def test_built_once_then_served_from_the_cache(tmp_path: Path) -> None:
    build = _Builds()
    first = _load(tmp_path, build)
    second = _load(tmp_path, build)
    assert (first.exported, second.exported, build.calls) == (True, False, 1)
    assert second.data == first.data and second.record == first.record
    assert second.record["bundle_digest"] == "d1"


@pytest.mark.parametrize("tamper", ["graph", "record", "no sidecar", "copied sidecar"])
def test_an_altered_or_planted_entry_is_exported_again(tmp_path: Path, tamper: str) -> None:
    """The entry's name is derivable from public facts: a graph or record written there by
    someone else (no sidecar, an edited one, a genuine entry's sidecar copied beside a
    planted graph) is never served."""
    genuine = _Builds()
    entry = _load(tmp_path, genuine)
    path, sidecar = entry.path, sidecar_path(entry.path)
    planted = _graph(100.0)
    if tamper == "graph":
        path.write_bytes(planted)
    elif tamper == "record":
        text = json.loads(sidecar.read_text())
        text["record"]["parity"]["max_score_diff"] = 1e-9
        sidecar.write_text(json.dumps(text))
    elif tamper == "no sidecar":
        path.write_bytes(planted)
        sidecar.unlink()
    else:
        copied = sidecar.read_text()
        path.write_bytes(planted)
        sidecar.write_text(copied)
    again = _load(tmp_path, genuine)
    assert again.exported and genuine.calls == 2
    assert _mean(again.data) == pytest.approx(10.0)  # the real graph, not the planted +100


def test_a_failing_build_writes_nothing(tmp_path: Path) -> None:
    def refuse() -> tuple[bytes, dict]:
        raise RuntimeError("graph differs from the torch path")

    with pytest.raises(RuntimeError, match="differs"):
        load_or_build(tmp_path / "graphs", tmp_path / "keys" / "k.key", "m", "a" * 64, refuse)
    assert not list((tmp_path / "graphs").glob("*.onnx"))
    assert not list((tmp_path / "graphs").glob("*.json"))


def test_the_signing_key_is_private_and_replaced_when_exposed(tmp_path: Path) -> None:
    build = _Builds()
    _load(tmp_path, build)
    key = tmp_path / "keys" / "onnx-cache.key"
    assert (key.stat().st_mode & 0o777, key.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    old = key.read_bytes()
    key.chmod(0o644)  # readable by others: no longer a secret
    assert _load(tmp_path, build).exported
    assert key.read_bytes() != old and key.stat().st_mode & 0o777 == 0o600


def test_replicas_building_the_same_entry_at_once_build_it_once(tmp_path: Path) -> None:
    build = _Builds()
    with ThreadPoolExecutor(3) as pool:
        entries = [f.result() for f in [pool.submit(_load, tmp_path, build) for _ in range(3)]]
    assert sum(entry.exported for entry in entries) == 1 and build.calls == 1
    folder = tmp_path / "graphs"
    names = sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))
    path = entry_path(folder, "m", "k" * 64)
    assert names == sorted([path.name, sidecar_path(path).name])  # no staging file left


def test_the_key_covers_every_input() -> None:
    base = {"spec": {"conf": 0.25}, "checkpoints": {"a": "00" * 32}, "opset": 18}
    assert graph_key(base) == graph_key(dict(reversed(list(base.items()))))
    assert graph_key(base) != graph_key({**base, "opset": 19})
    assert graph_key(base) != graph_key({**base, "checkpoints": {"a": "01" * 32}})
    assert graph_key(base) != graph_key({**base, "spec": {"conf": 0.3}})


def test_images_are_batched_by_shape() -> None:
    shapes = [(4, 6), (5, 5), (4, 6), (4, 6), (5, 5)]
    images = [np.full(shape, index, dtype=np.uint8) for index, shape in enumerate(shapes)]
    assert group_by_shape(images) == [[0, 2, 3], [1, 4]]
    answers = GraphRunner(_graph(0.5), 1).run(images)
    assert [float(a["OUT"]) for a in answers] == [0.5, 1.5, 2.5, 3.5, 4.5]


def test_backend_choice() -> None:
    assert wants_graph("auto", "cpu") and wants_graph("onnx", "cpu")
    assert not wants_graph("torch", "cpu")
    assert not wants_graph("auto", "cuda") and not wants_graph("onnx", "cuda:0")
