"""The one table from a precision name (MODEL_PRECISION, bench flags) to a torch dtype."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
CUDA_DEFAULT = torch.float16  # what ``auto`` (or an unknown name) means on a GPU


def compute_dtype(device: torch.device, precision: str) -> torch.dtype:
    """CPU always computes fp32; CUDA uses ``precision`` (``auto`` = fp16)."""
    if device.type != "cuda":
        return torch.float32
    return DTYPES.get(precision, CUDA_DEFAULT)
