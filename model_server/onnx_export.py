"""Export one torch network to ONNX (model services and ``spine export-triton``: torch).

The network is the module loaded from the bundle's checkpoint (with whatever torch
wrapper holds the steps that are plain tensor code: normalisation, sigmoid/softmax, the
grey-to-3-channel copy); :mod:`model_server.graph` then inlines it between the pre- and
post-processing nodes.
"""

from __future__ import annotations

import io
import warnings

import onnx
import torch
from torch import nn

from model_server.onnx_runtime import OnnxBackendError

INPUT_NAME = "input"
OUTPUT_NAME = "output"


def export_network(
    module: nn.Module, example: torch.Tensor, opset: int, spatial_dynamic: bool = False
) -> onnx.ModelProto:
    """``module`` (one tensor in, one out) with a dynamic batch axis (and dynamic height
    and width with ``spatial_dynamic``).

    The TorchScript exporter first: one self-contained graph in a few seconds. The dynamo
    exporter (slower, needs onnxscript) is the fallback for graphs it cannot trace.
    """
    module = module.eval()
    axes: dict[int, str] = {0: "batch", **({2: "height", 3: "width"} if spatial_dynamic else {})}
    errors: list[str] = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buffer = io.BytesIO()
        try:
            torch.onnx.export(
                module, (example,), buffer, dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
            return onnx.load_from_string(buffer.getvalue())
        except Exception as exc:  # noqa: BLE001 - try the other exporter, then report both
            errors.append(f"torchscript exporter: {exc}")
        try:
            batch = torch.export.Dim("batch", min=1, max=1024)
            program = torch.onnx.export(
                module, (example,), dynamo=True, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), verbose=False,
            )
            return program.model_proto
        except Exception as exc:  # noqa: BLE001
            errors.append(f"dynamo exporter: {exc}")
    raise OnnxBackendError("ONNX export failed: " + "; ".join(errors))
