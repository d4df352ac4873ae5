"""``1/model.py`` of a python-flavour export (``spine export-triton --backend python``).

Triton's Python backend runs this file with the Triton environment's python3 (numpy < 2,
onnxruntime: requirements/triton.txt); it imports nothing of ours. It does what Triton's
C++ ONNX Runtime backend does with the same repository, no more: one ONNX Runtime
session over ``model.onnx`` beside it (the graph holds every pre- and post-processing
step), the session options from the same configuration parameters
(``intra_op_thread_count``, ``inter_op_thread_count``, ``execution_mode``), and each
dynamic batch run as one call: the requests' tensors joined on the batch axis (requests
of another shape run as their own call), every output split back per request.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

GRAPH_FILE = "model.onnx"


def session_options(parameters):
    """ONNX Runtime options from the configuration, as the C++ backend reads them."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(parameters.get("intra_op_thread_count", "0"))
    options.inter_op_num_threads = int(parameters.get("inter_op_thread_count", "0"))
    parallel = parameters.get("execution_mode", "0") == "1"
    options.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if parallel
                              else ort.ExecutionMode.ORT_SEQUENTIAL)
    return options


def shape_groups(tensors):
    """Indices of ``tensors`` grouped by their shape after the batch axis, first seen first."""
    groups = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(tensor.shape[1:], []).append(index)
    return list(groups.values())


class TritonPythonModel:
    """One session; each execute() runs its requests as few calls as their shapes allow."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"]
                      for key, value in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], str(args["model_version"]))
        self.session = ort.InferenceSession(
            os.path.join(folder, GRAPH_FILE), session_options(parameters),
            providers=["CPUExecutionProvider"],
        )
        self.input_name = config["input"][0]["name"]
        self.output_names = [output["name"] for output in config["output"]]

    def run_group(self, tensors):
        """One call for same-shape tensors; their outputs, split per request."""
        batch = tensors[0] if len(tensors) == 1 else np.concatenate(tensors)
        values = self.session.run(self.output_names, {self.input_name: batch})
        answers, start = [], 0
        for tensor in tensors:
            stop = start + tensor.shape[0]
            answers.append([pb_utils.Tensor(name, value[start:stop])
                            for name, value in zip(self.output_names, values, strict=True)])
            start = stop
        return answers

    def execute(self, requests):
        tensors = [pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
                   for request in requests]
        responses = [None] * len(requests)
        for group in shape_groups(tensors):
            try:
                answers = self.run_group([tensors[index] for index in group])
            except Exception as exc:  # noqa: BLE001 - every request of the call learns why
                error = pb_utils.TritonError(f"inference failed: {exc}")
                answers = [error] * len(group)
            for index, answer in zip(group, answers, strict=True):
                responses[index] = (pb_utils.InferenceResponse(error=answer)
                                    if isinstance(answer, pb_utils.TritonError)
                                    else pb_utils.InferenceResponse(output_tensors=answer))
        return responses
