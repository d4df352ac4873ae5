"""The model-serving runtime: what a model service runs and the gateway never imports.

``app`` (the OIP routes), ``lifecycle`` (the model object), ``metrics``, ``batching``,
``errors``, and the torch parts: ``device``, ``dtypes``, ``onnx_runtime``.
"""
