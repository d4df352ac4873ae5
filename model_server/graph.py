"""Build one ONNX graph from ONNX nodes and exported networks (torch-free: ``onnx`` only).

A model service's graph is its whole answer in one file: the pre-processing, each
network (exported from its checkpoint, inlined under a prefix) and the post-processing,
written as plain ONNX operators so that every ONNX Runtime (ours, Triton's backend,
KServe's) runs the same arithmetic. :class:`GraphBuilder` keeps that code short:
``op`` adds one node and returns its output name, ``const`` one initializer, ``inline``
one network.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Resize with antialiasing is opset 18; ONNX Runtime 1.19 (Triton 24.10) reads up to 21.
MIN_OPSET = 18
IR_VERSION = 9  # ONNX Runtime >= 1.15 reads it; newer onnx writes 10 by default
ELEMENT_TYPES: dict[str, int] = {
    "float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "int64": TensorProto.INT64,
    "int32": TensorProto.INT32, "uint8": TensorProto.UINT8, "bool": TensorProto.BOOL,
}


class GraphBuilder:
    """Nodes, initializers and inlined networks of one graph, named without collisions."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.functions: dict[tuple[str, str], onnx.FunctionProto] = {}
        self.opsets: dict[str, int] = {}
        self._names = itertools.count()

    def _fresh(self, hint: str) -> str:
        return f"{hint}_{next(self._names)}"

    def const(self, value: object, dtype: str = "float32", hint: str = "c") -> str:
        """An initializer holding ``value`` (scalar or array) as ``dtype``."""
        name = self._fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: object) -> str:
        """One node; returns its (first) output's name. ``""`` skips an optional input."""
        names = [self._fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0]

    def ops(self, op_type: str, *inputs: str, outputs: int, **attrs: object) -> list[str]:
        """One node with several outputs; returns all their names."""
        names = [self._fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names

    def inline(self, model: onnx.ModelProto, prefix: str, inputs: Sequence[str]) -> list[str]:
        """``model``'s nodes and weights, names prefixed, fed from ``inputs`` (in the order
        of its graph inputs); returns its output names."""
        graph = onnx.compose.add_prefix(model, prefix).graph
        feeds = {item.name: source for item, source in zip(graph.input, inputs, strict=True)}
        for node in graph.node:
            node.input[:] = [feeds.get(name, name) for name in node.input]
            self.nodes.append(node)
        self.initializers.extend(graph.initializer)
        for function in model.functions:
            self.functions[(function.domain, function.name)] = function
        for opset in model.opset_import:
            self.opsets[opset.domain] = max(self.opsets.get(opset.domain, 0), opset.version)
        return [item.name for item in graph.output]

    def build(
        self,
        name: str,
        inputs: Sequence[onnx.ValueInfoProto],
        outputs: Mapping[str, tuple[str, str, Sequence[int | str | None]]],
        opset: int,
        metadata: Mapping[str, str],
    ) -> onnx.ModelProto:
        """The model: ``outputs`` maps each output name to (source, dtype, shape)."""
        for output, (source, _, _) in outputs.items():
            self.nodes.append(helper.make_node("Identity", [source], [output]))
        graph = helper.make_graph(
            self.nodes, name, list(inputs),
            [
                helper.make_tensor_value_info(output, ELEMENT_TYPES[dtype], list(shape))
                for output, (_, dtype, shape) in outputs.items()
            ],
            initializer=self.initializers,
        )
        opsets = {**self.opsets, "": max(opset, self.opsets.get("", 0), MIN_OPSET)}
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid(domain, v) for domain, v in opsets.items()],
            functions=list(self.functions.values()),
            producer_name="spine",
        )
        model.ir_version = IR_VERSION
        helper.set_model_props(model, dict(metadata))
        onnx.checker.check_model(model)
        return model


def image_input(name: str) -> onnx.ValueInfoProto:
    """The graphs' one input: uint8 ``[N, 1, H, W]``, every axis but the channel dynamic."""
    return helper.make_tensor_value_info(name, TensorProto.UINT8, ["batch", 1, "height", "width"])


def unit_image(builder: GraphBuilder, image: str) -> str:
    """uint8 -> float32 in [0, 1], as ``tensor.float().div_(255.0)``."""
    return builder.op("Div", builder.op("Cast", image, to=TensorProto.FLOAT),
                      builder.const(255.0))


def dims(builder: GraphBuilder, tensor: str) -> list[str]:
    """The four axis lengths of a 4-D tensor, each an int64 ``[1]``."""
    shape = builder.op("Shape", tensor)
    return [builder.op("Slice", shape, builder.const([axis], "int64"),
                       builder.const([axis + 1], "int64")) for axis in range(4)]
