"""The model services' settings (``spine classifier|detector``, and the tools that run
the models in-process: ``spine evaluate --model-dir``, ``spine export-triton``): read
once by the entry point, passed to ``create_app(settings)`` and on to the model."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.settings.base import CommonSettings
from shared.settings.sections import BundleSettings, HttpServerSettings


class ModelServerSettings(CommonSettings, HttpServerSettings, BundleSettings):
    """One OIP model server: device, backend, threads, dynamic batching, request limits."""

    # --- the model: device, backend, threads ---------------------------------------------
    model_device: str = Field(
        "auto", pattern="^(auto|cpu|cuda(:[0-9]+)?)$", description="auto, cpu, cuda or cuda:N"
    )
    model_backend: str = Field(
        "auto", pattern="^(auto|torch|onnx)$",
        description="auto = ONNX Runtime on CPU, PyTorch on CUDA; onnx falls back to torch "
        "(with a warning) where an export fails or does not match PyTorch",
    )
    model_precision: str = Field(
        "auto", pattern="^(auto|fp32|fp16|bf16)$",
        description="CUDA compute dtype; auto = fp16 on CUDA, fp32 on CPU (CPU is always fp32)",
    )
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 = torch default")
    ort_threads: int = Field(
        0, ge=0, description="ONNX Runtime intra-op threads; 0 = TORCH_THREADS, else ORT default"
    )
    onnx_opset: int = Field(18, ge=13, le=23, description="opset of the cached ONNX exports")
    detector_letterbox: str = Field(
        "rect", pattern="^(rect|square)$",
        description="rect: the minimal stride-32 rectangle, as Ultralytics' own predict "
        "(2400x1600 portrait -> 640x448; images of one rectangle batch together); square: "
        "the fixed image_size square (any shapes batch together)",
    )

    # --- the model repository API (bundle swaps: docs/OPERATIONS.md "Swapping a bundle") -
    model_repository_root: Path | None = Field(
        None, description="folder under which POST /v2/repository/models/{name}/load may load "
        "bundles (with INTERNAL_TOKEN set); None = the repository API answers 403",
    )
    model_load_at_start: bool = Field(
        True, description="false: start with no bundle and wait for a load through the "
        "repository API (`spine serve` does so while the demo bundle builds)",
    )

    # --- dynamic batching and what one infer request may cost ----------------------------
    max_batch_size: int = Field(8, ge=1, le=512, description="Largest dynamic batch")
    max_delay_ms: float = Field(5.0, ge=0, description="Longest wait for a batch to fill")
    max_queue_size: int = Field(64, ge=1, description="Images waiting per model; full = 503")
    model_max_images_per_request: int | None = Field(
        None, ge=1, description="Images (batch dimension N) in one infer request (413); "
        "None = MAX_BATCH_SIZE",
    )
    model_max_body_bytes: int | None = Field(
        None, ge=1024, description="Largest infer request body in bytes (413); None = "
        "MODEL_MAX_IMAGES_PER_REQUEST x 16 MiB (a 4096 x 4096 UINT8 image) + 1 MiB",
    )
    model_body_timeout_s: float = Field(
        30.0, gt=0, description="Time a model service waits for one whole infer body (408)"
    )
