"""``model.py`` of an exported model (copied by ``spine export-triton``): the Python
backend's adapter around ``spine_runtime`` in the same folder. Runs inside tritonserver
with the Triton environment's python3 (numpy < 2, onnxruntime); imports nothing of ours.
"""

import os
import sys

import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spine_runtime  # noqa: E402 - beside this file, found through the path above


class TritonPythonModel:
    """All requests of one dynamic batch go through the runner as one batch."""

    def initialize(self, args):
        folder = os.path.join(args["model_repository"], str(args["model_version"]))
        self.runner = spine_runtime.load(folder)

    def execute(self, requests):
        tensors = [pb_utils.get_input_tensor_by_name(r, "IMAGE").as_numpy() for r in requests]
        try:
            answers = self.runner.run_requests(tensors)
        except Exception as exc:  # noqa: BLE001 - every request of the batch learns why
            error = pb_utils.TritonError(f"inference failed: {exc}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses = []
        for answer in answers:
            if isinstance(answer, str):
                code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
                error = (pb_utils.TritonError(answer) if code is None
                         else pb_utils.TritonError(answer, code))
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                outputs = [pb_utils.Tensor(name, value) for name, value in answer.items()]
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
