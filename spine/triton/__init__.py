"""The Triton path: export a bundle as a Triton model repository, and run tritonserver.

``export``: ``spine export-triton`` (imports torch and the services' loaders: it exports
the very networks our services serve). ``server``: ``spine triton`` and the tests
(torch-free: it only starts the wheel's tritonserver). ``spine_runtime`` and
``triton_model`` are not imported here: they are copied into the exported repository
and run inside tritonserver's Python backend (numpy < 2, onnxruntime).
"""
