"""The Triton path: export a bundle as a Triton model repository, and run tritonserver.

``export``: ``spine export-triton`` (imports the services: it writes the very graphs our
services serve, exported by them), in the ``onnxruntime`` flavour (Triton's C++ ONNX
Runtime backend) or the ``python`` one (``graph_model``: a generic ``model.py`` running
the same graph with ONNX Runtime inside Triton's Python backend). ``install``: which
backends a Triton install has and which models it can load; ``server``: ``spine triton``
and the tests (torch-free: they only start tritonserver).
"""
