"""The Triton path: export a bundle as a Triton model repository, and run tritonserver.

``export``: ``spine export-triton`` (imports the services: it writes the very graphs our
services serve, exported by them). ``server``: ``spine triton`` and the tests (torch-free:
it only starts tritonserver with Triton's ONNX Runtime backend).
"""
