"""Pick the torch device from the MODEL_DEVICE setting (model services only: imports torch)."""

from __future__ import annotations

import torch


def resolve_device(setting: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("MODEL_DEVICE=cuda but no CUDA device is available")
    return device


def configure_torch(device: torch.device, threads: int) -> None:
    """Thread count and cuDNN autotuning (autograd is off per call: inference_mode)."""
    if threads > 0:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
